"""The shared-frames layout (docs/shards.md "Shared frames"): each distinct frame stored once per segment.

What is shared: every pixel key (frames of a camera, an image) and every numeric key whose rows (axis 0)
are at least MIN_ROW_BYTES (overlapping windows repeat the same action/state rows); the manifest lists
them as `shared_keys`, `[key, refs per window]` in schema order.

A *segment* is a run of up to `Encoding.segment` consecutive windows of one episode. In the shard, a
segment is one *frame pack* member `frames-<first window>.frames.npy.zst` followed by its samples, each
one member `<key>.sample.npy.zst` (the record without its pixel keys, tuned as usual). The pack is one
zstd frame of a 0-d npy record: `windows` (int64, the segment's window indices, ascending), `refs`
(int32, one row per window, one column per frame slot or row) and, per shared key, its distinct units
(a frame (3, H, W), an image, a row of a numeric key; first-seen order; equal bytes are stored once, so
masked zeros and frames or rows two windows share cost nothing). Frames compressed together in time order let zstd find what
consecutive frames share, which per-sample compression never sees.

The index sidecar has four columns: a sample's member (offset, length) and its pack's (offset, length).
A run of samples is read with one ranged read (two when it starts inside a segment: its pack, then
the samples, so a skipped sample is never read), and each pack is decompressed once per run.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ShardError, WdspqError
from .delta import delta_decode, delta_encode
from .encoding import RAW, Encoding, SampleCodec, frame_keys
from .layout import parse_members, single_member

PACK_MEMBER = "frames.npy.zst"
SAMPLE_MEMBER = "sample.npy.zst"
TAR_BLOCK = 512
MIN_ROW_BYTES = 16  # a numeric key is shared row by row when a row is at least this big (a ref costs 4 bytes)


def pack_key(first_window: int) -> str:
    """The tar key of the frame pack of the segment whose first window is `first_window`."""
    return f"frames-{int(first_window):010d}"


def pack_first_window(member_name: str) -> int | None:
    """The first window a frame pack member's name (`pack_key` + "." + PACK_MEMBER) names; None for another name."""
    key, _, member = member_name.partition(".")
    head, _, digits = key.partition("-")
    ok = member == PACK_MEMBER and head == "frames" and len(digits) == 10 and digits.isdigit()
    return int(digits) if ok else None


def default_shared_keys(schema: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, int]]:
    """[(key, refs per window)] in schema order: pixel keys (a camera's F frames, an image as one unit) and
    numeric keys of at least two rows of MIN_ROW_BYTES (one ref per row)."""
    pix = set(frame_keys(schema))
    out = []
    for k, v in schema.items():
        shape, dt = tuple(int(x) for x in v["shape"]), np.dtype(v["dtype"])
        if k in pix:
            out.append((k, shape[0] if len(shape) == 4 else 1))
        elif dt.kind in "fiu" and len(shape) >= 2 and shape[0] >= 2 and dt.itemsize * int(np.prod(shape[1:])) >= MIN_ROW_BYTES:
            out.append((k, shape[0]))
    return out


def rest_schema(schema: Mapping[str, Mapping[str, Any]], shared: Sequence[tuple[str, int]] | None = None) -> dict[str, dict[str, Any]]:
    """The sample schema without its shared keys: what a shared-frames sample member holds."""
    keys = {k for k, _ in (default_shared_keys(schema) if shared is None else shared)}
    return {k: dict(v) for k, v in schema.items() if k not in keys}


class SharedFramesCodec:
    """Segments of windows <-> frame pack + sample members, and back to full records (layout `dtype`).

    `delta_keys` and `dictionary` tune the sample members exactly as `SampleCodec` does (they apply to
    the record without frames). Picklable; zstd contexts are made on first use in each process.
    """

    def __init__(self, schema: Mapping[str, Mapping[str, Any]], encoding: Encoding,
                 delta_keys: Sequence[str] = (), dictionary: bytes | None = None,
                 shared: Sequence[Sequence[Any]] | None = None) -> None:
        if encoding.layout != "shared-frames":
            raise WdspqError(f"SharedFramesCodec needs layout 'shared-frames', got {encoding.layout!r}")
        self.schema = {k: dict(v) for k, v in schema.items()}
        self.encoding = encoding
        self.full = SampleCodec(self.schema, RAW)  # checks, record layout and views of full records
        self.dtype = self.full.dtype
        self.shared = [(str(k), int(n)) for k, n in (default_shared_keys(self.schema) if shared is None else shared)]
        for k, n in self.shared:
            shape = tuple(int(x) for x in self.schema.get(k, {}).get("shape", ()))
            if k not in self.schema or not shape or n not in (1, shape[0]):
                raise ShardError(f"shared key {k!r} ({n} refs a window) does not fit the sample schema")
        self.pixel_keys = [k for k, _ in self.shared]
        rest_enc = Encoding(level=encoding.level, delta=encoding.delta, dictionary=encoding.dictionary)
        self.rest = SampleCodec(rest_schema(self.schema, self.shared), rest_enc, delta_keys, dictionary)
        self.delta_keys, self.dictionary = self.rest.delta_keys, self.rest.dictionary
        self.slots: list[tuple[str, int, int]] = []  # (key, first ref column, refs of the key in a window)
        col = 0
        for k, n in self.shared:
            self.slots.append((k, col, n))
            col += n
        self.n_slots = col
        pix = set(frame_keys(self.schema))
        # shared float rows are stored as byte planes of their second-order delta along the pack's units
        # (the `tuning` filter; smooth trajectories become small integers): `pack_delta_keys` in the manifest
        self.pack_delta = [k for k, _ in self.shared if k not in pix
                           and np.dtype(self.schema[k]["dtype"]).kind == "f" and encoding.delta]
        # where each byte of the record without shared keys lands in the full record (one gather per sample)
        full_fields, rest_fields = self.dtype.fields or {}, self.rest.dtype.fields or {}
        src, dst = [], []
        for k, (ft, off, *_) in rest_fields.items():
            src.append(np.arange(off, off + ft.itemsize))
            dst.append(np.arange(full_fields[k][1], full_fields[k][1] + ft.itemsize))
        self._src = np.concatenate(src) if src else np.zeros(0, np.int64)
        self._dst = np.concatenate(dst) if dst else np.zeros(0, np.int64)
        self._views = [(k, col, f, full_fields[k][1], full_fields[k][0]) for k, col, f in self.slots]
        covered = np.zeros(self.dtype.itemsize, dtype=bool)
        for ft, off, *_ in full_fields.values():
            covered[off : off + ft.itemsize] = True
        self._pad = np.flatnonzero(~covered)  # alignment padding: zero, as in the map-style record
        self.record_member = SAMPLE_MEMBER
        self.member_names = [SAMPLE_MEMBER]
        self.coded = list(self.pixel_keys)
        self._zc: Any = None
        self._zd: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_zc": None, "_zd": None}

    # -- encoding -------------------------------------------------------------------------------------
    def _frame_shape(self, k: str) -> tuple[int, ...]:
        """The shape of one shared unit of key `k` (a frame, an image, a row)."""
        shape = tuple(int(x) for x in self.schema[k]["shape"])
        n = dict(self.shared)[k]
        return shape if n == 1 and len(shape) == 3 and k in frame_keys(self.schema) else shape[1:]

    def pack_bytes(self, samples: Sequence[Mapping[str, Any]]) -> bytes:
        """The frame pack payload of a segment (checked samples, windows ascending)."""
        import zstandard

        refs = np.zeros((len(samples), self.n_slots), dtype="<i4")
        frames: dict[str, list[np.ndarray]] = {}
        for k, col, f in self.slots:
            seen: dict[bytes, int] = {}
            got = frames[k] = []
            dt = np.dtype(self.schema[k]["dtype"])
            for r, s in enumerate(samples):
                v = np.asarray(s[k], dtype=dt)
                v = v.reshape((f, *self._frame_shape(k)))
                for j in range(f):
                    b = np.ascontiguousarray(v[j]).tobytes()
                    idx = seen.get(b)
                    if idx is None:
                        idx = seen[b] = len(got)
                        got.append(np.ascontiguousarray(v[j]))
                    refs[r, col + j] = idx
        fields = [("windows", "<i8", (len(samples),)), ("refs", "<i4", refs.shape)]
        for k, _, _ in self.slots:
            dt, shape = np.dtype(self.schema[k]["dtype"]), (len(frames[k]), *self._frame_shape(k))
            if k in self.pack_delta:  # (itemsize, values) byte planes
                fields.append((k, "u1", (dt.itemsize, int(np.prod(shape)))))
            else:
                fields.append((k, dt.str, shape))
        rec = np.zeros((), dtype=np.dtype(fields))
        rec["windows"] = [int(s["window_index"]) for s in samples]
        rec["refs"] = refs
        for k, _, _ in self.slots:
            units = np.stack(frames[k])
            rec[k] = delta_encode(units) if k in self.pack_delta else units
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(rec))
        buf.write(rec.tobytes())
        if self._zc is None:
            self._zc = zstandard.ZstdCompressor(level=self.encoding.pack_level, write_content_size=True,
                                                write_checksum=True, threads=0)
        return self._zc.compress(buf.getvalue())

    def encode_segment(self, samples: Sequence[Mapping[str, Any]], where: str = "segment") -> tuple[bytes, list[bytes]]:
        """A segment's samples (one episode, windows ascending) -> (pack payload, each sample member's payload)."""
        if not samples:
            raise ShardError(f"{where}: empty segment")
        for s in samples:
            self.full.check(s, f"{where}, window {int(s['window_index'])}")
        members = [self.rest.encode({k: s[k] for k in self.rest.schema}, where)[0][1] for s in samples]
        return self.pack_bytes(samples), members

    def frame_error(self, sample: Mapping[str, Any], members: Any) -> int:
        return 0  # lossless

    # -- decoding -------------------------------------------------------------------------------------
    def decode_pack(self, payload: Any, where: str) -> dict[str, np.ndarray]:
        """A frame pack payload -> {windows, refs, units of each shared key}, checked (delta keys undone)."""
        if self._zd is None:
            import zstandard

            self._zd = zstandard.ZstdDecompressor()
        try:
            raw = self._zd.decompress(payload)
        except Exception as e:
            raise ShardError(f"{where}: frame pack is not a zstd frame ({type(e).__name__}: {e})") from None
        rec = _npy_record(raw)
        if rec is None:  # not the header this module writes: numpy's own (slower) parser
            try:
                rec = np.load(io.BytesIO(raw), allow_pickle=False)
            except Exception as e:
                raise ShardError(f"{where}: frame pack is not an npy record ({type(e).__name__}: {e})") from None
        names = set(rec.dtype.names or ())
        if rec.shape != () or not {"windows", "refs", *self.pixel_keys} <= names:
            raise ShardError(f"{where}: frame pack lacks windows, refs or a pixel key of the schema")
        refs = rec["refs"]
        if refs.ndim != 2 or refs.shape[1] != self.n_slots or len(rec["windows"]) != refs.shape[0]:
            raise ShardError(f"{where}: frame pack refs have shape {refs.shape}, expected ({len(rec['windows'])}, {self.n_slots})")
        out = {"windows": rec["windows"], "refs": refs}
        for k, col, f in self.slots:
            units = rec[k]
            if k in self.pack_delta:
                dt, unit = np.dtype(self.schema[k]["dtype"]), self._frame_shape(k)
                per = int(np.prod(unit))
                if units.ndim != 2 or units.shape[0] != dt.itemsize or units.shape[1] % max(per, 1):
                    raise ShardError(f"{where}: frame pack rows of {k!r} have shape {units.shape}")
                units = delta_decode(units, dt, (units.shape[1] // per, *unit))
            n = units.shape[0]
            if refs.size and (refs[:, col : col + f].min() < 0 or refs[:, col : col + f].max() >= n):
                raise ShardError(f"{where}: frame pack refs of {k!r} point outside its {n} units")
            if units.shape[1:] != self._frame_shape(k):
                raise ShardError(f"{where}: frame pack units of {k!r} have shape {units.shape[1:]}, the schema says {self._frame_shape(k)}")
            out[k] = units
        return out

    def record_from(self, payload: Any, pack: Mapping[str, np.ndarray], where: str) -> memoryview:
        """A sample member's payload plus its segment's decoded pack -> the full record's bytes."""
        rest = self.rest.record_from(payload, f"{where}, member {SAMPLE_MEMBER!r}")
        r = np.frombuffer(rest, dtype=self.rest.dtype, count=1).reshape(())
        out = np.empty(self.dtype.itemsize, dtype=np.uint8)  # every byte is written: fields below, padding here
        out[self._pad] = 0
        out[self._dst] = np.frombuffer(rest, dtype=np.uint8)[self._src]
        wins = pack["windows"]
        wi = int(r["window_index"])
        row = int(np.searchsorted(wins, wi))
        if row >= len(wins) or int(wins[row]) != wi:
            raise ShardError(f"{where}: window {wi} is not in its frame pack (windows {int(wins[0])}..{int(wins[-1])})")
        refs = pack["refs"][row]
        for k, col, f, off, ft in self._views:
            units = pack[k]
            dest = out[off : off + ft.itemsize].view(ft.base).reshape((f, *units.shape[1:]))
            np.take(units, refs[col : col + f], axis=0, out=dest)
        return memoryview(out)

    def record(self, members: Mapping[str, Any], where: str = "sample", pack: Mapping[str, np.ndarray] | None = None) -> memoryview:
        """Members {name: payload} of one sample, with its decoded pack -> the full record's bytes."""
        payload = members.get(SAMPLE_MEMBER)
        if payload is None:
            raise ShardError(f"{where}: member {SAMPLE_MEMBER!r} is missing (found {sorted(members)})")
        if pack is None:
            raise ShardError(f"{where}: no frame pack precedes the sample")
        return self.record_from(payload, pack, where)

    def record_array(self, record: Any, copy: bool = False) -> np.ndarray:
        return self.full.record_array(record, copy)

    def view(self, record: Any, copy: bool = False) -> dict[str, np.ndarray]:
        return self.full.view(record, copy)


_FIELD = re.compile(r"\('([A-Za-z0-9_.\-]+)', '([<>|][a-z]\d{1,2})', \((\d+(?:, \d+)*),?\)\)")
_HEADER = re.compile(r"\{'descr': \[(.*)\], 'fortran_order': False, 'shape': \(\), \} *\n")


def _npy_record(raw: bytes) -> np.ndarray | None:
    """The 0-d record of a pack's npy bytes as `pack_bytes` writes them (version 1.0 header, fields with
    shapes), viewing `raw` without a copy; None for any other header. numpy's parser evaluates the header
    as Python (about 1 ms a pack, a fifth of reading a sim table's shard)."""
    if raw[:8] != b"\x93NUMPY\x01\x00" or len(raw) < 10:
        return None
    end = 10 + int.from_bytes(raw[8:10], "little")
    m = _HEADER.fullmatch(raw[10:end].decode("latin1"))
    if m is None:
        return None
    fields = _FIELD.findall(m.group(1))
    if ", ".join(f"('{n}', '{t}', ({d}{',' if ', ' not in d else ''}))" for n, t, d in fields) != m.group(1):
        return None
    try:
        dt = np.dtype([(n, t, tuple(int(x) for x in d.split(", "))) for n, t, d in fields])
    except (TypeError, ValueError):
        return None
    if len(raw) - end != dt.itemsize:
        return None  # numpy's parser names what is wrong
    return np.frombuffer(raw, dtype=dt, count=1, offset=end).reshape(())


def pack_tar_length(blob: bytes | memoryview) -> int:
    """Bytes of the frame pack member that opens `blob` (header and padded payload), or 0 when `blob`
    does not start with one."""
    if len(blob) < TAR_BLOCK:
        return 0
    name = bytes(blob[:100]).rstrip(b"\x00")
    if not name.endswith(b"." + PACK_MEMBER.encode()):
        return 0
    size = int(bytes(blob[124:135]), 8)
    return TAR_BLOCK + size + (-size % TAR_BLOCK)


def segment_blobs(codec: SharedFramesCodec, samples: Sequence[Mapping[str, Any]], where: str) -> list[bytes]:
    """The tar bytes each window of a segment contributes: the first one carries the pack before its sample."""
    from .encoding import key_of
    from .layout import sample_tar

    pack, members = codec.encode_segment(samples, where)
    blobs = [sample_tar(key_of(int(s["window_index"])), [(SAMPLE_MEMBER, m)]) for s, m in zip(samples, members)]
    blobs[0] = sample_tar(pack_key(int(samples[0]["window_index"])), [(PACK_MEMBER, pack)]) + blobs[0]
    return blobs


# -- index -------------------------------------------------------------------------------------------
def check_shared_spans(spans: np.ndarray, samples: int, shard_bytes: int | None, where: str) -> np.ndarray:
    """A shared-frames index (offset, length, pack offset, pack length) checked: every sample's member
    follows the previous one's or its own pack, which follows the previous sample."""
    if spans.shape != (samples, 4):
        raise ShardError(f"{where}: index has shape {spans.shape}, expected ({samples}, 4) for shared frames")
    if samples == 0:
        return spans
    off, ln, po, pl = (spans[:, i] for i in range(4))
    if np.any(spans % TAR_BLOCK) or np.any(ln < TAR_BLOCK) or np.any(pl < TAR_BLOCK) or po[0] != 0:
        raise ShardError(f"{where}: index is corrupt (spans must start at 0 and lie on 512-byte tar blocks)")
    new = np.ones(samples, dtype=bool)
    new[1:] = po[1:] != po[:-1]
    prev_end = np.concatenate([[0], off[:-1] + ln[:-1]])
    ok = np.where(new, (po == prev_end) & (off == po + pl), (off == prev_end) & (pl == np.roll(pl, 1)))
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        raise ShardError(f"{where}: index is corrupt at sample {bad} (its member or frame pack is not where the previous sample ends)")
    end = int(off[-1] + ln[-1])
    if shard_bytes is not None and end + 2 * TAR_BLOCK > shard_bytes:
        raise ShardError(f"{where}: index is corrupt: its samples end at byte {end}, past the shard's {shard_bytes} bytes")
    return spans


# -- reading -----------------------------------------------------------------------------------------
def _read_exact(raw: Any, n: int, url: str, what: str, at: int) -> memoryview:
    buf = memoryview(bytearray(n))
    got = 0
    try:
        while got < n:
            k = raw.readinto(buf[got:])
            if not k:
                break
            got += k
    except WdspqError:
        raise
    except Exception as e:
        raise ShardError(f"{url}, {what}: read failed at byte {at}: {type(e).__name__}: {e}") from None
    if got < n:
        raise ShardError(f"{url}: shard is truncated or corrupt: {what} (byte offset {at}) has {got} of its {n} bytes")
    return buf


def _read_range(manifest: Any, shard: int, begin: int, end: int, url: str, what: str) -> memoryview:
    """Bytes `begin .. end-1` of a shard, opened with the export's check (`Manifest.open_checked`)."""
    f = manifest.open_checked(shard, begin, end)
    try:
        return _read_exact(getattr(f, "raw", f), end - begin, url, what, begin)
    finally:
        f.close()


def _run_begin(off0: int, po0: int, pl0: int) -> tuple[bool, int]:
    """(inside, first byte to read) of a run of samples whose first member is at `off0` and its segment's pack
    at `po0` (`pl0` bytes): a run that starts inside a segment reads its pack on its own and the rest from its
    first sample, so a skipped sample is never read (R5); any other run is read from its first pack."""
    inside = po0 + pl0 != off0
    return inside, off0 if inside else po0


def _pack_of(codec: SharedFramesCodec, buf: memoryview, url: str, i: int, at: int) -> dict[str, np.ndarray]:
    where = f"{url}, frame pack of sample {i}"
    payload = single_member(buf, b"." + PACK_MEMBER.encode())
    if payload is None:
        _, members = parse_members(buf, where, at)
        payload = members.get(PACK_MEMBER)
        if payload is None:
            raise ShardError(f"{where}: member {PACK_MEMBER!r} is missing (found {sorted(members)})")
    return codec.decode_pack(payload, where)


def read_shared(manifest: Any, shard: int, start: int, stop: int, codec: SharedFramesCodec) -> Iterator[memoryview]:
    """Full records of samples `start .. stop-1` of a shared-frames shard, in order (see the module doc)."""
    name = manifest.shards[shard]["name"]
    url = manifest.storage.url(name)
    spans = manifest.sample_spans(shard, start, stop)
    off, ln, po, pl = (spans[:, i].tolist() for i in range(4))
    pack: dict[str, np.ndarray] | None = None
    cur = -1
    inside, begin = _run_begin(off[0], po[0], pl[0])
    if inside:
        buf = _read_range(manifest, shard, po[0], po[0] + pl[0], url, f"frame pack of sample {start}")
        pack, cur = _pack_of(codec, buf, url, start, po[0]), po[0]
    f = manifest.open_checked(shard, begin, off[-1] + ln[-1])
    raw = getattr(f, "raw", f)
    try:
        for k in range(len(off)):
            i = start + k
            if po[k] != cur:
                buf = _read_exact(raw, pl[k], url, f"frame pack of sample {i}", po[k])
                pack, cur = _pack_of(codec, buf, url, i, po[k]), po[k]
            yield _sample_record(codec, _read_exact(raw, ln[k], url, f"sample {i}", off[k]), pack, url, i, off[k])  # type: ignore[arg-type]
    finally:
        f.close()


def _sample_record(codec: SharedFramesCodec, buf: memoryview, pack: dict[str, np.ndarray], url: str, i: int,
                   at: int) -> memoryview:
    """The full record of sample `i` from its span's bytes `buf` (at byte `at`) and its segment's decoded pack."""
    where = f"{url}, sample {i}"
    payload = single_member(buf, b"." + SAMPLE_MEMBER.encode())
    if payload is None:
        _, members = parse_members(buf, where, at)
        return codec.record(members, where, pack)
    return codec.record_from(payload, pack, where)
