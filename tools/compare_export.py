"""Export speed of this checkout against another one (e.g. an older commit), side by side on the same table.

    git worktree add /tmp/old 987ac48
    .venv/bin/python tools/compare_export.py /tmp/old [--table bench_out/data/.../table.parquet] [--rounds 2]

Each round exports the table once with each checkout's wdspq (raw encoding, 1 process, the bench's window
spec), alternating, each in a fresh interpreter with its imports and tokenizer loaded before the clock
starts; prints windows/s, the ratio, and whether both wrote the same shards (sha256 of the first shard).
The table defaults to tools/bench.py's synthetic table (run the bench once to build it).
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, shutil, sys, time
src, table, out = sys.argv[1:4]
sys.path.insert(0, src)
import wdspq
assert wdspq.__file__.startswith(src), wdspq.__file__
from wdspq.shardfmt import RAW
from wdspq.text import bundled_bert_uncased_path
spec = wdspq.WindowSpec(acts_length_sec=1.0, obs_length_sec=1.0, video_frame_offsets=[-2, -1, 0], stride=4)
tok = bundled_bert_uncased_path()
wdspq.ParquetWindowDataset(table, spec, tokenizer=tok)  # imports and tokenizer outside the timing
shutil.rmtree(out, ignore_errors=True)
t = time.perf_counter()
m = wdspq.export_shards(table, out, spec, tokenizer=tok, samples_per_shard=200, workers=1, progress=False, encoding=RAW)
dt = time.perf_counter() - t
print(json.dumps({"windows": m["num_windows"], "windows_per_s": m["num_windows"] / dt, "sha": m["shards"][0]["sha256"]}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("other", help="the other checkout (a folder holding wdspq/)")
    ap.add_argument("--table", help="the table (default: tools/bench.py's synthetic table)")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    table = a.table or next(iter(sorted(glob.glob(str(ROOT / "bench_out/data/scale1-16ep-*/table.parquet")))), None)
    if table is None:
        sys.exit("no table: run tools/bench.py once, or pass --table")
    checkouts = {"other": str(Path(a.other).resolve()), "this": str(ROOT)}
    got: dict[str, list[dict]] = {k: [] for k in checkouts}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.rounds):
            for name, src in checkouts.items():
                out = subprocess.run([sys.executable, "-c", CHILD, src, table, f"{tmp}/{name}"], capture_output=True,
                                     text=True, check=True).stdout
                got[name].append(json.loads(out.strip().splitlines()[-1]))
    med = {k: statistics.median(r["windows_per_s"] for r in v) for k, v in got.items()}
    same = got["this"][0]["sha"] == got["other"][0]["sha"]
    print(f"{table}: {got['this'][0]['windows']} windows, raw encoding, 1 process, median of {a.rounds}")
    print(f"  other ({checkouts['other']}): {med['other']:.0f} windows/s")
    print(f"  this  ({checkouts['this']}): {med['this']:.0f} windows/s")
    print(f"  this / other: {med['this'] / med['other']:.2f}; same shards: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
