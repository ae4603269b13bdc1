#!/usr/bin/env python
"""Epoch order figures, side by side in one run (`python tools/bench.py --epoch-order` runs this).

  batch-mates  pairs repeated from epoch 0 to epoch 1, sequential vs block order (tools/batchmates.py);
  local raw    warm `cat` of a raw export vs ShardStream over it (one epoch, block and sequential order),
               medians of alternating rounds: MB/s of shard data;
  S3           the same export on a local S3 server (tools/s3_server.py, moto): bytes fetched by one
               epoch of StreamLoader / the shard bytes, block and sequential order; and the same for
               an export in the default encoding (shared frames);
  one shard    the sim table (MuJoCo, 960 windows; a synthetic table when MuJoCo cannot render) exported
               as one shard with the default encoding: StreamLoader over 5 epochs with persistent
               workers, num_workers=2 vs 0, block and sequential order; the same table in ten shards,
               sequential order, is the control (1.5x on an idle 2-core machine): on a loaded machine
               neither reaches that, and the control says how far the load alone pulls the ratio down.

Exports already in --work are reused only when they are of the current configuration, window rules and
shard format (else rebuilt). `--only local` runs only the local raw figures.

    .venv/bin/python tools/bench_epoch.py [--work /tmp/wdspq-bench-epoch] [--rounds 3] [--json out.json]
                                          [--only batchmates|local|one-shard|s3 ...]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MUJOCO_GL", "egl")

import batchmates  # noqa: E402

from wdspq.cursor import Topology  # noqa: E402
from wdspq.stream import ShardStream, StreamLoader  # noqa: E402

PARTS = ("batchmates", "local", "one-shard", "s3")
TARGETS = {"stream_vs_cat": 0.5, "s3_bytes_vs_shards": 1.1, "one_shard_w2_vs_w0": 1.3, "s3_default": 1.2}
ORDERS = ("block", "sequential")


def _export(table: Path, out: Path, spec: Any, encoding: Any, per_shard: int) -> dict[str, Any]:
    """The export of `table` in `out`: an export already there is reused only when it is intact and of this
    configuration, which includes the window rules and shard format versions (export_shards checks its
    config digest), so an export cut by older rules or code is rebuilt, never measured."""
    from wdspq.export import export_shards
    from wdspq.text import bundled_bert_uncased_path

    return export_shards(table, out, spec, tokenizer=bundled_bert_uncased_path(), samples_per_shard=per_shard,
                         seed=0, progress=False, encoding=encoding, overwrite=True)


def prepare(work: Path, episodes: int, one_shard: bool = True) -> dict[str, Any]:
    """The synthetic table's raw export (many shards) and (`one_shard`) a one-shard export of the sim table."""
    from wdspq.build import build_sim, build_synthetic
    from wdspq.shardfmt import DEFAULT_ENCODING, RAW
    from wdspq.windows import WindowSpec

    work.mkdir(parents=True, exist_ok=True)
    table = work / f"synthetic-{episodes}.parquet"
    if not table.exists():
        build_synthetic(table, episodes=episodes, seconds=8.0, image_size=64, video_size=96, seed=0, progress=False)
    spec = WindowSpec(acts_length_sec=1.0, obs_length_sec=1.0, video_frame_offsets=[-2, -1, 0], stride=4)
    raw = work / f"raw-{episodes}"
    _export(table, raw, spec, RAW, 200)
    if not one_shard:
        return {"table": table, "spec": spec, "raw": raw}
    sim, one_kind = work / "sim.parquet", "sim"
    try:
        if not sim.exists():
            build_sim(sim, episodes=16, seconds=5.0, video_size=96, progress=False)
        one_spec = WindowSpec(acts_length_sec=1.0, obs_length_sec=1.0, video_frame_offsets=[-2, -1, 0], stride=1)
        one = work / "sim-one-shard"
        n = int(_export(sim, one, one_spec, DEFAULT_ENCODING, 10**6)["num_windows"])
        _export(sim, work / "sim-ten-shards", one_spec, DEFAULT_ENCODING, -(-n // 10))
    except Exception as e:  # no MuJoCo rendering here: a synthetic table of about 1,000 windows
        print(f"sim table unavailable ({type(e).__name__}: {e}); using a synthetic table", flush=True)
        one_kind, one = "synthetic", work / "synthetic-one-shard"
        one_spec = WindowSpec(acts_length_sec=1.0, obs_length_sec=1.0, video_frame_offsets=[-2, -1, 0],
                              stride=max(1, 4 * episodes // 12))
        n = int(_export(table, one, one_spec, DEFAULT_ENCODING, 10**6)["num_windows"])
        _export(table, work / "synthetic-ten-shards", one_spec, DEFAULT_ENCODING, -(-n // 10))
    return {"table": table, "spec": spec, "raw": raw, "one": one, "one_kind": one_kind,
            "ten": work / f"{one_kind}-ten-shards"}


def epoch_mb_s(source: str, order: str) -> tuple[float, float]:
    """ShardStream iterated directly for one epoch: MB/s of shard data per wall second and per CPU second
    (the second is what a loaded machine distorts least). The garbage of earlier rounds is collected before
    the clock starts (as `timeit` does): otherwise a collection of the previous round's stream lands in this one."""
    m = json.loads((Path(source) / "manifest.json").read_text())
    nbytes = sum(int(s["bytes"]) for s in m["shards"])
    stream = ShardStream(source, seed=0, shard_order=order)
    gc.collect()
    t, c = time.perf_counter(), time.process_time()
    for _ in stream:
        pass
    return nbytes / 1e6 / (time.perf_counter() - t), nbytes / 1e6 / (time.process_time() - c)


def cat_mb_s(source: str) -> tuple[float, float]:
    """Warm `cat` of the export's shards: MB/s per wall second and per CPU second (user + system)."""
    m = json.loads((Path(source) / "manifest.json").read_text())
    files = [str(Path(source) / s["name"]) for s in m["shards"]]
    subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)
    r0, t = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)
    dt, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    mb = sum(int(s["bytes"]) for s in m["shards"]) / 1e6
    return mb / dt, mb / max(cpu, 1e-6)


def loader_samples_s(source: str, order: str, workers: int, epochs: int = 5) -> float:
    """StreamLoader(batch 32) over `epochs` epochs, persistent workers: samples/s (worker start-up included)."""
    loader = StreamLoader(ShardStream(source, seed=0, shard_order=order), batch_size=32, num_workers=workers,
                          persistent_workers=workers > 0)
    n, t = 0, time.perf_counter()
    for e in range(epochs):
        loader.set_epoch(e)
        for b in loader:
            n += len(b["window_index"])
    return n / (time.perf_counter() - t)


def s3_bytes(table: Path, spec: Any, encoding: Any = None) -> dict[str, Any]:
    """Bytes fetched by one epoch from a local S3 server, per order, over the shard bytes (client-side count
    of every ranged GET's body); `encoding`: the export's (default: raw records)."""
    import importlib.util

    import boto3

    from wdspq import storage
    from wdspq.export import export_shards
    from wdspq.shardfmt import RAW
    from wdspq.text import bundled_bert_uncased_path

    spec_mod = importlib.util.spec_from_file_location("wdspq_tools_s3_server", ROOT / "tools" / "s3_server.py")
    s3 = importlib.util.module_from_spec(spec_mod)
    spec_mod.loader.exec_module(s3)  # type: ignore[union-attr]
    for k, v in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(k, v)
    out: dict[str, Any] = {}
    with s3.local_s3_server() as endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        bucket = f"wdspq-bench-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        url = f"s3://{bucket}/shards"
        m = export_shards(table, url, spec, tokenizer=bundled_bert_uncased_path(), samples_per_shard=200, seed=0,
                          progress=False, encoding=encoding or RAW)
        shard_bytes = sum(int(s["bytes"]) for s in m["shards"])
        readers: list[Any] = []
        original = storage.S3Storage.open_read

        def counting(self: Any, name: str, *a: Any, **kw: Any) -> Any:
            f = original(self, name, *a, **kw)
            if name.endswith(".tar"):
                readers.append(f)
            return f

        storage.S3Storage.open_read = counting  # type: ignore[method-assign]
        try:
            for order in ORDERS:
                readers.clear()
                n = sum(len(b["window_index"]) for b in StreamLoader(ShardStream(url, seed=0, shard_order=order),
                                                                     batch_size=32, num_workers=0))
                got = sum(int(f.bytes_read) for f in readers)
                out[order] = {"samples": n, "bytes_fetched": got, "gets": len(readers),
                              "vs_shard_bytes": got / shard_bytes}
        finally:
            storage.S3Storage.open_read = original  # type: ignore[method-assign]
        out["shard_bytes"], out["shards"] = shard_bytes, len(m["shards"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/wdspq-bench-epoch")
    ap.add_argument("--episodes", type=int, default=8, help="synthetic table episodes (~8 s each)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", dest="json_path")
    ap.add_argument("--only", choices=PARTS, action="append",
                    help="run only these parts (repeatable; default: all): " + ", ".join(PARTS))
    args = ap.parse_args(argv)
    parts = set(args.only or PARTS)
    t0 = time.perf_counter()
    res: dict[str, Any] = {"loadavg_start": os.getloadavg()}

    checks: list[tuple[str, float, str, float]] = []
    bm: dict[str, dict[str, float]] = {}
    if "batchmates" in parts:
        print("batch-mate pairs repeated from epoch 0 to 1 (pure plan; block order at the sim table's 17.8 kB/sample):")
    for name, shards, n, topo in (("24x200", 24, 200, Topology(num_workers=2, batch_size=16, interleave=4)),
                                  ("1000x1000", 1000, 1000, Topology(num_workers=8, batch_size=64, interleave=4))):
        if "batchmates" not in parts:
            break
        bm[name] = {o: batchmates.repeat_rate([n] * shards, 17_800, topo, o) for o in ORDERS}
        print(f"  {name}: sequential {bm[name]['sequential']:.2%}, block {bm[name]['block']:.2%}")
    if bm:
        res["batchmates"] = bm
        checks += [("batch-mates 24x200 (block)", bm["24x200"]["block"], "<=", 0.02),
                   ("batch-mates 1000x1000 (block)", bm["1000x1000"]["block"], "<=", 0.01)]
    if parts - {"batchmates"}:
        data = prepare(Path(args.work), args.episodes, one_shard="one-shard" in parts)
    if "local" in parts:
        local, local_cpu = _local(str(data["raw"]), args.rounds)
        res["local_raw_mb_s"], res["local_raw_mb_per_cpu_s"] = local, local_cpu
        checks += [("ShardStream raw / warm cat (block)", local["block"] / local["cat"], ">=", TARGETS["stream_vs_cat"]),
                   ("same, per CPU second (load-robust)", local_cpu["block"] / local_cpu["cat"], ">=",
                    TARGETS["stream_vs_cat"])]
    if "one-shard" in parts:
        one_res = _one_shard(data, args.rounds)
        res["one_shard"] = one_res
        checks += [("one shard: w2 / w0 (block)", one_res["block_w2"] / one_res["block_w0"], ">=",
                    TARGETS["one_shard_w2_vs_w0"]),
                   ("control, ten shards: w2 / w0 (sequential)",
                    one_res["ten-sequential_w2"] / one_res["ten-sequential_w0"], ">=", TARGETS["one_shard_w2_vs_w0"])]
    if "s3" in parts:
        from wdspq.shardfmt import DEFAULT_ENCODING

        for label, enc, bound in (("raw", None, TARGETS["s3_bytes_vs_shards"]),
                                  (f"default, {DEFAULT_ENCODING.layout}", DEFAULT_ENCODING, TARGETS["s3_default"])):
            s3 = s3_bytes(data["table"], data["spec"], enc)
            res["s3" if enc is None else "s3_default"] = s3
            print(f"S3 {label} (local moto server, {s3['shards']} shards, {s3['shard_bytes'] / 1e6:.1f} MB): bytes "
                  "fetched per epoch / shard bytes: " + ", ".join(f"{o} {s3[o]['vs_shard_bytes']:.3f} ({s3[o]['gets']} GETs)"
                                                                  for o in ORDERS))
            checks.append((f"S3 bytes per epoch / shard bytes ({label})", s3["block"]["vs_shard_bytes"], "<=", bound))
    res["targets"] = [{"name": n, "value": v, "op": op, "bound": b, "pass": v <= b if op == "<=" else v >= b}
                      for n, v, op, b in checks]
    res["loadavg_end"] = os.getloadavg()
    res["elapsed_s"] = time.perf_counter() - t0
    print()
    for t in res["targets"]:
        print(f"{t['name']:<44}{t['value']:>8.3f}  {t['op']} {t['bound']:<6g}{'PASS' if t['pass'] else 'FAIL'}")
    print(f"load {res['loadavg_start'][0]:.2f} -> {res['loadavg_end'][0]:.2f}; elapsed {res['elapsed_s']:.0f} s")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(res, indent=1, default=str))
    return 0


def _local(raw: str, rounds_n: int) -> tuple[dict[str, float], dict[str, float]]:
    """Alternating rounds of warm cat and one epoch per order; medians of MB per wall and per CPU second."""
    rounds: dict[str, list[tuple[float, float]]] = {"cat": [], "block": [], "sequential": []}
    for _ in range(rounds_n):
        rounds["cat"].append(cat_mb_s(raw))
        for o in ORDERS:
            rounds[o].append(epoch_mb_s(raw, o))
    local = {k: statistics.median(x[0] for x in v) for k, v in rounds.items()}
    local_cpu = {k: statistics.median(x[1] for x in v) for k, v in rounds.items()}
    for label, f in (("wall", local), ("CPU", local_cpu)):
        print(f"local raw export, MB per {label} second: cat {f['cat']:.0f}, ShardStream block {f['block']:.0f} "
              f"({f['block'] / f['cat']:.2f} of cat), sequential {f['sequential']:.0f} ({f['sequential'] / f['cat']:.2f})")
    return local, local_cpu


def _one_shard(data: dict[str, Any], rounds_n: int) -> dict[str, Any]:
    """StreamLoader samples/s, num_workers 2 vs 0, on the one-shard export (both orders) and the ten-shard control."""
    one = str(data["one"])
    m = json.loads((Path(one) / "manifest.json").read_text())
    sps: dict[str, list[float]] = {f"{o}_w{w}": [] for o in (*ORDERS, "ten-sequential") for w in (0, 2)}
    for _ in range(rounds_n):
        for k in sps:
            o, w = k.rsplit("_w", 1)
            src = str(data["ten"]) if o.startswith("ten") else one
            sps[k].append(loader_samples_s(src, o.removeprefix("ten-"), int(w)))
    one_res = {k: statistics.median(v) for k, v in sps.items()}
    print(f"one-shard {data['one_kind']} export ({m['num_windows']} windows), 5 epochs, persistent workers: "
          + ", ".join(f"{o}: w2/w0 {one_res[o + '_w2'] / one_res[o + '_w0']:.2f}x "
                      f"({one_res[o + '_w0']:.0f} -> {one_res[o + '_w2']:.0f} samples/s)"
                      for o in (*ORDERS, "ten-sequential")))
    return {"kind": data["one_kind"], "windows": m["num_windows"], "shards": len(m["shards"]), **one_res}


if __name__ == "__main__":
    sys.exit(main())
