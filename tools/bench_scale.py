"""Scale check: at 250k and 1M windows, memory and resume cost must not grow with the export.

    .venv/bin/python tools/bench.py --scale          # or: .venv/bin/python tools/bench_scale.py [--sizes 250000,1000000]

Small frames so 1M windows fit on disk (8x8 video, 8x8 image, 0.25 s windows of 100 Hz actions, stride 1,
default encoding). For each size it builds a synthetic table, then measures, each in a fresh process
(peak RSS = ru_maxrss; a DataLoader's workers from RUSAGE_CHILDREN):
  export     export_shards, 1 process: peak RSS, windows/s;
  manifest   bytes of manifest.json, and of its shard list per shard (the part that grows);
  stream     one epoch of StreamLoader(num_workers=2, batch 256): peak RSS of the main process and of a worker;
  verify     verify_shards (every shard's index and members; no table): peak RSS;
  resume     load_state_dict + iter() + first batch from a state at 0 % and at 90 % of the epoch (the state
             is computed by counting batches in the cursor, without reading them).
Targets: manifest bytes per shard constant, peak RSS within 10 % between the sizes, resume 90 % <= 1.5x 0 %.
Tables go to --work (default bench_out/scale) and are reused; exports are redone (~2.5 GB at 1M windows).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SECONDS = 20.0  # per episode; 100 Hz actions, stride 1 -> ~2,000 windows per episode
BATCH = 256


def _spec() -> Any:
    from wdspq.windows import WindowSpec

    return WindowSpec(acts_length_sec=0.25, obs_length_sec=0.25, video_frame_offsets=[-1, 0], stride=1)


def _tok() -> str:
    from wdspq.text import bundled_bert_uncased_path

    return bundled_bert_uncased_path()


# ---------------------------------------------------------------------------------------------------
# measurements, each in its own interpreter


def c_build(p: dict[str, Any]) -> dict[str, Any]:
    from wdspq.build import build_synthetic

    t = time.perf_counter()
    build_synthetic(p["table"], episodes=p["episodes"], seconds=SECONDS, image_size=8, video_size=8, seed=0,
                    progress=False)
    return {"seconds": time.perf_counter() - t}


def c_export(p: dict[str, Any]) -> dict[str, Any]:
    from wdspq.export import export_shards

    t = time.perf_counter()
    m = export_shards(p["table"], p["shards"], _spec(), tokenizer=_tok(), samples_per_shard=p["per_shard"],
                      progress=False, overwrite=True)
    dt = time.perf_counter() - t
    return {"seconds": dt, "windows": m["num_windows"], "shards": len(m["shards"]), "windows_per_s": m["num_windows"] / dt,
            "bytes": sum(int(s["bytes"]) for s in m["shards"])}


def c_stream(p: dict[str, Any]) -> dict[str, Any]:
    from wdspq.stream import ShardStream, StreamLoader

    loader = StreamLoader(ShardStream(p["shards"], seed=0), batch_size=BATCH, num_workers=2)
    t, n = time.perf_counter(), 0
    for b in loader:
        n += int((b["window_index"] >= 0).sum())
    return {"samples": n, "seconds": time.perf_counter() - t}


def c_verify(p: dict[str, Any]) -> dict[str, Any]:
    from wdspq.verify import verify_shards

    t = time.perf_counter()
    r = verify_shards(p["shards"])
    return {"ok": r.ok, "seconds": time.perf_counter() - t}


def c_resume(p: dict[str, Any]) -> dict[str, Any]:
    from wdspq.stream import ShardStream, StreamLoader

    stream = ShardStream(p["shards"], seed=0)
    probe = StreamLoader(stream, batch_size=BATCH, num_workers=2)
    probe._prepare()
    cursor = probe._cursor
    for _ in range(int(p["fraction"] * cursor.batches_left)):  # count batches without reading them
        cursor.record(cursor.expected_size())
    state = stream._annotate_state(cursor.state().to_dict())  # as loader.state_dict() saves it (block order: its blocks)
    loader = StreamLoader(stream, batch_size=BATCH, num_workers=2)
    t = time.perf_counter()
    loader.load_state_dict(state)
    it = iter(loader)
    next(it)
    ttfb = time.perf_counter() - t
    it.close()
    return {"ttfb_s": ttfb}


CHILDREN = {"build": c_build, "export": c_export, "stream": c_stream, "verify": c_verify, "resume": c_resume}


def run(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(params)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child(kind: str, params: dict[str, Any]) -> None:
    out = CHILDREN[kind](params)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out["workers_peak_rss_mib"] = kids / 1024 if kids else None
    print(json.dumps(out))


def measure(size: int, work: Path) -> dict[str, Any]:
    folder = work / f"w{size}"
    folder.mkdir(parents=True, exist_ok=True)
    table, shards = folder / "table.parquet", folder / "shards"
    episodes = max(1, round(size / (SECONDS * 100 - 25)))
    if not table.exists():
        print(f"building {table} ({episodes} episodes) ...", flush=True)
        run("build", {"table": str(table), "episodes": episodes})
    base = {"table": str(table), "shards": str(shards), "per_shard": 5000}
    res: dict[str, Any] = {"episodes": episodes}
    print(f"{size}: export ...", flush=True)
    shutil.rmtree(shards, ignore_errors=True)  # a finished export would be reused, not measured
    res["export"] = run("export", base)
    text = (shards / "manifest.json").read_text()
    res["manifest_bytes"] = len(text)
    entries = json.loads(text)["shards"]  # the part that grows with the export: one entry per shard
    res["manifest_bytes_per_shard"] = len(json.dumps(entries, separators=(",", ":"))) / len(entries)
    print(f"{size}: stream, verify, resume ...", flush=True)
    res["stream"] = run("stream", base)
    res["verify"] = run("verify", base)
    res["resume_0"] = run("resume", {**base, "fraction": 0.0})
    res["resume_90"] = run("resume", {**base, "fraction": 0.9})
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="250000,1000000", help="windows per export (default 250000,1000000)")
    ap.add_argument("--work", default="bench_out/scale", help="folder for tables and exports (reused)")
    ap.add_argument("--json", dest="json_path", default="bench_out/scale.json")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.child[0], json.loads(a.child[1]))
        return 0
    sizes = [int(x) for x in a.sizes.split(",")]
    results = {s: measure(s, Path(a.work)) for s in sizes}
    lo, hi = results[sizes[0]], results[sizes[-1]]
    print(f"\n{'':34}" + "".join(f"{r['export']['windows']:>14,}" for r in results.values()))
    rows = [("export windows/s", lambda r: r["export"]["windows_per_s"], ",.0f"),
            ("shards", lambda r: r["export"]["shards"], ",.0f"),
            ("manifest bytes", lambda r: r["manifest_bytes"], ",.0f"),
            ("manifest bytes per shard entry", lambda r: r["manifest_bytes_per_shard"], ",.1f"),
            ("export peak RSS MiB", lambda r: r["export"]["peak_rss_mib"], ".0f"),
            ("stream w2 main peak RSS MiB", lambda r: r["stream"]["peak_rss_mib"], ".0f"),
            ("stream w2 worker peak RSS MiB", lambda r: r["stream"]["workers_peak_rss_mib"], ".0f"),
            ("stream w2 samples/s", lambda r: r["stream"]["samples"] / r["stream"]["seconds"], ",.0f"),
            ("verify peak RSS MiB", lambda r: r["verify"]["peak_rss_mib"], ".0f"),
            ("resume at 0 %: first batch ms", lambda r: 1000 * r["resume_0"]["ttfb_s"], ".0f"),
            ("resume at 90 %: first batch ms", lambda r: 1000 * r["resume_90"]["ttfb_s"], ".0f")]
    for label, f, fmt in rows:
        print(f"{label:34}" + "".join(f"{format(f(r), fmt):>14}" for r in results.values()))
    checks = [
        ("manifest bytes per shard, large / small", hi["manifest_bytes_per_shard"] / lo["manifest_bytes_per_shard"], 0.10),
        ("export peak RSS, large / small", hi["export"]["peak_rss_mib"] / lo["export"]["peak_rss_mib"], 0.10),
        ("stream w2 main peak RSS, large / small", hi["stream"]["peak_rss_mib"] / lo["stream"]["peak_rss_mib"], 0.10),
        ("stream w2 worker peak RSS, large / small",
         hi["stream"]["workers_peak_rss_mib"] / lo["stream"]["workers_peak_rss_mib"], 0.10),
        ("verify peak RSS, large / small", hi["verify"]["peak_rss_mib"] / lo["verify"]["peak_rss_mib"], 0.10),
    ]
    print()
    verdicts = []
    for label, v, tol in checks:
        ok = abs(v - 1) <= tol
        verdicts.append({"name": label, "value": v, "pass": ok})
        print(f"{label:48}{v:8.3f}  1 +- {tol}   {'PASS' if ok else 'FAIL'}")
    r = hi["resume_90"]["ttfb_s"] / hi["resume_0"]["ttfb_s"]
    verdicts.append({"name": "resume 90% / 0% at the largest size", "value": r, "pass": r <= 1.5})
    print(f"{'resume 90% / 0% at the largest size':48}{r:8.3f}  <= 1.5     {'PASS' if r <= 1.5 else 'FAIL'}")
    out = Path(a.json_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": {str(k): v for k, v in results.items()}, "targets": verdicts}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
