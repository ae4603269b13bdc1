"""A version 1 table written the way wdspq 0.1 wrote it (v1 columns, metadata in the Parquet footer only).

Clips are FFV1, so the file is byte-reproducible and tests can compare samples against digests that
the version 1 code produced from this very file (`tests/data/v1_golden.json`).
"""

from __future__ import annotations

import hashlib
import io
import json
from fractions import Fraction

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

D, S, H, W, FPS = 3, 2, 16, 16, 10
SPEC = {"acts_length_sec": 0.3, "obs_length_sec": 0.4, "obs_offset_sec": -0.2, "video_frame_offsets": [-1, 0, 2],
        "stride": 2}


def _clip(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, size=(n, H, W, 3), dtype=np.uint8)
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska", options={"fflags": "+bitexact"}) as out:
        s = out.add_stream("ffv1", rate=Fraction(FPS, 1))
        s.width, s.height, s.pix_fmt = W, H, "bgr0"
        s.options = {"threads": "1"}
        for a in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return buf.getvalue()


def _png(seed: int) -> bytes:
    from PIL import Image

    img = np.random.default_rng(seed).integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def write_v1_table(path) -> None:
    rows = {k: [] for k in ("episode_id", "text", "action_ts", "actions", "observation_ts", "observations",
                            "image", "video", "video_t0")}
    for e, (n_a, n_o, n_f, t0, has_video) in enumerate([(12, 9, 14, 0.05, True), (7, 5, 0, 0.0, False),
                                                        (15, 11, 9, 0.4, True)]):
        rng = np.random.default_rng(e)
        start = 100.0 * e
        rows["episode_id"].append(f"v1-{e}")
        rows["text"].append(["pick up the red cube", "open the drawer", ""][e])
        rows["action_ts"].append((start + np.arange(n_a) / 10).tolist())
        rows["actions"].append(rng.normal(size=(n_a, D)).astype(np.float32).tolist())
        rows["observation_ts"].append((start + 0.03 + np.arange(n_o) / 7.5).tolist())
        rows["observations"].append(rng.normal(size=(n_o, S)).astype(np.float32).tolist())
        rows["image"].append(_png(e) if e != 1 else None)
        rows["video"].append(_clip(n_f, e) if has_video else None)
        rows["video_t0"].append(start + t0 - 0.1)
    schema = pa.schema([
        pa.field("episode_id", pa.string(), nullable=False), pa.field("text", pa.string()),
        pa.field("action_ts", pa.list_(pa.float64())), pa.field("actions", pa.list_(pa.list_(pa.float32(), D))),
        pa.field("observation_ts", pa.list_(pa.float64())),
        pa.field("observations", pa.list_(pa.list_(pa.float32(), S))),
        pa.field("image", pa.binary()), pa.field("video", pa.binary()), pa.field("video_t0", pa.float64()),
    ])
    meta = {"action_dim": D, "obs_dim": S, "action_rate_hz": 10.0, "observation_rate_hz": 7.5, "format_version": 1,
            "video_fps": float(FPS), "frame_height": H, "frame_width": W, "image_height": 8, "image_width": 8,
            "num_episodes": 3, "action_names": None, "observation_names": None, "source": "test", "extra": {}}
    with pq.ParquetWriter(path, schema) as w:
        w.write_table(pa.table(rows, schema=schema))
        w.add_key_value_metadata({"wdspq": json.dumps(meta, sort_keys=True)})


def sample_digest(sample: dict) -> dict[str, str]:
    """sha256 of each key's dtype, shape and bytes (numpy arrays or tensors)."""
    out = {}
    for k, v in sample.items():
        a = np.ascontiguousarray(np.asarray(v))
        out[k] = hashlib.sha256(f"{a.dtype}{a.shape}".encode() + a.tobytes()).hexdigest()[:16]
    return out
