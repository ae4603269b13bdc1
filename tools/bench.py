#!/usr/bin/env python
"""wdspq benchmark harness: map-style vs plain webdataset vs the shard stream, side by side.

One run, on the same data: builds (or reuses, keyed by scale and data options) a synthetic table
(default 16 episodes x ~8 s at 100 Hz actions, 96x96 video at 20 fps, 64x64 images; `--grow K`
multiplies the episode count; `--scale` runs tools/bench_scale.py instead: 250k and 1M windows;
`--epoch-order` runs tools/bench_epoch.py instead: batch-mate repeats, raw stream vs `cat`, S3 bytes per
epoch and a one-shard export's worker scaling, block vs sequential in-shard order; `--mixture` runs
tools/bench_mixture.py instead: a 3-source mixture against one export of the same size; `--shared-frames`
runs tools/bench_shared.py instead: shared-frames against per-sample shards), exports it with 1 s windows,
frame offsets [-2, -1, 0] and stride 4
(about 3,300 windows of ~103 KiB, ~330 MiB at scale 1), then measures:

  export       export_shards windows/s and MB/s written (single process; build time reported apart);
  map fresh    ParquetWindowDataset ds[i] over a random permutation of all windows (--map-samples to
               cap it), from a fresh dataset with its default decode cache (512 MiB): a training epoch's
               first pass, video decoding included; "map warm" is a second permutation on the same,
               now warm, dataset;
  webdataset   `webdataset.WebDataset(urls, shardshuffle=False).decode()` iterated, nothing else: the
               floor cost of reading these shards;
  stream       ShardStream iterated directly (per-sample dicts of tensors, single process);
  loader wN    StreamLoader(batch_size=32, num_workers=N), N = 0, 1, 2, worker start-up included;
  resume       time to first batch after load_state_dict of a state taken at 0 % and at 90 % of the
               epoch (same topology), StreamLoader num_workers 0 and 2; bytes read before it (w0);
  rss 4x       ShardStream and StreamLoader(num_workers=2) over the 4x dataset: the 1x shards hard-linked
               4 times under new names with a manifest listing 4x the shards and windows (same sample
               bytes; the manifest, plan and cursor are 4x), full epoch;
  cat          warm sequential read of the raw export's files (`cat` to /dev/null after one warm-up
               read): the bandwidth ceiling ShardStream on the raw encoding is compared with;
  default enc  the same windows exported with the default encoding (shared frames, tuned zstd-3 records):
               bytes/sample versus raw, ShardStream and StreamLoader(num_workers=2) over it;
  sim          a `wdspq build sim` table (MuJoCo, 2 cameras) exported raw and with the default encoding:
               bytes/sample, StreamLoader num_workers 0 and 2 over 5 epochs with persistent workers.

The main export uses the raw encoding (frames raw, record uncompressed), so the webdataset floor and
the stream compare like for like; `tools/bench_codecs.py` compares every encoding on MuJoCo frames.

Every measurement runs in its own process, so its peak RSS is its own (ru_maxrss of the process; the
largest DataLoader worker's from RUSAGE_CHILDREN). By default these processes are forked from this
parent, which has imported torch/webdataset/wdspq but holds no data (saves ~3 s of imports each);
`--spawn` starts a fresh interpreter per measurement instead (the sim loader rows always run in one, as a
training job starts: forked from this harness the 2-worker run was slower). Rounds alternate over all measurements
(the order rotates per round) and medians are reported. samples/s and MB/s exclude setup (opening the
dataset or stream); MB = 10^6 bytes of shard (tar) data. The harness reports PASS/FAIL against the
issue's targets; it never fails on them (exit status 0 unless a measurement crashed).

    .venv/bin/python tools/bench.py [--grow K] [--scale] [--rounds R] [--json bench_out/bench.json] [--smoke]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MUJOCO_GL", "egl")  # read when mujoco is first imported: headless rendering

OFFSETS = [-2, -1, 0]
MIB = 2**20
MB = 1e6
TARGETS = {
    "stream_vs_webdataset": 0.9,  # ShardStream >= 0.9x the plain webdataset floor
    "stream_vs_map": 5.0,  # ShardStream >= 5x map-style random access (fresh, default cache)
    "resume_90_vs_0": 1.5,  # time to first batch at 90 % <= 1.5x at 0 %
    "rss_4x_vs_1x": 0.10,  # |RSS 4x / RSS 1x - 1| <= 10 %
    "default_vs_raw_bytes": 1 / 15,  # default encoding's bytes/sample <= 1/15 of raw
    "stream_vs_cat": 0.5,  # ShardStream (raw) MB/s >= 50 % of a warm `cat` of the same files
    "sim_default_vs_raw_bytes": 0.2,  # sim table (MuJoCo frames): default bytes/sample <= 1/5 of raw
    "sim_loader_w2_vs_w0": 1.5,  # sim table, default encoding: StreamLoader(num_workers=2) >= 1.5x num_workers=0
}


@dataclass(frozen=True)
class DataConfig:
    """What the synthetic table and its export are made of (the cache key of the data folder)."""

    episodes: int = 16
    seconds: float = 8.0
    video_size: int = 96
    image_size: int = 64
    fps: int = 20
    stride: int = 4
    samples_per_shard: int = 200
    seed: int = 0
    shard_format: int = 2  # exports of an older format are rebuilt, not reused
    default_encoding: str = ""  # set in main() to the default encoding's identity: a changed default re-exports

    def key(self, scale: int) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return f"scale{scale}-{self.episodes}ep-{digest}"


# ---------------------------------------------------------------------------------------------------
# process-level figures


def rss_now_mib() -> float:
    """Current resident set size of this process (VmRSS), MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def machine_info() -> dict[str, Any]:
    """CPU model, cores, OS and library versions, load average."""
    import numpy
    import pyarrow
    import torch
    import webdataset

    import wdspq

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        mem = float("nan")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": round(mem, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "webdataset": getattr(webdataset, "__version__", "?"),
        "numpy": numpy.__version__,
        "pyarrow": pyarrow.__version__,
        "wdspq": wdspq.__version__,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


class _ReadCounter:
    """Counts bytes read from local storage in this process (patches LocalStorage.open_read)."""

    def __init__(self) -> None:
        from wdspq.storage import LocalStorage

        self.readers: list[Any] = []
        orig = LocalStorage.open_read

        def open_read(storage: Any, *a: Any, **kw: Any) -> Any:
            r = orig(storage, *a, **kw)
            self.readers.append(r)
            return r

        LocalStorage.open_read = open_read  # type: ignore[method-assign]

    @property
    def bytes(self) -> int:
        return sum(int(r.raw.bytes_read) for r in self.readers)

    @property
    def opens(self) -> int:
        return len(self.readers)


def _tokenizer() -> str:
    from wdspq.text import default_tokenizer

    return default_tokenizer()


def _spec(stride: int) -> Any:
    from wdspq.windows import WindowSpec

    return WindowSpec(acts_length_sec=1.0, obs_length_sec=1.0, video_frame_offsets=OFFSETS, stride=stride)


def _shard_bytes(shards: str) -> int:
    m = json.loads((Path(shards) / "manifest.json").read_text())
    return sum(int(s["bytes"]) for s in m["shards"])


def default_encoding_id() -> str:
    from wdspq.shardfmt import DEFAULT_ENCODING

    return json.dumps(DEFAULT_ENCODING.to_dict(), sort_keys=True)


def _export_bytes(m: dict[str, Any]) -> int:
    """What a reader fetches besides the manifest and indexes: the shards plus the dictionary, if any."""
    return sum(int(s["bytes"]) for s in m["shards"]) + int(m["encoding"].get("dictionary_file", {}).get("bytes", 0))


# ---------------------------------------------------------------------------------------------------
# measurements (each runs in its own process; params and results are JSON-able)


def m_export(p: dict[str, Any]) -> dict[str, Any]:
    """Build the synthetic table, then export it (timed apart)."""
    from wdspq.build import build_synthetic
    from wdspq.export import export_shards
    from wdspq.shardfmt import DEFAULT_ENCODING, RAW

    cfg = DataConfig(**p["data"])
    table, shards = Path(p["table"]), Path(p["shards"])
    t = time.perf_counter()
    build_synthetic(table, episodes=cfg.episodes, seconds=cfg.seconds, image_size=cfg.image_size,
                    video_size=cfg.video_size, fps=cfg.fps, seed=cfg.seed, workers=1, progress=False)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    m = export_shards(table, shards, _spec(cfg.stride), tokenizer=_tokenizer(),
                      samples_per_shard=cfg.samples_per_shard, seed=cfg.seed, workers=1, progress=False,
                      overwrite=True, encoding=RAW)
    dt = time.perf_counter() - t
    t = time.perf_counter()
    md = export_shards(table, Path(p["shards_default"]), _spec(cfg.stride), tokenizer=_tokenizer(),
                       samples_per_shard=cfg.samples_per_shard, seed=cfg.seed, workers=1, progress=False,
                       overwrite=True, encoding=DEFAULT_ENCODING)
    dt_default = time.perf_counter() - t
    nbytes = _export_bytes(m)
    dbytes = _export_bytes(md)
    return {"build_s": build_s, "seconds": dt, "samples": int(m["num_windows"]), "bytes": nbytes,
            "samples_per_s": m["num_windows"] / dt, "mb_per_s": nbytes / MB / dt,
            "default_seconds": dt_default, "default_bytes": dbytes, "default_encoding": md["encoding"]["describe"],
            "default_samples_per_s": md["num_windows"] / dt_default}


def m_sim_export(p: dict[str, Any]) -> dict[str, Any]:
    """Render the sim table (wdspq build sim: 2 cameras, MuJoCo) and export it raw and with the default encoding."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from wdspq.build import build_sim
    from wdspq.export import export_shards
    from wdspq.shardfmt import DEFAULT_ENCODING, RAW

    folder = Path(p["folder"])
    table = folder / "sim.parquet"
    t = time.perf_counter()
    if not table.exists():
        build_sim(table, episodes=p["episodes"], seconds=p["seconds"], video_size=p["video_size"], progress=False)
    build_s = time.perf_counter() - t
    out = {"build_s": build_s}
    spec = _sim_spec(p["stride"])
    for name, enc in (("raw", RAW), ("default", DEFAULT_ENCODING)):
        t = time.perf_counter()
        m = export_shards(table, folder / f"shards-{name}", spec, tokenizer=_tokenizer(), samples_per_shard=200,
                          progress=False, encoding=enc, overwrite=True)
        out[f"{name}_seconds"] = time.perf_counter() - t
        out[f"{name}_bytes"] = _export_bytes(m)
        out["windows"] = int(m["num_windows"])
    out["samples_per_s"] = out["windows"] / out["default_seconds"]
    return out


def _sim_spec(stride: int) -> Any:
    from wdspq.windows import WindowSpec

    return WindowSpec(acts_length_sec=1.0, obs_length_sec=1.0, video_frame_offsets=OFFSETS, stride=stride)


def m_cat(p: dict[str, Any]) -> dict[str, Any]:
    """Warm sequential read of the export's shard files with `cat` (after one warm-up read): MB/s."""
    shards = Path(p["shards"])
    m = json.loads((shards / "manifest.json").read_text())
    files = [str(shards / s["name"]) for s in m["shards"]]
    nbytes = sum(int(s["bytes"]) for s in m["shards"])
    subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    t = time.perf_counter()
    subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)
    dt = time.perf_counter() - t
    return {"seconds": dt, "bytes": nbytes, "mb_per_s": nbytes / MB / dt,
            "samples_per_s": int(m["num_windows"]) / dt}


def m_map(p: dict[str, Any]) -> dict[str, Any]:
    """ParquetWindowDataset random access: a fresh dataset's first pass, then a warm pass."""
    import numpy as np

    from wdspq.table_dataset import ParquetWindowDataset

    t = time.perf_counter()
    ds = ParquetWindowDataset(p["table"], _spec(p["stride"]), tokenizer=_tokenizer())
    open_s = time.perf_counter() - t
    n = len(ds)
    m = min(int(p["map_samples"]), n) if p["map_samples"] > 0 else n
    rng = np.random.default_rng(p["round"])
    out: dict[str, Any] = {"open_s": open_s, "samples": m, "windows": n, "cache_limit_mib": ds.cache_bytes / MIB}
    for phase in ("fresh", "warm"):
        order = rng.permutation(n)[:m].tolist()
        t = time.perf_counter()
        for i in order:
            ds[i]
        dt = time.perf_counter() - t
        c = ds._proc()["cache"]
        out[f"{phase}_samples_per_s"] = m / dt
        out[f"{phase}_seconds"] = dt
        out[f"{phase}_hit_rate"] = c.hits / max(1, c.hits + c.misses)
        c.hits = c.misses = 0
    out["samples_per_s"] = out["fresh_samples_per_s"]
    out["cache_mib"] = c.bytes / MIB
    out["cached_episodes"] = sum(k[0] == "episode" for k in c.items)
    return out


def m_webdataset(p: dict[str, Any]) -> dict[str, Any]:
    """Plain webdataset: read and decode every member of every shard, in shard order; nothing else."""
    import webdataset as wds

    shards = Path(p["shards"])
    m = json.loads((shards / "manifest.json").read_text())
    urls = [str(shards / s["name"]) for s in m["shards"]]
    nbytes = sum(int(s["bytes"]) for s in m["shards"])
    ds = wds.WebDataset(urls, shardshuffle=False).decode()
    t = time.perf_counter()
    n = 0
    for _ in ds:
        n += 1
    dt = time.perf_counter() - t
    return {"samples": n, "seconds": dt, "bytes": nbytes, "samples_per_s": n / dt, "mb_per_s": nbytes / MB / dt}


def m_stream(p: dict[str, Any]) -> dict[str, Any]:
    """ShardStream iterated directly: per-sample dicts of tensors, single process, one epoch."""
    from wdspq.stream import ShardStream

    counter = _ReadCounter()
    t = time.perf_counter()
    stream = ShardStream(p["shards"], shuffle=True, seed=0)
    open_s = time.perf_counter() - t
    nbytes = _shard_bytes(p["shards"])
    t = time.perf_counter()
    n = 0
    for _ in stream:
        n += 1
    dt = time.perf_counter() - t
    return {"open_s": open_s, "samples": n, "seconds": dt, "bytes": nbytes, "storage_bytes_read": counter.bytes,
            "samples_per_s": n / dt, "mb_per_s": nbytes / MB / dt}


def m_loader(p: dict[str, Any]) -> dict[str, Any]:
    """StreamLoader over `epochs` epochs (default 1; worker start-up included; persistent workers when more
    than one epoch, as a training run keeps them), batches of `batch_size`."""
    from wdspq.stream import ShardStream, StreamLoader

    epochs = int(p.get("epochs", 1))
    t = time.perf_counter()
    loader = StreamLoader(ShardStream(p["shards"], shuffle=True, seed=0), batch_size=p["batch_size"],
                          num_workers=p["num_workers"], persistent_workers=epochs > 1 and p["num_workers"] > 0)
    open_s = time.perf_counter() - t
    nbytes = _shard_bytes(p["shards"]) * epochs
    n = batches = 0
    first = None
    t = time.perf_counter()
    for e in range(epochs):
        loader.set_epoch(e)
        for b in loader:
            if first is None:
                first = time.perf_counter() - t
            n += int((b["window_index"] >= 0).sum())
            batches += 1
    dt = time.perf_counter() - t
    return {"open_s": open_s, "samples": n, "batches": batches, "seconds": dt, "first_batch_s": first,
            "bytes": nbytes, "samples_per_s": n / dt, "mb_per_s": nbytes / MB / dt}


def m_state(p: dict[str, Any]) -> dict[str, Any]:
    """A loader state taken after `fraction` of the epoch's batches (the resume measurements load it)."""
    from wdspq.stream import ShardStream, StreamLoader

    loader = StreamLoader(ShardStream(p["shards"], shuffle=True, seed=0), batch_size=p["batch_size"],
                          num_workers=p["num_workers"])
    total = len(loader)
    k = int(p["fraction"] * total)
    if k:
        it = iter(loader)
        for _ in range(k):
            next(it)
        state = loader.state_dict()
        it.close()
    else:
        state = loader.state_dict()
    Path(p["state_path"]).write_text(json.dumps(state))
    return {"batches_total": total, "batches_done": k}


def m_resume(p: dict[str, Any]) -> dict[str, Any]:
    """Fresh process: load a saved state, then time load_state_dict + iter() + the first batch."""
    from wdspq.stream import ShardStream, StreamLoader

    counter = _ReadCounter()
    state = json.loads(Path(p["state_path"]).read_text())
    t = time.perf_counter()
    loader = StreamLoader(ShardStream(p["shards"], shuffle=True, seed=0), batch_size=p["batch_size"],
                          num_workers=p["num_workers"])
    open_s = time.perf_counter() - t
    manifest_bytes = counter.bytes
    t = time.perf_counter()
    loader.load_state_dict(state)
    it = iter(loader)
    batch = next(it)
    ttfb = time.perf_counter() - t
    read = counter.bytes - manifest_bytes
    it.close()
    del it
    gc.collect()
    check = StreamLoader(loader.stream, batch_size=p["batch_size"], num_workers=p["num_workers"])
    check.load_state_dict(state)
    left = len(check)  # batches the resumed epoch yields (outside the timing)
    return {"open_s": open_s, "ttfb_s": ttfb, "ttfb_ms": 1000 * ttfb, "first_batch_size": len(batch["window_index"]),
            "batches_left": left, "bytes_read_to_first_batch": read if p["num_workers"] == 0 else None}


MEASURES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "export": m_export,
    "map": m_map,
    "webdataset": m_webdataset,
    "stream": m_stream,
    "loader": m_loader,
    "state": m_state,
    "resume": m_resume,
    "cat": m_cat,
    "sim_export": m_sim_export,
}


def child_main(fn: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in this (child) process and add its peak RSS and CPU time."""
    rss0 = rss_now_mib()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    out = MEASURES[fn](params)
    gc.collect()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    rc = resource.getrusage(resource.RUSAGE_CHILDREN)
    out["rss_start_mib"] = rss0
    out["peak_rss_mib"] = r1.ru_maxrss / 1024  # Linux: KiB
    out["rss_growth_mib"] = out["peak_rss_mib"] - rss0  # above what the process held when it started
    out["workers_peak_rss_mib"] = rc.ru_maxrss / 1024 if rc.ru_maxrss else None  # the largest worker
    out["cpu_s"] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime) + rc.ru_utime + rc.ru_stime
    return out


def run_child(fn: str, params: dict[str, Any], spawn: bool) -> dict[str, Any]:
    """Run measurement `fn` in its own process (forked from this one, or a fresh interpreter)."""
    if spawn:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", fn, json.dumps(params)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"measurement {fn} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        reply = json.loads(lines[-1])
    else:
        rfd, wfd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # child
            os.close(rfd)
            try:
                data = json.dumps({"ok": child_main(fn, params)})
            except BaseException:
                data = json.dumps({"error": traceback.format_exc()})
            with os.fdopen(wfd, "w") as f:
                f.write(data)
            os._exit(0)
        os.close(wfd)
        with os.fdopen(rfd) as f:
            raw = f.read()
        _, status = os.waitpid(pid, 0)
        if not raw:
            raise RuntimeError(f"measurement {fn} died (wait status {status})")
        reply = json.loads(raw)
    if "error" in reply:
        raise RuntimeError(f"measurement {fn} failed:\n{reply['error']}")
    return reply["ok"]


# ---------------------------------------------------------------------------------------------------
# data


def prepare_data(work: Path, cfg: DataConfig, scale: int, fresh: bool, spawn: bool) -> tuple[Path, Path, dict]:
    """The table and its export under `work` (built and timed now, or reused with the recorded timing)."""
    folder = work / cfg.key(scale)
    table, shards, record = folder / "table.parquet", folder / "shards", folder / "export.json"
    shards_default = folder / "shards-default"
    if fresh and folder.exists():
        shutil.rmtree(folder)
    if record.exists() and (shards / "manifest.json").exists() and (shards_default / "manifest.json").exists() \
            and table.exists():
        rec = json.loads(record.read_text())
        rec["reused"] = True
        return table, shards, rec
    folder.mkdir(parents=True, exist_ok=True)
    print(f"building and exporting {folder} ...", flush=True)
    rec = run_child("export", {"data": asdict(cfg), "table": str(table), "shards": str(shards),
                               "shards_default": str(shards_default)}, spawn)
    rec["when"] = time.strftime("%Y-%m-%d %H:%M:%S")
    record.write_text(json.dumps(rec, indent=1))
    rec["reused"] = False
    return table, shards, rec


def prepare_sim(work: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """The sim table and its two exports (raw, default), or None without MuJoCo (the sim rows read n/a)."""
    import importlib.util

    if importlib.util.find_spec("mujoco") is None:
        print("sim table skipped: MuJoCo is not installed (pip install -e '.[sim]')", flush=True)
        return None
    params = {"episodes": 2 if args.smoke else 16, "seconds": 1.5 if args.smoke else 5.0,
              "video_size": 32 if args.smoke else 96, "stride": 1,  # actions at 20 Hz: every anchor
              "default_encoding": default_encoding_id()}
    folder = work / ("sim-" + hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10])
    record = folder / "export.json"
    if record.exists():
        rec = json.loads(record.read_text())
    else:
        folder.mkdir(parents=True, exist_ok=True)
        print(f"rendering and exporting {folder} ...", flush=True)
        try:
            rec = run_child("sim_export", {**params, "folder": str(folder)}, args.spawn)
        except RuntimeError as e:  # e.g. no OpenGL here: the rest of the bench still runs
            print(f"sim table skipped: {str(e).splitlines()[-1]}", flush=True)
            return None
        record.write_text(json.dumps(rec, indent=1))
    return {"rec": rec, "default": folder / "shards-default", "raw": folder / "shards-raw"}


def make_4x(shards: Path) -> Path:
    """A 4x export: the 1x shards hard-linked 4 times under new names, and a manifest listing 4x the shards."""
    from wdspq.shardfmt import index_name, shard_name

    out = shards.parent / "shards-4x"
    m = json.loads((shards / "manifest.json").read_text())
    if (out / "manifest.json").exists():
        return out
    out.mkdir(exist_ok=True)
    entries, n, w = [], len(m["shards"]), int(m["num_windows"])
    for copy in range(4):
        for i, s in enumerate(m["shards"]):
            e = dict(s)
            e["name"] = shard_name(copy * n + i)
            e["index"] = {**s["index"], "name": index_name(copy * n + i)}
            if "first_window" in e:
                e["first_window"] = int(e["first_window"]) + copy * w
            for src, dst in ((s["name"], e["name"]), (s["index"]["name"], e["index"]["name"])):
                if not (out / dst).exists():
                    try:
                        os.link(shards / src, out / dst)
                    except OSError:
                        os.symlink((shards / src).resolve(), out / dst)
            entries.append(e)
    m["shards"] = entries
    m["num_windows"] = 4 * w
    m["num_episodes"] = 4 * int(m.get("num_episodes", 0))
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(m))
    tmp.rename(out / "manifest.json")
    return out


# ---------------------------------------------------------------------------------------------------
# driver


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--grow", type=int, default=1, metavar="K", help="multiply the episode count (default 1: 16 episodes)")
    p.add_argument("--scale", action="store_true",
                   help="run the scale check instead (tools/bench_scale.py: 250k and 1M windows; minutes, ~3 GB)")
    p.add_argument("--epoch-order", action="store_true",
                   help="run tools/bench_epoch.py instead (in-shard order: batch-mates, cat, S3 bytes, one shard)")
    p.add_argument("--mixture", action="store_true",
                   help="run tools/bench_mixture.py instead (3-source mixture vs one export, 0 and 2 workers)")
    p.add_argument("--shared-frames", action="store_true",
                   help="run tools/bench_shared.py instead (shared-frames vs per-sample shards)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported (default 3)")
    p.add_argument("--json", dest="json_path", default="bench_out/bench.json", help="write all figures here")
    p.add_argument("--work", default="bench_out/data", help="folder for tables and shards (reused, keyed by scale)")
    p.add_argument("--fresh", action="store_true", help="rebuild and re-export even if the data exists")
    p.add_argument("--spawn", action="store_true", help="a fresh interpreter per measurement instead of a fork")
    p.add_argument("--episodes", type=int, default=16, help="episodes at scale 1 (default 16)")
    p.add_argument("--seconds", type=float, default=8.0, help="mean episode length, s (lengths vary 0.6-1.4x)")
    p.add_argument("--video-size", type=int, default=96)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--stride", type=int, default=4, help="window stride in action steps (100 Hz), default 4")
    p.add_argument("--samples-per-shard", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--map-samples", type=int, default=0,
                   help="windows per map-style pass (default 0: all, a full epoch; fewer windows overweight the "
                        "per-episode decode and flatter the stream)")
    p.add_argument("--smoke", action="store_true", help="tiny data and one round (for tests; figures meaningless)")
    p.add_argument("--child", nargs=2, metavar=("KIND", "PARAMS"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.smoke:
        a.episodes, a.seconds, a.stride, a.samples_per_shard = 3, 2.0, 10, 16
        a.video_size, a.image_size, a.batch_size, a.map_samples, a.rounds = 32, 16, 8, 0, 1
    return a


def _med(rounds: list[dict[str, Any]], key: str) -> Any:
    vals = [r[key] for r in rounds if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric figure over the rounds, plus the rounds themselves."""
    keys = [k for k, v in rounds[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    med = {k: _med(rounds, k) for k in keys}
    for k, v in rounds[0].items():
        if k not in med:
            med[k] = v
    return {"median": med, "rounds": rounds}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps({"ok": child_main(args.child[0], json.loads(args.child[1]))}))
        return 0
    if args.scale:
        from bench_scale import main as scale_main  # tools/ is on sys.path when this file runs as a script

        return scale_main([])
    if args.epoch_order:
        from bench_epoch import main as epoch_main  # tools/ is on sys.path when this file runs as a script

        return epoch_main(["--rounds", str(args.rounds), *(["--json", args.json_path] if args.json_path else [])])
    if args.mixture or args.shared_frames:
        tool, extra = ("bench_mixture.py", ["--workers", "0", "2"]) if args.mixture else ("bench_shared.py", [])
        return subprocess.call([sys.executable, str(Path(__file__).with_name(tool)), "--rounds", str(args.rounds), *extra])
    t_start = time.perf_counter()
    # import what every measurement needs once, before forking (no data is touched here)
    import torch  # noqa: F401
    import transformers  # noqa: F401  (the tokenizer: ~1 s of imports the export would otherwise time)
    import webdataset  # noqa: F401

    import wdspq.export  # noqa: F401
    import wdspq.stream.loader  # noqa: F401
    import wdspq.table_dataset  # noqa: F401

    machine = machine_info()
    cfg = DataConfig(episodes=args.episodes * args.grow, seconds=args.seconds, video_size=args.video_size,
                     image_size=args.image_size, stride=args.stride, samples_per_shard=args.samples_per_shard,
                     default_encoding=default_encoding_id())
    work = Path(args.work)
    table, shards, export_rec = prepare_data(work, cfg, args.grow, args.fresh, args.spawn)
    shards4 = make_4x(shards)
    sim = prepare_sim(work, args)
    manifest = json.loads((shards / "manifest.json").read_text())
    n_windows, shard_bytes = int(manifest["num_windows"]), _shard_bytes(str(shards))
    bs = args.batch_size

    # resume states (same topology as the loaders that load them), taken once per data folder
    states: dict[tuple[int, float], str] = {}
    for nw in (0, 2):
        for frac in (0.0, 0.9):
            path = shards.parent / f"state-w{nw}-b{bs}-{int(frac * 100)}.json"
            if not path.exists():
                run_child("state", {"shards": str(shards), "batch_size": bs, "num_workers": nw, "fraction": frac,
                                    "state_path": str(path)}, args.spawn)
            states[(nw, frac)] = str(path)

    base = {"shards": str(shards), "table": str(table), "stride": cfg.stride, "batch_size": bs}
    plan: dict[str, tuple[str, dict[str, Any]]] = {
        "map": ("map", {**base, "map_samples": args.map_samples}),
        "webdataset": ("webdataset", base),
        "stream": ("stream", base),
        **{f"loader_w{nw}": ("loader", {**base, "num_workers": nw}) for nw in (0, 1, 2)},
        **{f"resume_w{nw}_{int(f * 100)}": ("resume", {**base, "num_workers": nw, "state_path": states[(nw, f)]})
           for nw in (0, 2) for f in (0.0, 0.9)},
        "cat": ("cat", base),
        "stream_default": ("stream", {**base, "shards": str(shards.parent / "shards-default")}),
        "loader_w2_default": ("loader", {**base, "shards": str(shards.parent / "shards-default"), "num_workers": 2}),
    }
    if sim is not None:
        sim_base = {**base, "shards": str(sim["default"])}
        sim_base["epochs"] = 1 if args.smoke else 5  # persistent workers, as in training
        # A fresh interpreter each, as a training job starts: a child forked from this harness inherits its
        # heap and state, which slowed the 2-worker run (w2/w0 1.46-1.57 forked, 1.66-1.80 fresh, same export)
        sim_base["spawn"] = True
        plan["sim_loader_w0"] = ("loader", {**sim_base, "num_workers": 0})
        plan["sim_loader_w2"] = ("loader", {**sim_base, "num_workers": 2})
    once: dict[str, tuple[str, dict[str, Any]]] = {  # RSS only: one round
        "stream_4x": ("stream", {**base, "shards": str(shards4)}),
        "loader_w2_4x": ("loader", {**base, "shards": str(shards4), "num_workers": 2}),
    }
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in [*plan, *once]}
    names = list(plan)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            fn, params = plan[name]
            results[name].append(run_child(fn, {**params, "round": r}, args.spawn or bool(params.get("spawn"))))
        print(f"round {r + 1}/{args.rounds} done ({time.perf_counter() - t_start:.0f} s)", flush=True)
    for name, (fn, params) in once.items():
        results[name].append(run_child(fn, {**params, "round": 0}, args.spawn))

    meas = {k: summarise(v) for k, v in results.items()}
    med = {k: v["median"] for k, v in meas.items()}
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    def rss_pair(name: str) -> float:
        m = med[name]
        return max(m["peak_rss_mib"], m["workers_peak_rss_mib"] or 0.0)

    ratios = {
        "stream_vs_webdataset": ratio(med["stream"]["samples_per_s"], med["webdataset"]["samples_per_s"]),
        "stream_vs_map_fresh": ratio(med["stream"]["samples_per_s"], med["map"]["fresh_samples_per_s"]),
        "stream_vs_map_warm": ratio(med["stream"]["samples_per_s"], med["map"]["warm_samples_per_s"]),
        **{f"loader_w{nw}_vs_webdataset": ratio(med[f"loader_w{nw}"]["samples_per_s"], med["webdataset"]["samples_per_s"])
           for nw in (0, 1, 2)},
        **{f"loader_w{nw}_vs_map_fresh": ratio(med[f"loader_w{nw}"]["samples_per_s"], med["map"]["fresh_samples_per_s"])
           for nw in (0, 1, 2)},
        "resume_w0_90_vs_0": ratio(med["resume_w0_90"]["ttfb_s"], med["resume_w0_0"]["ttfb_s"]),
        "resume_w2_90_vs_0": ratio(med["resume_w2_90"]["ttfb_s"], med["resume_w2_0"]["ttfb_s"]),
        "rss_stream_4x_vs_1x": ratio(med["stream_4x"]["peak_rss_mib"], med["stream"]["peak_rss_mib"]),
        "rss_growth_stream_4x_vs_1x": ratio(med["stream_4x"]["rss_growth_mib"], med["stream"]["rss_growth_mib"]),
        "rss_loader_w2_4x_vs_1x_main": ratio(med["loader_w2_4x"]["peak_rss_mib"], med["loader_w2"]["peak_rss_mib"]),
        "rss_loader_w2_4x_vs_1x_worker": ratio(med["loader_w2_4x"]["workers_peak_rss_mib"],
                                               med["loader_w2"]["workers_peak_rss_mib"]),
        "rss_loader_w2_4x_vs_1x_max": ratio(rss_pair("loader_w2_4x"), rss_pair("loader_w2")),
        "default_vs_raw_bytes": ratio(export_rec["default_bytes"], export_rec["bytes"]),
        "stream_vs_cat_mb": ratio(med["stream"]["mb_per_s"], med["cat"]["mb_per_s"]),
        "stream_default_vs_raw": ratio(med["stream_default"]["samples_per_s"], med["stream"]["samples_per_s"]),
        "loader_w2_default_vs_raw": ratio(med["loader_w2_default"]["samples_per_s"], med["loader_w2"]["samples_per_s"]),
        "sim_default_vs_raw_bytes": ratio(sim["rec"]["default_bytes"], sim["rec"]["raw_bytes"]) if sim else None,
        "sim_loader_w2_vs_w0": ratio(med["sim_loader_w2"]["samples_per_s"], med["sim_loader_w0"]["samples_per_s"])
        if sim else None,
    }

    def check(name: str, value: float | None, op: str, bound: float) -> dict[str, Any]:
        if value is None:
            ok = None
        elif op == ">=":
            ok = value >= bound
        elif op == "<=":
            ok = value <= bound
        else:  # within
            ok = abs(value - 1.0) <= bound
        return {"name": name, "value": value, "op": op, "bound": bound, "pass": ok}

    targets = [
        check("ShardStream / plain webdataset", ratios["stream_vs_webdataset"], ">=", TARGETS["stream_vs_webdataset"]),
        check("ShardStream / map-style fresh (cache 512 MiB)", ratios["stream_vs_map_fresh"], ">=",
              TARGETS["stream_vs_map"]),
        check("resume 90% / 0% (num_workers 0)", ratios["resume_w0_90_vs_0"], "<=", TARGETS["resume_90_vs_0"]),
        check("resume 90% / 0% (num_workers 2)", ratios["resume_w2_90_vs_0"], "<=", TARGETS["resume_90_vs_0"]),
        check("ShardStream RSS 4x / 1x", ratios["rss_stream_4x_vs_1x"], "within", TARGETS["rss_4x_vs_1x"]),
        check("StreamLoader w2 RSS 4x / 1x (max of main, worker)", ratios["rss_loader_w2_4x_vs_1x_max"], "within",
              TARGETS["rss_4x_vs_1x"]),
        check("default encoding bytes/sample / raw", ratios["default_vs_raw_bytes"], "<=", TARGETS["default_vs_raw_bytes"]),
        check("ShardStream (raw) MB/s / warm cat MB/s", ratios["stream_vs_cat_mb"], ">=", TARGETS["stream_vs_cat"]),
        check("sim: default encoding bytes/sample / raw", ratios["sim_default_vs_raw_bytes"], "<=",
              TARGETS["sim_default_vs_raw_bytes"]),
        check("sim: StreamLoader w2 / w0 (default encoding)", ratios["sim_loader_w2_vs_w0"], ">=",
              TARGETS["sim_loader_w2_vs_w0"]),
    ]
    import numpy as np

    first = np.load(shards / manifest["shards"][0]["index"]["name"])
    sample_bytes = int(first[0, 1])
    map_samples = min(args.map_samples, n_windows) if args.map_samples > 0 else n_windows
    data = {
        "config": {**asdict(cfg), "scale": args.grow, "window_sec": 1.0, "frame_offsets": OFFSETS,
                   "batch_size": bs, "map_samples": map_samples, "rounds": args.rounds,
                   "process": "spawn" if args.spawn else "fork", "smoke": args.smoke},
        "data": {"table": str(table), "shards": str(shards), "shards_4x": str(shards4), "windows": n_windows,
                 "windows_4x": 4 * n_windows, "shards_count": len(manifest["shards"]), "bytes": shard_bytes,
                 "sample_bytes_in_tar": sample_bytes,
                 "four_x_method": "1x shards hard-linked 4x under new names, manifest lists 4x shards/windows"},
        "machine": machine,
        "export": export_rec,
        "sim": sim["rec"] if sim else None,
        "measurements": meas,
        "ratios": ratios,
        "targets": targets,
        "elapsed_s": time.perf_counter() - t_start,
    }
    print_report(data)
    if args.json_path:
        out = Path(args.json_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=1))
        print(f"wrote {out}")
    return 0


def _f(v: Any, fmt: str = ".0f") -> str:
    return "-" if v is None else format(v, fmt)


def print_report(d: dict[str, Any]) -> None:
    """The human-readable table: figures, ratios, PASS/FAIL."""
    m, c, dd, ex = d["machine"], d["config"], d["data"], d["export"]
    med = {k: v["median"] for k, v in d["measurements"].items()}
    print()
    print(f"machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {m['memory_gib']} GiB, {m['os']}; "
          f"Python {m['python']}, torch {m['torch']}, webdataset {m['webdataset']}, numpy {m['numpy']}, "
          f"pyarrow {m['pyarrow']}, wdspq {m['wdspq']}; load {m['loadavg_start']} -> {m['loadavg_end']}")
    print(f"data: scale {c['scale']}: {c['episodes']} episodes x ~{c['seconds']:g} s, {c['video_size']}px video @ "
          f"{c['fps']} fps, {c['image_size']}px image; 1 s windows, offsets {c['frame_offsets']}, stride {c['stride']} "
          f"-> {dd['windows']} windows in {dd['shards_count']} shards, {dd['bytes'] / MB:.0f} MB "
          f"({dd['sample_bytes_in_tar'] / 1024:.1f} KiB/sample); 4x: {dd['windows_4x']} windows ({dd['four_x_method']})")
    print(f"run: {c['rounds']} alternating rounds, medians; one {c['process']}ed process per measurement; "
          f"batch {c['batch_size']}; map-style passes of {c['map_samples']} windows; MB = 1e6 bytes of shard data")
    print()
    hdr = (f"{'measurement':<44}{'samples/s':>11}{'MB/s':>9}{'ttfb ms':>9}{'peak RSS MiB':>14}{'(+growth)':>10}"
           f"{'worker MiB':>12}")
    print(hdr)
    print("-" * len(hdr))

    def row(label: str, r: dict[str, Any], sps_key: str = "samples_per_s") -> None:
        print(f"{label:<44}{_f(r.get(sps_key)):>11}{_f(r.get('mb_per_s')):>9}{_f(r.get('ttfb_ms'), '.1f'):>9}"
              f"{_f(r.get('peak_rss_mib')):>14}{_f(r.get('rss_growth_mib'), '+.0f'):>10}"
              f"{_f(r.get('workers_peak_rss_mib')):>12}")

    reused = " (recorded when built)" if ex.get("reused") else ""
    row(f"export, 1 process{reused}", ex)
    mp = med["map"]
    row(f"map-style fresh, cache {mp['cache_limit_mib']:.0f} MiB", mp, "fresh_samples_per_s")
    print(f"{'map-style warm (same dataset, 2nd pass)':<44}{_f(mp['warm_samples_per_s']):>11}")
    row("webdataset .decode() floor", med["webdataset"])
    row("ShardStream, direct, per-sample", med["stream"])
    for nw in (0, 1, 2):
        row(f"StreamLoader num_workers={nw}, batch {c['batch_size']}", med[f"loader_w{nw}"])
    for nw in (0, 2):
        for f in (0, 90):
            r = med[f"resume_w{nw}_{f}"]
            extra = f" ({r['bytes_read_to_first_batch'] / 1024:.0f} KiB read)" if r.get("bytes_read_to_first_batch") is not None else ""
            row(f"resume w{nw} at {f}%{extra}", r)
    row("ShardStream 4x data (1 run)", med["stream_4x"])
    row("StreamLoader num_workers=2, 4x data (1 run)", med["loader_w2_4x"])
    row("cat of the raw shards (warm)", med["cat"])
    row(f"ShardStream, default encoding ({ex['default_bytes'] / max(dd['windows'], 1):,.0f} B/sample)",
        med["stream_default"])
    row("StreamLoader num_workers=2, default encoding", med["loader_w2_default"])
    if "sim_loader_w0" in med:
        sr = d["sim"]
        print(f"sim table (MuJoCo, 2 cameras 96px): {sr['windows']} windows; raw {sr['raw_bytes'] / sr['windows']:,.0f} "
              f"B/sample, default {sr['default_bytes'] / sr['windows']:,.0f} B/sample")
        row("sim: StreamLoader num_workers=0, default enc.", med["sim_loader_w0"])
        row("sim: StreamLoader num_workers=2, default enc.", med["sim_loader_w2"])
    print()
    print(f"export: {ex['samples_per_s']:.0f} windows/s, {ex['mb_per_s']:.1f} MB/s written "
          f"(build {ex['build_s']:.1f} s, export {ex['seconds']:.1f} s){reused}; "
          f"map-style: open {mp['open_s']:.2f} s, fresh hit rate {mp['fresh_hit_rate']:.3f}, "
          f"{mp['cached_episodes']} episodes cached ({mp['cache_mib']:.0f} MiB)")
    rt = d["ratios"]
    print("ratios: " + ", ".join(f"{k} {_f(v, '.3g')}" for k, v in rt.items()))
    print()
    print(f"{'target':<52}{'value':>8}  {'bound':<12}verdict")
    for t in d["targets"]:
        bound = f"{t['op']} {t['bound']:.3g}" if t["op"] != "within" else f"1 +- {t['bound']:.3g}"
        verdict = "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        print(f"{t['name']:<52}{_f(t['value'], '.3g'):>8}  {bound:<12}{verdict}")
    print(f"\nelapsed {d['elapsed_s']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
