"""Image and video encode/decode with Pillow and PyAV; deterministic encoders for byte-identical builds."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
from PIL import Image

from .errors import MediaError


def encode_png(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def decode_image(data: bytes, where: str = "image") -> np.ndarray:
    """PNG/JPEG bytes -> (3, H, W) uint8, channels first."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"))
    except Exception as e:  # Pillow raises several types for bad bytes
        raise MediaError(f"{where}: cannot decode image bytes ({len(data)} bytes): {e}") from None
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def _pick_codec() -> str:
    for name in ("libx264", "h264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:
            continue
    raise MediaError("PyAV has no usable video encoder (tried libx264, h264, mpeg4)")


def encode_mp4(frames: np.ndarray, fps: int = 20, codec: str | None = None, crf: int = 18) -> bytes:
    """(N, H, W, 3) uint8 -> mp4 bytes, byte-deterministic (single-threaded encoder, bitexact muxer)."""
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise MediaError(f"encode_mp4 expects (N, H, W, 3) uint8 frames with N > 0, got {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise MediaError(
            f"encode_mp4: frame size {frames.shape[1]}x{frames.shape[2]} (HxW) is odd; yuv420p video needs an even "
            "height and width"
        )
    codec = codec or _pick_codec()
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4", options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream(codec, rate=Fraction(int(fps), 1))
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        stream.options = {"threads": "1"}
        if codec in ("libx264", "h264"):
            stream.options = {"threads": "1", "crf": str(crf), "preset": "veryfast"}
        for arr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def decode_video(data: bytes, where: str = "video") -> tuple[np.ndarray, float]:
    """Encoded clip -> ((N, 3, H, W) uint8 frames, fps). Decodes the whole clip once (small clips)."""
    try:
        with av.open(io.BytesIO(data), "r") as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.base_rate or stream.guessed_rate
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except Exception as e:  # PyAV raises many error types for bad bytes
        raise MediaError(f"{where}: cannot decode video bytes ({len(data)} bytes): {e}") from None
    if not frames:
        raise MediaError(f"{where}: video has no frames")
    if not rate:
        raise MediaError(f"{where}: video stream has no frame rate")
    clip = np.stack(frames).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(clip), float(rate)


def probe_video(data: bytes, where: str = "video") -> tuple[int, int, float]:
    """(height, width, fps) of a clip without decoding its frames."""
    try:
        with av.open(io.BytesIO(data), "r") as container:
            s = container.streams.video[0]
            rate = s.average_rate or s.base_rate or s.guessed_rate
            return int(s.codec_context.height), int(s.codec_context.width), float(rate or 0.0)
    except Exception as e:
        raise MediaError(f"{where}: cannot read video bytes ({len(data)} bytes): {e}") from None
