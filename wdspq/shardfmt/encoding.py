"""Sample <-> members of one tar sample, for one sample schema and one `Encoding` (docs/shards.md).

`Encoding` also names the layout: this module writes the per-sample one, described below, and
`shared` the shared-frames one, the default for raw frames with zstd (`Encoding.layout`).
A sample is stored as one packed record member, `sample.npy` (a 0-d structured numpy record with one
aligned field per sample key, readable by `np.load`) or `sample.npy.zst` (the same bytes compressed
with zstd; tuned at export, see `tuning`: float time series named in the manifest's `delta_keys` are
stored as uint8 byte planes of their second-order delta, and the record may be compressed with the
export's trained dictionary). With `frames="raw"` the camera and image pixels are fields of that
record; with an image codec (`png`, `webp` lossless, `jpeg`) they leave the record and each frame becomes its own member,
`<camera>.<j>.<ext>` (frame j of the window, HxWx3) or `<image>.<ext>`, which webdataset's own image
decoders read. Encoding is deterministic (fixed headers, single-threaded codecs), so exports are
byte-identical across runs and worker counts.
"""

from __future__ import annotations

import ast
import functools
import io
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import ShardError, WdspqError
from .delta import delta_candidates, delta_decode_into, delta_encode

FRAME_CODECS = ("raw", "png", "webp", "jpeg")
COMPRESSIONS = ("none", "zstd")
LAYOUTS = ("per-sample", "shared-frames")  # shardfmt.shared: frames stored once per segment of windows
LAYOUT_CHOICES = ("auto", *LAYOUTS)  # "auto": shared-frames where the encoding allows it (`Encoding.layout`)
SUBSAMPLINGS = ("444", "420")
RECORD = "sample.npy"
_IMAGE_EXT = {"png": "png", "webp": "webp", "jpeg": "jpg"}
_MAGIC = b"\x93NUMPY"


def key_of(window_index: int) -> str:
    """The tar `__key__` of a window: its canonical index, zero-padded so keys sort like numbers."""
    return f"{int(window_index):010d}"


@dataclass(frozen=True)
class Encoding:
    """How samples are stored: `frames` raw or image-coded, the record raw or zstd-compressed, and the layout.

    `layout` "shared-frames" stores each distinct frame once per segment of `segment` windows (zstd
    level `pack_level`; `shardfmt.shared`), "per-sample" keeps every sample self-contained (one member
    with its own frames, or one per frame with an image codec). The default "auto" is resolved here, so
    `Encoding().layout` is never "auto": shared-frames when frames are raw and the record is zstd (the
    only combination it supports; several times smaller on overlapping windows), per-sample otherwise.
    `level` is the zstd level; `delta` (the delta filter of float time series) and `dictionary` (a
    zstd dictionary trained on the table's windows) apply to zstd records only, each where it measurably
    helps (see `tuning`); `quality` and `subsampling` ("444" or "420") apply to JPEG only. Every
    combination but `frames="jpeg"` is lossless.
    """

    frames: str = "raw"
    compression: str = "zstd"
    level: int = 3
    quality: int = 95
    subsampling: str = "444"
    delta: bool = True
    dictionary: bool = True
    layout: str = "auto"
    segment: int = 32
    pack_level: int = 9  # zstd level of shared-frames packs: 9 is 10-25 % smaller than 3, decodes as fast

    def __post_init__(self) -> None:
        if self.layout == "auto":
            shared = self.frames == "raw" and self.compression == "zstd"
            object.__setattr__(self, "layout", "shared-frames" if shared else "per-sample")
        if self.layout not in LAYOUTS:
            raise WdspqError(f"layout {self.layout!r} is not one of {', '.join(LAYOUT_CHOICES)}")
        if self.layout == "shared-frames" and (self.frames != "raw" or self.compression != "zstd"):
            raise WdspqError("layout 'shared-frames' stores raw frames in zstd frame packs: it needs "
                             "frames='raw' and compression='zstd'")
        if isinstance(self.pack_level, bool) or not isinstance(self.pack_level, int) or not 1 <= self.pack_level <= 22:
            raise WdspqError(f"pack_level (zstd level of frame packs) must be an integer in 1..22, got {self.pack_level!r}")
        if isinstance(self.segment, bool) or not isinstance(self.segment, int) or not 1 <= self.segment <= 65536:
            raise WdspqError(f"segment (windows per frame pack) must be an integer in 1..65536, got {self.segment!r}")
        if self.frames not in FRAME_CODECS:
            raise WdspqError(f"frame codec {self.frames!r} is not one of {', '.join(FRAME_CODECS)}")
        if self.compression not in COMPRESSIONS:
            raise WdspqError(f"compression {self.compression!r} is not one of {', '.join(COMPRESSIONS)}")
        if isinstance(self.level, bool) or not isinstance(self.level, int) or not 1 <= self.level <= 22:
            raise WdspqError(f"zstd level must be an integer in 1..22, got {self.level!r}")
        if isinstance(self.quality, bool) or not isinstance(self.quality, int) or not 1 <= self.quality <= 100:
            raise WdspqError(f"JPEG quality must be an integer in 1..100, got {self.quality!r}")
        if self.subsampling not in SUBSAMPLINGS:
            raise WdspqError(f"JPEG subsampling {self.subsampling!r} is not one of {', '.join(SUBSAMPLINGS)}")

    @property
    def lossless(self) -> bool:
        return self.frames != "jpeg"

    @property
    def record_member(self) -> str:
        return RECORD + (".zst" if self.compression == "zstd" else "")

    def to_dict(self) -> dict[str, Any]:
        """The manifest's `encoding` entry (only the fields that matter for this combination)."""
        d = asdict(self)
        if self.compression != "zstd":
            d.pop("level")
            d.pop("delta")
            d.pop("dictionary")
        if self.frames != "jpeg":
            d.pop("quality")
            d.pop("subsampling")
        if self.layout == "per-sample":  # absent = per-sample: manifests and digests of such exports are unchanged
            d.pop("layout")
            d.pop("segment")
            d.pop("pack_level")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Encoding:
        """From a user's dict (absent fields take their defaults; an absent layout is "auto"). A manifest's
        or `to_dict`'s dict, where an absent layout means per-sample, is read by `from_manifest`."""
        known = {"frames", "compression", "level", "quality", "subsampling", "delta", "dictionary", "layout", "segment",
                 "pack_level"}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_manifest(cls, d: Mapping[str, Any]) -> Encoding:
        """A manifest's (or `to_dict`'s) encoding: one written before `delta` and `dictionary` existed used
        neither, and one without `layout` (every export before shared frames, and per-sample ones since) is
        per-sample."""
        return cls.from_dict({"delta": False, "dictionary": False, "layout": "per-sample", **d})

    def describe(self) -> str:
        frames = {"raw": "raw frames", "png": "PNG frames", "webp": "WebP-lossless frames"}.get(
            self.frames, f"JPEG q{self.quality} {self.subsampling[0]}:{self.subsampling[1]}:{self.subsampling[2]} frames")
        tuned = [w for w, on in (("delta filter", self.delta), ("dictionary", self.dictionary)) if on]
        record = (f"zstd-{self.level} record" + (f" ({' + '.join(tuned)} where they help)" if tuned else "")
                  if self.compression == "zstd" else "raw record")
        shared = f", frames shared by segments of {self.segment} windows" if self.layout == "shared-frames" else ""
        return f"{frames}, {record}{shared} ({'lossless' if self.lossless else 'lossy'})"


RAW = Encoding(frames="raw", compression="none")  # per-sample: shared frames need zstd
DEFAULT_ENCODING = Encoding()


def record_dtype(schema: Mapping[str, Mapping[str, Any]]) -> np.dtype:
    """The structured dtype of one sample from a sample schema ({key: {dtype, shape}}), fields aligned."""
    fields = [(k, np.dtype(v["dtype"]), tuple(v["shape"])) for k, v in schema.items()]
    return np.dtype([(k, dt, shape) if shape else (k, dt) for k, dt, shape in fields], align=True)


def frame_keys(schema: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The keys holding pixels: uint8 of shape (F, 3, H, W) (a camera) or (3, H, W) (an image)."""
    return [k for k, v in schema.items()
            if np.dtype(v["dtype"]) == np.uint8 and len(v["shape"]) in (3, 4) and int(v["shape"][-3]) == 3]


def _npy_header(dtype: np.dtype) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(np.zeros((), dtype)))
    return buf.getvalue()


@functools.cache
def _castable(src: np.dtype, dst: np.dtype) -> bool:
    """Values of `src` stored as `dst` without changing kind or wrapping (float64 -> float32 is allowed)."""
    return np.can_cast(src, dst, "safe") or (src.kind == "f" and dst.kind == "f")


class SampleCodec:
    """Encode sample dicts to tar members and decode members back to records, for one schema and encoding.

    `delta_keys` and `dictionary` are the export's tuning (`tuning.train_codec`, recorded in the
    manifest); both are ignored without zstd. Picklable (DataLoader workers get a copy); zstd contexts
    are made on first use in each process.
    """

    def __init__(self, schema: Mapping[str, Mapping[str, Any]], encoding: Encoding = RAW,
                 delta_keys: Sequence[str] = (), dictionary: bytes | None = None) -> None:
        self.schema = {k: dict(v) for k, v in schema.items()}
        self.encoding = encoding
        zstd = encoding.compression == "zstd"
        self.delta_keys = tuple(delta_keys) if zstd else ()
        self.dictionary = bytes(dictionary) if zstd and dictionary else None
        self.dtype = record_dtype(self.schema)
        self.header = _npy_header(self.dtype)
        coded = [] if encoding.frames == "raw" else frame_keys(self.schema)
        self.coded = coded
        rest = {k: v for k, v in self.schema.items() if k not in coded}
        self.rest_dtype = record_dtype(rest)
        candidates = set(delta_candidates(self.schema))
        bad = [k for k in self.delta_keys if k not in rest or k not in candidates]
        if bad:
            raise ShardError(f"delta filter keys {bad} are not float time series of the record")
        # delta keys are stored as (itemsize, count) byte planes at the same offsets: the layout's size is unchanged
        fields = self.rest_dtype.fields or {}
        self._delta = [(k, fields[k][1], fields[k][0].itemsize, fields[k][0].base, fields[k][0].shape)
                       for k in self.delta_keys]  # (key, offset, bytes, float dtype, shape)
        formats = []
        for k in self.rest_dtype.names or ():
            ft = fields[k][0]
            planes = (ft.base.itemsize, ft.itemsize // ft.base.itemsize)
            formats.append(np.dtype((np.uint8, planes)) if k in self.delta_keys else ft)
        self.stored_dtype = self.rest_dtype if not self._delta else np.dtype({
            "names": list(self.rest_dtype.names or ()), "formats": formats,
            "offsets": [fields[k][1] for k in self.rest_dtype.names or ()], "itemsize": self.rest_dtype.itemsize})
        self.rest_header = _npy_header(self.stored_dtype)
        self.record_member = encoding.record_member
        self.ext = _IMAGE_EXT.get(encoding.frames, "")
        self.frame_members: list[tuple[str, int | None, str]] = []  # (key, frame j or None for an image, member)
        for k in coded:
            shape = self.schema[k]["shape"]
            if len(shape) == 4:
                self.frame_members += [(k, j, f"{k}.{j}.{self.ext}") for j in range(int(shape[0]))]
            else:
                self.frame_members.append((k, None, f"{k}.{self.ext}"))
        self.member_names = [self.record_member] + [m for _, _, m in self.frame_members]
        self._want = [(k, np.dtype(v["dtype"]), tuple(v["shape"])) for k, v in self.schema.items()]
        self._zc: Any = None
        self._zd: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_zc": None, "_zd": None}

    # -- encoding -------------------------------------------------------------------------------------
    def check(self, sample: Mapping[str, Any], where: str = "sample") -> None:
        """Keys, dtypes and shapes of `sample` against the schema: a clear error instead of a silent cast."""
        if set(sample) != set(self.schema):
            missing, extra = set(self.schema) - set(sample), set(sample) - set(self.schema)
            raise ShardError(f"{where}: keys differ from the schema: missing {sorted(missing)}, extra {sorted(extra)}")
        for k, want_dt, want_shape in self._want:
            v = np.asarray(sample[k])
            if v.shape != want_shape:
                raise ShardError(f"{where}: key {k!r} has shape {v.shape}, the schema says {want_shape}")
            if not _castable(v.dtype, want_dt):
                raise ShardError(f"{where}: key {k!r} has dtype {v.dtype}, the schema says {want_dt}")

    def body(self, sample: Mapping[str, Any]) -> bytes:
        """The record member of a checked sample before compression: npy header and stored record bytes."""
        rest = np.zeros((), dtype=self.rest_dtype)
        for k in self.rest_dtype.names or ():
            rest[k] = sample[k]
        raw = rest.reshape(1).view(np.uint8)
        for k, off, n, _, _ in self._delta:
            raw[off : off + n] = delta_encode(rest[k]).reshape(-1)
        return self.rest_header + raw.tobytes()

    def encode(self, sample: Mapping[str, Any], where: str = "sample") -> list[tuple[str, bytes]]:
        """A sample dict -> its members [(name without the key, bytes)], the record first."""
        self.check(sample, where)
        body = self.body(sample)
        if self.encoding.compression == "zstd":
            body = self._compressor().compress(body)
        members = [(self.record_member, body)]
        for k, j, name in self.frame_members:
            members.append((name, self._encode_image(_frame(sample, k, j))))
        return members

    def frame_error(self, sample: Mapping[str, Any], members: Sequence[tuple[str, bytes]]) -> int:
        """Largest absolute pixel error of the encoded frames of `sample` (0 for lossless encodings)."""
        if self.encoding.lossless:
            return 0
        worst = 0
        for (k, j, _), (_, data) in zip(self.frame_members, members[1:]):
            chw = _frame(sample, k, j)
            got = self._decode_image(data, chw.shape, "frame")
            worst = max(worst, int(np.abs(got.astype(np.int16) - chw.astype(np.int16)).max(initial=0)))
        return worst

    def _encode_image(self, chw: np.ndarray) -> bytes:
        from ..media import encode_image

        hwc = np.asarray(chw, dtype=np.uint8).transpose(1, 2, 0)
        e = self.encoding
        if e.frames == "png":
            return encode_image(hwc, "PNG", compress_level=1)
        if e.frames == "webp":
            return encode_image(hwc, "WEBP", lossless=True, method=0, quality=0, exact=True)
        return encode_image(hwc, "JPEG", quality=e.quality, subsampling=0 if e.subsampling == "444" else 2,
                            optimize=False)

    # -- decoding -------------------------------------------------------------------------------------
    def _zdict(self) -> Any:
        import zstandard

        return zstandard.ZstdCompressionDict(self.dictionary) if self.dictionary else None

    def _compressor(self) -> Any:
        if self._zc is None:
            import zstandard

            self._zc = zstandard.ZstdCompressor(level=self.encoding.level, dict_data=self._zdict(),
                                                write_content_size=True, write_checksum=True, threads=0)
        return self._zc

    def _decompress(self, data: Any, where: str) -> bytes:
        if self._zd is None:
            import zstandard

            self._zd = zstandard.ZstdDecompressor(dict_data=self._zdict())
        try:
            return self._zd.decompress(data)
        except Exception as e:
            hint = " (or made with another dictionary)" if self.dictionary else ""
            raise ShardError(f"{where}: not a zstd frame{hint} ({type(e).__name__}: {e})") from None

    def _decode_image(self, data: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
        from ..errors import MediaError
        from ..media import decode_image

        try:
            chw = decode_image(bytes(data), where=where)
        except MediaError as e:
            raise ShardError(str(e)) from None
        if chw.shape != tuple(shape):
            raise ShardError(f"{where}: image is {chw.shape[2]}x{chw.shape[1]}, the schema says {shape[2]}x{shape[1]}")
        return chw

    def _rest_bytes(self, data: Any, where: str) -> memoryview:
        """The record member's payload -> the rest record's raw bytes, checked against the schema."""
        mv = memoryview(self._decompress(data, where) if self.encoding.compression == "zstd" else data)
        hlen = len(self.rest_header)
        if len(mv) == hlen + self.rest_dtype.itemsize and mv[:hlen].tobytes() == self.rest_header:  # 5x a view's ==
            mv = mv[hlen:]
        else:
            rec = decode_record(mv, where)
            if rec.dtype != self.stored_dtype:
                raise ShardError(f"{where}: record layout differs from the manifest's sample schema")
            mv = memoryview(rec.reshape(1).view(np.uint8))
        if not self._delta:
            return mv
        src = np.frombuffer(mv, dtype=np.uint8)
        out = src.copy()  # writable; each delta key is undone from `src` into it
        for _, off, n, base, shape in self._delta:
            delta_decode_into(src[off : off + n].reshape(base.itemsize, -1), out[off : off + n], base, shape)
        return memoryview(out)

    def record_from(self, payload: Any, where: str) -> memoryview:
        """The record member's payload -> the full record's bytes (one-member encodings)."""
        return self._rest_bytes(payload, where)

    def record(self, members: Mapping[str, Any], where: str = "sample") -> memoryview:
        """Members {name without the key: payload} -> the full record's bytes (layout `dtype`).

        With raw frames the bytes may view the record payload (copy them to keep them writable)."""
        payload = members.get(self.record_member)
        if payload is None:
            raise ShardError(f"{where}: member {self.record_member!r} is missing (found {sorted(members)})")
        rest = self._rest_bytes(payload, f"{where}, member {self.record_member!r}")
        if not self.coded:
            return rest
        out = np.zeros((), dtype=self.dtype)
        r = np.frombuffer(rest, dtype=self.rest_dtype, count=1).reshape(())
        for k in self.rest_dtype.names or ():
            out[k] = r[k]
        for k, j, name in self.frame_members:
            data = members.get(name)
            if data is None:
                raise ShardError(f"{where}: member {name!r} is missing (found {sorted(members)})")
            shape = tuple(self.schema[k]["shape"])
            img = self._decode_image(data, shape[1:] if j is not None else shape, f"{where}, member {name!r}")
            if j is None:
                out[k] = img
            else:
                out[k][j] = img
        return memoryview(out.reshape(1).view(np.uint8))

    def record_array(self, record: Any, copy: bool = False) -> np.ndarray:
        """Record bytes -> a writable 0-d structured array (layout `dtype`) viewing them, or a private copy
        of them when they are read-only or `copy=True`."""
        mv = memoryview(record)
        buf = bytearray(mv) if copy or mv.readonly else mv
        return np.frombuffer(buf, dtype=self.dtype, count=1).reshape(())

    def view(self, record: Any, copy: bool = False) -> dict[str, np.ndarray]:
        """Record bytes -> dict of arrays viewing them (see `record_array`)."""
        rec = self.record_array(record, copy)
        return {k: rec[k] for k in self.schema}


def _frame(sample: Mapping[str, Any], key: str, j: int | None) -> np.ndarray:
    """Frame `j` of camera `key` (CHW), or the image `key` itself when `j` is None."""
    v = np.asarray(sample[key])
    return v[j] if j is not None else v


def decode_record(data: bytes | bytearray | memoryview, where: str = "member") -> np.ndarray:
    """Any npy payload holding one structured record -> 0-d structured array (writable copy)."""
    mv = memoryview(data)
    if len(mv) < 10 or bytes(mv[:6]) != _MAGIC:
        raise ShardError(f"{where}: not an .npy payload")
    major = mv[6]
    if major == 1:
        hlen, start = int.from_bytes(mv[8:10], "little"), 10
    elif major in (2, 3):
        hlen, start = int.from_bytes(mv[8:12], "little"), 12
    else:
        raise ShardError(f"{where}: unsupported .npy version {major}")
    try:
        d = ast.literal_eval(bytes(mv[start : start + hlen]).decode("latin1").strip())
        dtype = np.lib.format.descr_to_dtype(d["descr"])
        shape = tuple(d["shape"])
    except Exception as e:
        raise ShardError(f"{where}: bad .npy header: {e}") from None
    if dtype.names is None or shape != () or dtype.hasobject:
        raise ShardError(f"{where}: expected one structured record, got dtype {dtype} shape {shape}")
    payload = mv[start + hlen :]
    if len(payload) != dtype.itemsize:
        raise ShardError(f"{where}: payload is {len(payload)} bytes, the header says {dtype.itemsize}")
    return np.frombuffer(bytearray(payload), dtype=dtype, count=1).reshape(())
