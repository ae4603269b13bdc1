"""Image and video encode/decode with Pillow and PyAV; deterministic encoders for byte-identical builds.

The clip codecs a table may use (`VIDEO_CODECS`, `check_video_codec`, `is_lossless`) are named here once.
PyAV and Pillow are imported where they are used, so the command line can offer the codec names in its
parser without loading them.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from .errors import MediaError, WdspqError

if TYPE_CHECKING:
    import av

VIDEO_CODECS = ("ffv1", "h264")  # ffv1: lossless RGB in Matroska; h264: lossy yuv420p in MP4 (crf, default 18)
LOSSLESS_CODEC = "ffv1"  # the default clip codec: frames decode exactly as they were encoded


def check_video_codec(codec: str, error: type[WdspqError] = MediaError) -> str:
    """`codec` if a table may use it, else `error` naming the choices (importers raise `SchemaError`, so
    an unknown codec refuses the build before any input is read)."""
    if codec not in VIDEO_CODECS:
        raise error(f"video codec {codec!r} is not one of {', '.join(VIDEO_CODECS)}")
    return codec


def is_lossless(codec: str) -> bool:
    """Whether clips of `codec` decode to exactly the frames that were encoded."""
    return codec == LOSSLESS_CODEC


def encode_image(rgb: np.ndarray, fmt: str = "PNG", **options: object) -> bytes:
    """(H, W, 3) uint8 -> image bytes in Pillow format `fmt` with its save `options` (deterministic)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB").save(buf, format=fmt, **options)
    return buf.getvalue()


def encode_png(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes."""
    return encode_image(rgb, "PNG")


def decode_image(data: bytes, where: str = "image") -> np.ndarray:
    """PNG/JPEG bytes -> (3, H, W) uint8, channels first."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"))
    except Exception as e:  # Pillow raises several types for bad bytes
        raise MediaError(f"{where}: cannot decode image bytes ({len(data)} bytes): {e}") from None
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H * 3 / 2, W) uint8 planar yuv420p (BT.601, limited range) in numpy.

    Doing the conversion here instead of in swscale keeps libx264 builds byte-deterministic (swscale's
    SIMD conversion was seen to give different bytes for identical frames from run to run).
    """
    x = rgb.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    u = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0
    v = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0
    h, w = y.shape
    # 2x2 averages as elementwise sums in a fixed order: a reduction (`mean`) may sum in another order
    # depending on memory alignment, which flipped a rounding now and then (different bytes, same frames)
    u, v = (p.reshape(h // 2, 2, w // 2, 2) for p in (u, v))
    u = (u[:, 0, :, 0] + u[:, 0, :, 1] + u[:, 1, :, 0] + u[:, 1, :, 1]) * np.float32(0.25)
    v = (v[:, 0, :, 0] + v[:, 0, :, 1] + v[:, 1, :, 0] + v[:, 1, :, 1]) * np.float32(0.25)
    planes = [np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in (y, u, v)]
    return np.concatenate([planes[0], planes[1].reshape(h // 4, w), planes[2].reshape(h // 4, w)])


class ClipWriter:
    """Encode frames one at a time into one clip, byte-deterministic (one thread, bitexact muxer): memory is
    one frame, whatever the clip's length. `encode_clip` is this for a whole array.

    `ffv1` is lossless (frames decode exactly); `h264` is lossy (yuv420p: chroma is subsampled, max error
    ~100 on coloured edges at any crf) and ~10x smaller on camera images. The container's frame times are
    nominal (`fps`); the table keeps each frame's real time in its `<camera>_ts` column.
    """

    def __init__(self, height: int, width: int, codec: str = "ffv1", fps: int = 20, crf: int = 18) -> None:
        import av

        check_video_codec(codec)
        if codec == "h264" and (height % 2 or width % 2):
            raise MediaError(
                f"frame size {height}x{width} (HxW) is odd; h264 (yuv420p) needs an even height and width "
                "(use --video-codec ffv1)"
            )
        self.codec, self.shape, self.frames = codec, (int(height), int(width), 3), 0
        self._buf = io.BytesIO()
        self._out = av.open(self._buf, "w", format="matroska" if codec == "ffv1" else "mp4",
                            options={"fflags": "+bitexact"})
        self._stream = self._out.add_stream("ffv1" if codec == "ffv1" else "libx264", rate=Fraction(int(fps), 1))
        self._stream.width, self._stream.height = int(width), int(height)
        self._stream.codec_context.thread_count = 1
        if codec == "ffv1":
            self._stream.pix_fmt = "bgr0"
            self._stream.options = {"threads": "1"}
        else:
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"threads": "1", "crf": str(crf), "preset": "veryfast"}

    def add(self, frame: np.ndarray) -> None:
        """One (H, W, 3) uint8 RGB frame of the clip's size."""
        import av

        arr = np.asarray(frame, dtype=np.uint8)
        if arr.shape != self.shape:
            raise MediaError(f"frame {self.frames} is {arr.shape}, the clip's frames are {self.shape} (H, W, 3)")
        if self.codec == "ffv1":
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
        else:
            vf = av.VideoFrame.from_ndarray(rgb_to_yuv420p(arr), format="yuv420p")
        for packet in self._stream.encode(vf):
            self._out.mux(packet)
        self.frames += 1

    def close(self) -> bytes:
        """Flush and return the clip's bytes (at least one frame must have been added)."""
        if self.frames == 0:
            self._out.close()
            raise MediaError("a clip needs at least one frame")
        for packet in self._stream.encode():
            self._out.mux(packet)
        self._out.close()
        return self._buf.getvalue()


def encode_clip(frames: np.ndarray, codec: str = "ffv1", fps: int = 20, crf: int = 18) -> bytes:
    """(N, H, W, 3) uint8 -> one encoded clip, byte-deterministic (see `ClipWriter`)."""
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise MediaError(f"encode_clip expects (N, H, W, 3) uint8 frames with N > 0, got {frames.shape}")
    w = ClipWriter(frames.shape[1], frames.shape[2], codec=codec, fps=fps, crf=crf)
    for arr in frames:
        w.add(arr)
    return w.close()


def encode_mp4(frames: np.ndarray, fps: int = 20, crf: int = 18) -> bytes:
    """(N, H, W, 3) uint8 -> lossy H.264 mp4 bytes (see `encode_clip`)."""
    return encode_clip(frames, codec="h264", fps=fps, crf=crf)


def frame_chw(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame -> (3, H, W) uint8 RGB, exactly what `to_ndarray(format="rgb24")` gives.

    FFV1 clips decode to packed BGR0/RGB24: their pixels are read straight from the plane (a channel shuffle
    in numpy, ~12x faster than swscale's conversion at 96x96); other formats (yuv420p) go through swscale.
    """
    fmt = frame.format.name
    if fmt in ("bgr0", "bgra", "rgb24"):
        plane = frame.planes[0]
        ch = 3 if fmt == "rgb24" else 4
        a = np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)[:, : frame.width * ch]
        a = a.reshape(frame.height, frame.width, ch).transpose(2, 0, 1)
        return np.ascontiguousarray(a[:3] if fmt == "rgb24" else a[2::-1])
    return np.ascontiguousarray(frame.to_ndarray(format="rgb24").transpose(2, 0, 1))


def decode_video(data: bytes, where: str = "video") -> tuple[np.ndarray, float]:
    """Encoded clip -> ((N, 3, H, W) uint8 frames, nominal fps or 0). Decodes the whole clip once."""
    import av

    try:
        with av.open(io.BytesIO(data), "r") as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame and slice threads: decoding gives the same frames, ~25 % sooner
            rate = stream.average_rate or stream.base_rate or stream.guessed_rate
            frames = [frame_chw(f) for f in container.decode(stream)]
    except Exception as e:  # PyAV raises many error types for bad bytes
        raise MediaError(f"{where}: cannot decode video bytes ({len(data)} bytes): {e}") from None
    if not frames:
        raise MediaError(f"{where}: video has no frames")
    return np.stack(frames), float(rate or 0.0)


def probe_clip(data: bytes, full: bool = False) -> tuple[int, int, float, int]:
    """(height, width, fps, frames) of a clip: the first frame is decoded, the frames are counted from the
    demuxed packets (every frame decoded with `full`)."""
    import av

    with av.open(io.BytesIO(data), "r") as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        s = container.streams.video[0]
        rate = float(s.average_rate or s.base_rate or s.guessed_rate or 0.0)
        h = w = n = 0
        if full:
            for frame in container.decode(s):
                if n == 0:
                    h, w = frame.height, frame.width
                n += 1
        else:
            for packet in container.demux(s):
                if packet.size == 0:
                    continue
                if n == 0:
                    frames = packet.decode()
                    if frames:
                        h, w = frames[0].height, frames[0].width
                n += 1
            if n and not h:  # a codec with delay: decode the start properly
                container.seek(0)
                for frame in container.decode(s):
                    h, w = frame.height, frame.width
                    break
        if n == 0 or not h:
            raise ValueError("no frame decodes")
        return h, w, rate, n


def iter_file_range(
    path: str, start: float = 0.0, end: float | None = None, fps: float = 0.0, where: str = ""
) -> Iterator[np.ndarray]:
    """The frames of a video file whose times lie in [start, end), one (H, W, 3) uint8 RGB array at a time
    (`iter_timed_range` without the times)."""
    return (f for _, f in iter_timed_range(path, start, end, fps, where))


def iter_timed_range(
    path: str, start: float = 0.0, end: float | None = None, fps: float = 0.0, where: str = ""
) -> Iterator[tuple[float, np.ndarray]]:
    """(time in the file, (H, W, 3) uint8 RGB frame) for the frames whose times lie in [start, end).

    A frame's time is its pts x time_base (what LeRobot's decoders use). Half a frame period of slack on
    both ends absorbs the rounding of concatenated files; the decoder seeks to the key frame before
    `start`, so cutting one episode out of a long multi-episode file does not decode the file's start.
    Errors name the file and, when the decoder is missing, the codec.
    """
    import av

    where = where or str(path)
    half = 0.5 / fps if fps > 0 else 1e-4
    codec = "?"
    try:
        with av.open(str(path), "r") as container:
            if not container.streams.video:
                raise MediaError(f"{where}: no video stream")
            stream = container.streams.video[0]
            codec = stream.codec_context.name
            if start - half > 0:
                container.seek(int((start - half) / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                t = float(frame.pts * stream.time_base) if frame.pts is not None else float(frame.time or 0.0)
                if t < start - half:
                    continue
                if end is not None and t >= end - half:
                    break
                yield t, frame_chw(frame).transpose(1, 2, 0)
    except MediaError:
        raise
    except Exception as e:  # PyAV raises many error types for missing decoders and bad bytes
        raise MediaError(f"{where}: cannot decode its {codec} video with this PyAV build ({av.__version__}): {e}") from None
