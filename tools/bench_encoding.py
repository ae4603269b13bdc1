"""Measure shard member encodings on the same windows: bytes per sample and decode time per sample.

Encodings (all lossless, all readable by a plain `webdataset.WebDataset(url).decode()`):
  npy-per-field   one `.npy` member per sample key
  png+npy         frames (and image) as one `.png` member per frame, every other key as `.npy`
  packed-record   one `sample.npy` member: a 0-d structured record (wdspq's choice)
  pickle          one `.pyd` member holding the dict of arrays

Windows come from a synthetic table (1 s windows, frame offsets [-2,-1,0], 96x96 video by default),
cut with the map-style dataset. Decode time = reading the tar from memory and decoding every sample,
with webdataset's `.decode()` ("wds") and, for the packed record, with wdspq's codec ("wdspq"),
from a tar file in the page cache.

    .venv/bin/python tools/bench_encoding.py [--windows 300] [--video-size 96] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _png(frame_chw: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame_chw.transpose(1, 2, 0))).save(buf, format="PNG")
    return buf.getvalue()


def encode_npy_fields(s: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {f"{k}.npy": _npy(v) for k, v in s.items()}


def encode_png(s: dict[str, np.ndarray]) -> dict[str, bytes]:
    out = {}
    for k, v in s.items():
        if k == "frames":
            for j, fr in enumerate(v):
                out[f"frame{j}.png"] = _png(fr)
        elif k == "image":
            out["image.png"] = _png(v)
        else:
            out[f"{k}.npy"] = _npy(v)
    return out


def encode_pickle(s: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {"sample.pyd": pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL)}


def write_tar(samples: list[dict[str, np.ndarray]], encode: Any) -> bytes:
    buf = io.BytesIO()
    with wds.TarWriter(buf, mtime=0, user="wdspq", group="wdspq", mode=0o444) as tw:
        for s in samples:
            tw.write({"__key__": f"{int(s['window_index']):010d}", **encode(s)})
    return buf.getvalue()


def _reader(path: Path) -> wds.WebDataset:
    return wds.WebDataset(str(path), shardshuffle=False, empty_check=False)


def time_decode(fn: Any, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        n = fn()
        best = min(best, (time.perf_counter() - t) / n)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=300, help="samples per encoding (default 300)")
    ap.add_argument("--video-size", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3, help="decode passes; the best is reported")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)

    from wdspq import ParquetWindowDataset, WindowSpec
    from wdspq.build import build_synthetic
    from wdspq.shardfmt import RAW, SampleCodec
    from wdspq.text import default_tokenizer

    MEMBER = RAW.record_member

    tmp = Path(tempfile.mkdtemp(prefix="wdspq-bench-enc-"))
    table = tmp / "table.parquet"
    build_synthetic(table, episodes=4, seconds=10.0, video_size=args.video_size, seed=0, progress=False)
    spec = WindowSpec(acts_length_sec=1.0, obs_length_sec=1.0, video_frame_offsets=(-2, -1, 0))
    ds = ParquetWindowDataset(table, spec, tokenizer=default_tokenizer())
    step = max(1, len(ds) // args.windows)
    samples = [ds.sample_numpy(i) for i in range(0, len(ds), step)][: args.windows]
    n = len(samples)
    codec = SampleCodec(ds.sample_schema(), RAW)
    raw = sum(v.nbytes for v in samples[0].values())

    encodings = {
        "npy-per-field": encode_npy_fields,
        "png+npy": encode_png,
        "packed-record": lambda s: dict(codec.encode(s)),
        "pickle": encode_pickle,
    }
    rows = []
    for name, enc in encodings.items():
        t = time.perf_counter()
        data = write_tar(samples, enc)
        enc_s = (time.perf_counter() - t) / n
        path = tmp / f"{name}.tar"
        path.write_bytes(data)  # decoded from the page cache
        members = len(enc(samples[0]))

        def wds_decode(path: Path = path) -> int:
            k = 0
            for _ in _reader(path).decode():
                k += 1
            return k

        row = {
            "encoding": name,
            "members": members,
            "bytes_per_sample": len(data) / n,
            "overhead_vs_raw": len(data) / n / raw,
            "encode_us": enc_s * 1e6,
            "decode_wds_us": time_decode(wds_decode, args.repeats) * 1e6,
            "decode_wdspq_us": None,
        }
        if name == "packed-record":
            def own_decode(path: Path = path) -> int:
                k = 0
                for s in _reader(path):
                    codec.view(codec.record_from(s[MEMBER], "sample"))
                    k += 1
                return k

            row["decode_wdspq_us"] = time_decode(own_decode, args.repeats) * 1e6
        rows.append(row)

    if args.json:
        print(json.dumps({"windows": n, "raw_bytes_per_sample": raw, "video_size": args.video_size, "rows": rows}, indent=1))
        return 0
    print(f"{n} windows (1 s, offsets [-2,-1,0], {args.video_size}x{args.video_size} frames); "
          f"raw array bytes per sample: {raw}")
    print(f"{'encoding':<15}{'members':>8}{'bytes/sample':>14}{'vs raw':>8}{'encode us':>11}"
          f"{'decode us (wds)':>17}{'decode us (wdspq)':>19}")
    for r in rows:
        own = f"{r['decode_wdspq_us']:.0f}" if r["decode_wdspq_us"] is not None else "-"
        print(f"{r['encoding']:<15}{r['members']:>8}{r['bytes_per_sample']:>14.0f}{r['overhead_vs_raw']:>8.3f}"
              f"{r['encode_us']:>11.0f}{r['decode_wds_us']:>17.0f}{own:>19}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
