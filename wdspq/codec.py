"""Sample <-> WebDataset member: one packed `.npy` record per sample (`<key>.sample.npy`).

The record is a 0-d numpy structured array with one aligned field per sample key, so a plain
`webdataset.WebDataset(url).decode()` reads it with its standard npy decoder (`rec["frames"]`), and
our reader turns it into arrays with one buffer copy and no per-field parsing. Frames are raw uint8
(lossless, no image decode on the training path). One member per sample keeps tar overhead at one
header per sample; README "Shard encoding" has the measurements behind this choice. The npy header is
deterministic, so encoded samples are byte-identical across runs.
"""

from __future__ import annotations

import ast
import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import ShardError

MEMBER = "sample.npy"
_MAGIC = b"\x93NUMPY"


def key_of(window_index: int) -> str:
    """The tar `__key__` of a window: its canonical index, zero-padded so keys sort like numbers."""
    return f"{int(window_index):010d}"


def record_dtype(schema: Mapping[str, Mapping[str, Any]]) -> np.dtype:
    """The structured dtype of one sample from a sample schema ({key: {dtype, shape}}), fields aligned."""
    fields = [(k, np.dtype(v["dtype"]), tuple(v["shape"])) for k, v in schema.items()]
    return np.dtype([(k, dt, shape) if shape else (k, dt) for k, dt, shape in fields], align=True)


class SampleCodec:
    """Encode sample dicts to members and decode members back, for one sample schema."""

    def __init__(self, schema: Mapping[str, Mapping[str, Any]]) -> None:
        self.schema = {k: dict(v) for k, v in schema.items()}
        self.dtype = record_dtype(self.schema)
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(np.zeros((), self.dtype)))
        self.header = buf.getvalue()

    def encode(self, sample: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """A sample dict -> WebDataset sample {'__key__': ..., 'sample.npy': bytes}."""
        if set(sample) != set(self.schema):
            missing, extra = set(self.schema) - set(sample), set(sample) - set(self.schema)
            raise ShardError(f"sample keys differ from the schema: missing {sorted(missing)}, extra {sorted(extra)}")
        rec = np.zeros((), dtype=self.dtype)
        for k, v in sample.items():
            rec[k] = v
        return {"__key__": key_of(int(sample["window_index"])), MEMBER: self.header + rec.tobytes()}

    def record_bytes(self, data: bytes | bytearray | memoryview, where: str = "sample") -> memoryview:
        """Member bytes -> the record's raw bytes (a view when the header is ours), checked against the schema."""
        hlen = len(self.header)
        mv = memoryview(data)
        if len(mv) == hlen + self.dtype.itemsize and mv[:hlen] == self.header:
            return mv[hlen:]
        rec = decode_record(data, where)
        if rec.dtype != self.dtype:
            raise ShardError(f"{where}: record layout differs from the manifest's sample schema")
        return memoryview(rec.tobytes())

    def decode(
        self, data: bytes | bytearray | memoryview, where: str = "sample", owned: bool = False
    ) -> dict[str, np.ndarray]:
        """Member bytes -> dict of arrays viewing one private, writable copy of the payload.

        `owned=True` says `data` is a writable buffer nobody else uses: the arrays then view it, no copy.
        """
        hlen = len(self.header)
        mv = memoryview(data)
        if len(mv) != hlen + self.dtype.itemsize or mv[:hlen] != self.header:
            rec = decode_record(data, where)
            if rec.dtype != self.dtype:
                raise ShardError(f"{where}: record layout differs from the manifest's sample schema")
        else:
            body = mv[hlen:] if owned and not mv.readonly else bytearray(mv[hlen:])
            rec = np.frombuffer(body, dtype=self.dtype, count=1).reshape(())
        return {k: rec[k] for k in self.schema}


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
