"""Smoke test of the benchmark harness: tools/bench.py --smoke runs and writes every figure (no timing checks)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RATIOS = (
    "stream_vs_webdataset",
    "stream_vs_map_fresh",
    "stream_vs_map_warm",
    "loader_w0_vs_webdataset",
    "loader_w1_vs_webdataset",
    "loader_w2_vs_webdataset",
    "resume_w0_90_vs_0",
    "resume_w2_90_vs_0",
    "rss_stream_4x_vs_1x",
    "rss_loader_w2_4x_vs_1x_max",
    "default_vs_raw_bytes",
    "stream_vs_cat_mb",
    "stream_default_vs_raw",
    "loader_w2_default_vs_raw",
)


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_bench_smoke_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "bench.py"), "--smoke", "--work", str(tmp_path / "work"),
         "--json", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PASS" in proc.stdout or "FAIL" in proc.stdout
    d = json.loads(out.read_text())
    for k in ("cpu", "cores", "python", "torch", "webdataset"):
        assert d["machine"][k], k
    assert d["data"]["windows"] > 0 and d["data"]["windows_4x"] == 4 * d["data"]["windows"]
    for k in ("samples_per_s", "mb_per_s", "peak_rss_mib", "build_s"):
        assert _number(d["export"][k]), ("export", k)
    med = {k: v["median"] for k, v in d["measurements"].items()}
    for k in ("fresh_samples_per_s", "warm_samples_per_s", "cache_limit_mib", "peak_rss_mib"):
        assert _number(med["map"][k]), ("map", k)
    assert _number(med["cat"]["mb_per_s"]) and d["export"]["default_bytes"] < d["export"]["bytes"]
    for name in ("webdataset", "stream", "loader_w0", "loader_w1", "loader_w2", "stream_4x", "loader_w2_4x",
                 "stream_default", "loader_w2_default"):
        for k in ("samples_per_s", "mb_per_s", "peak_rss_mib"):
            assert _number(med[name][k]), (name, k)
        assert med[name]["samples"] == d["data"]["windows" if "4x" not in name else "windows_4x"], name
    for name in ("loader_w1", "loader_w2", "loader_w2_4x", "resume_w2_0", "resume_w2_90"):
        assert _number(med[name]["workers_peak_rss_mib"]), name
    for nw in (0, 2):
        for f in (0, 90):
            assert _number(med[f"resume_w{nw}_{f}"]["ttfb_ms"]), (nw, f)
    assert med["resume_w0_90"]["batches_left"] < med["resume_w0_0"]["batches_left"]
    for k in RATIOS:
        assert _number(d["ratios"][k]), k
    assert len(d["targets"]) >= 4
    for t in d["targets"]:  # the sim rows are n/a only where MuJoCo cannot render
        assert t["pass"] in (True, False) or (t["name"].startswith("sim:") and d["sim"] is None), t
    if d["sim"] is not None:
        assert d["sim"]["default_bytes"] < d["sim"]["raw_bytes"] and _number(med["sim_loader_w2"]["samples_per_s"])


@pytest.mark.slow
def test_scale_check_runs_and_writes_its_figures(tmp_path):
    """tools/bench_scale.py (bench.py --scale) at two tiny sizes: every figure and verdict is written."""
    out = tmp_path / "scale.json"
    subprocess.run([sys.executable, str(ROOT / "tools" / "bench_scale.py"), "--sizes", "2000,4000", "--work",
                    str(tmp_path / "work"), "--json", str(out)], check=True, capture_output=True, timeout=600)
    d = json.loads(out.read_text())
    assert set(d["results"]) == {"2000", "4000"}
    assert all(r["stream"]["samples"] == r["export"]["windows"] for r in d["results"].values())
    assert [t["name"] for t in d["targets"]][-1] == "resume 90% / 0% at the largest size"
