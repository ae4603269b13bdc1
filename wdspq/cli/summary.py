"""Report formatting shared by the commands: a table's summary, an export's manifest, `wrote OUT`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    _bytes_text,
    _duration_text,
)


def format_export(m: Any) -> str:
    """An export's manifest as a few aligned lines (no shard is read)."""
    d = m.data
    n, total = m.num_windows, sum(int(s.get("bytes", 0)) for s in m.shards)
    spec = d["spec"]
    tok = d.get("tokenizer", {})
    table = d.get("table", {})
    enc = d.get("encoding", {}).get("describe") or ("raw frames, raw record (lossless)" if m.version == 1 else "?")
    lines = [
        ("export", f"{m.url} (format v{m.version}, wdspq {d.get('wdspq_version', '?')})"),
        ("spec", ", ".join(f"{k}={v}" for k, v in spec.items() if k != "overrides" or v)),
        ("windows", f"{n:,} from {d.get('num_episodes', '?')} episodes, seed {d.get('seed')}, "
                    f"{'shuffled' if d.get('shuffle') else 'canonical order'}"),
        ("shards", f"{len(m.shards):,} of up to {d.get('samples_per_shard')} samples"),
        ("bytes", f"{_bytes_text(total)} ({total / max(n, 1):,.0f} per sample)"),
        ("encoding", enc + (f"; max pixel error {m.max_abs_error}" if m.max_abs_error else "")),
        ("tokenizer", f"{tok.get('requested', '?')} ({tok.get('class')}, {tok.get('vocab_size')} tokens, "
                      f"vocab sha256 {str(tok.get('vocab_sha256'))[:12]})"),
        ("table", f"{table.get('name')} ({_bytes_text(int(table.get('bytes', 0)))})"),
        ("keys", ", ".join(e["key"] for e in d["sample_schema"])),
    ]
    return "\n".join(f"{k:<11}{v}" for k, v in lines)


def table_summary(path: str | os.PathLike) -> dict[str, Any]:
    """Facts about a table for humans: metadata plus durations, read from the `action_ts` column only."""
    import pyarrow.compute as pc

    from ..table import read_meta
    from ..table.file import open_parquet, read_row_group

    meta = read_meta(path)
    pf = open_parquet(path)
    durations = []
    for g in range(pf.num_row_groups):
        arr = read_row_group(pf, path, g, [meta.actions.ts_column]).column(0).combine_chunks()
        lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        values = arr.flatten().to_numpy(zero_copy_only=False)
        off = np.concatenate([[0], np.cumsum(lengths)])
        ok = lengths > 0
        durations.append(values[off[1:][ok] - 1] - values[off[:-1][ok]])
    d = np.concatenate(durations) if durations else np.zeros(0)
    return {
        "path": str(path),
        "file_bytes": Path(path).stat().st_size,
        "row_groups": pf.num_row_groups,
        "episodes": pf.metadata.num_rows,
        "meta": meta,
        "duration_total_s": float(d.sum()),
        "duration_min_s": float(d.min()) if d.size else 0.0,
        "duration_mean_s": float(d.mean()) if d.size else 0.0,
        "duration_max_s": float(d.max()) if d.size else 0.0,
    }



def format_summary(s: dict[str, Any]) -> str:
    """Render `table_summary` as a few aligned lines."""
    m = s["meta"]
    lines = [
        ("table", f"{s['path']} ({_bytes_text(s['file_bytes'])}, {s['row_groups']} row groups, format v{m.read_as})"),
        ("episodes", str(s["episodes"])),
    ]
    for st in m.streams:
        rate = f" at {st.rate_hz:.6g} {'fps' if st.kind == 'camera' else 'Hz'}" if st.rate_hz else ""
        if st.kind in ("actions", "signal"):
            what = f"{st.kind}, {'D' if st.kind == 'actions' else 'S'}={st.width}{rate}"
        elif st.kind == "camera":
            codec = f", {st.codec}{' lossless' if st.lossless else ' lossy' if st.lossless is False else ''}" if st.codec else ""
            what = f"camera, {st.height}x{st.frame_width} (HxW){rate}{codec}"
        else:
            what = f"image, {st.height}x{st.frame_width} (HxW)"
        lines.append((st.name, what))
    lines += [
        (
            "duration",
            f"{_duration_text(s['duration_total_s'])} total; per episode {s['duration_min_s']:.1f} s min, "
            f"{s['duration_mean_s']:.1f} s mean, {s['duration_max_s']:.1f} s max",
        ),
    ]
    if m.source:
        lines.append(("source", m.source))
    width = max(13, *(len(k) + 1 for k, _ in lines))  # long stream names (observation.images.front) stay aligned
    return "\n".join(f"{k:<{width}}{v}" for k, v in lines)



def _report_built(out: str | os.PathLike) -> int:
    print(f"wrote {out}")
    print(format_summary(table_summary(out)))
    return 0

