"""Exact resume (R3) of a weighted mixture in a fresh process at the save points that matter for its passes:
exactly where one source's pass ends (found from the schedule), at the end of an epoch (the next epoch
continues every source's pass sequence), and with all three sources on the S3 test server behind a proxy
that drops connections, in the saving and in the resuming process (docs/mixtures.md "Resume").

The sources are tests/test_mixture.py's (strides 3, 5 and 9 of the shared small table: 394, 238 and 133
windows); the expected batches are those of an uninterrupted run, and the states' audit digests must agree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mixture_child import pairs
from stream_child import SPEC, make_export

import wdspq
from wdspq.cursor import Plan, Topology

HERE = Path(__file__).resolve().parent
WEIGHTS = (0.6, 0.3, 0.1)
STRIDES = (3, 5, 9)


@pytest.fixture(scope="module")
def exports(small_table, tokenizer_path, tmp_path_factory) -> list[str]:
    root = tmp_path_factory.getbasetemp()  # the same exports as test_mixture.py (make_export caches them)
    return [make_export(small_table, tokenizer_path, root, spec={**SPEC, "stride": s}, samples_per_shard=40)
            for s in STRIDES]


def make(srcs: list[Any], spe: int, batch_size: int, workers: int, seed: int = 0, opts: Any = None) -> wdspq.StreamLoader:
    sources = [wdspq.Source(p, weight=w) for p, w in zip(srcs, WEIGHTS)]
    stream = wdspq.ShardStream(sources, seed=seed, samples_per_epoch=spe, storage_options=opts)
    return wdspq.StreamLoader(stream, batch_size=batch_size, num_workers=workers)


def take(loader: wdspq.StreamLoader, n: int | None = None) -> list[list[list[int]]]:
    out: list[list[list[int]]] = []
    if n == 0:
        return out
    for b in loader:
        out.append(pairs(b))
        if n is not None and len(out) == n:
            break
    return out


def child(job: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """Resume `job["state"]` in a fresh process (tests/mixture_child.py); its batches and final state."""
    jp, out = tmp_path / "job.json", tmp_path / "out.json"
    jp.write_text(json.dumps(job))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, str(HERE / "mixture_child.py"), "resume", str(jp), str(out)], check=True, env=env)
    return json.loads(out.read_text())


def job_of(srcs: list[str], spe: int, batch_size: int, workers: int, state: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"sources": [[p, w, {}] for p, w in zip(srcs, WEIGHTS)], "samples_per_epoch": spe, "seed": 0,
            "batch_size": batch_size, "num_workers": workers, "state": state, **kw}


def pass_boundary_save_point(stream: Any, workers: int, sizes=range(4, 17)) -> tuple[int, int, int, int, list[int]]:
    """(source, batch size, batches to run, position, per-slot delivered counts) of a save point that lies
    exactly where a source's first pass ends in epoch 0: the last sample of the pass is the last sample of a
    batch. Batches are dealt to the workers in delivery order (docs/mixtures.md), so the first `cut` batches
    are the schedule's first ``cut x B`` positions and the save point follows from the schedule alone."""
    slots = max(1, workers)
    for B in sizes:
        for j, r in enumerate(stream.readers):
            if stream.counts[j] < r.n:
                continue  # no pass of this source ends in epoch 0
            g = int(stream.sched.where[j][r.n - 1]) + 1  # positions up to and including the pass's last sample
            if g % B:
                continue
            cut = g // B
            return j, B, cut, g, [B * len(range(t, cut, slots)) for t in range(slots)]
    raise AssertionError("no save point at a pass boundary for these batch sizes")


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume_in_a_fresh_process_exactly_at_a_pass_boundary(exports, tmp_path, workers) -> None:
    spe = 1000
    stream = wdspq.ShardStream([wdspq.Source(p, weight=w) for p, w in zip(exports, WEIGHTS)], seed=0,
                               samples_per_epoch=spe)
    j, B, cut, g, delivered = pass_boundary_save_point(stream, workers)
    ld = make(exports, spe, B, workers)
    full = take(ld)
    full_state = ld.state_dict()
    ld = make(exports, spe, B, workers)
    head = take(ld, cut)
    assert head == full[:cut]
    st = ld.state_dict()
    assert st["delivered"] == delivered and not st["complete"]
    n = stream.readers[j].n
    # with any number of workers the head is the schedule's first g positions: pass 0 of source j whole
    seen = [w for b in head for s, w in b if s == j]
    assert len(seen) == n and len(set(seen)) == n
    nxt = next(w for b in full[cut:] for s, w in b if s == j)
    first_of_pass_1 = stream.readers[j].codec.record_array(next(stream.readers[j].records(n, n + 1)))
    assert nxt == int(first_of_pass_1["window_index"])
    got = child(job_of(exports, spe, B, workers, st), tmp_path)
    assert got["batches"] == full[cut:], (j, B, cut, g)
    assert got["state"]["complete"] and got["state"]["digest"] == full_state["digest"]


def test_exact_resume_at_the_end_of_an_epoch_continues_the_next_epoch(exports, tmp_path) -> None:
    spe, B, workers = 1000, 8, 2
    ld = make(exports, spe, B, workers)
    epoch0 = take(ld)
    at_end = ld.state_dict()
    epoch1 = take(ld)  # iter() after a finished epoch moves to the next one
    assert at_end["complete"] and at_end["epoch"] == 0 and ld.state_dict()["epoch"] == 1
    stream = ld.stream
    # epoch 1 continues every source's pass sequence (sources 0 and 1 are in their second pass)
    assert [c * 2 // r.n for c, r in zip(stream.counts, stream.readers)] == [3, 2, 1]
    got = child(job_of(exports, spe, B, workers, at_end, epochs=2), tmp_path)
    assert got["batches"] == epoch1 and epoch1 != epoch0
    assert got["state"]["epoch"] == 1 and got["state"]["digest"] == ld.state_dict()["digest"]


def _upload(folder: str, url: str) -> None:
    """Copy an export folder to `url` (s3://bucket/prefix) as it is: the same manifest, the same shards."""
    import boto3

    bucket, prefix = url[len("s3://"):].split("/", 1)
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    for name in sorted(os.listdir(folder)):
        client.upload_file(os.path.join(folder, name), bucket, f"{prefix}/{name}")


def read_from(proxy: Any) -> set[str]:
    """The sources whose shards were read through the proxy."""
    return {name for name in ("pick", "drawer", "aloha") for r in proxy.gets(".tar") if f"/{name}/" in r.target}


def dropped(proxy: Any) -> int:
    """Responses the proxy cut short (a drop fault that hit a longer response)."""
    return sum(r.fault is not None and r.response_bytes == r.fault.after for r in proxy.requests)


def test_three_sources_on_s3_with_dropped_connections_resume_in_a_fresh_process(exports, s3_bucket, fault_proxy,
                                                                               tmp_path) -> None:
    remote = []
    for name, folder in zip(("pick", "drawer", "aloha"), exports):
        url = f"{s3_bucket.rstrip('/')}/{name}"
        _upload(folder, url)
        remote.append(url)
    opts = {"endpoint_url": fault_proxy.endpoint_url, "backoff": 0.01, "max_retries": 3, "read_timeout": 10.0}
    spe, B, workers = 600, 8, 2
    reference = take(make(exports, spe, B, workers))  # the same exports read locally, uninterrupted
    fault_proxy.clear_requests()
    for n in (900, 600, 1_000, 800):  # below every ranged response here (>= 1.1 kB): each one cuts
        fault_proxy.drop_after(n, target=".tar")
    ld = make(remote, spe, B, workers, opts=opts)
    head = take(ld, 13)
    st = ld.state_dict()
    assert head == reference[:13]
    assert read_from(fault_proxy) == {"pick", "drawer", "aloha"} and dropped(fault_proxy) == 4
    fault_proxy.clear_faults()
    fault_proxy.clear_requests()
    for n in (700, 950, 850):
        fault_proxy.drop_after(n, target=".tar")
    got = child(job_of(remote, spe, B, workers, st, storage_options=opts), tmp_path)
    assert head + got["batches"] == reference
    assert read_from(fault_proxy) == {"pick", "drawer", "aloha"}
    assert dropped(fault_proxy) == 3  # the resumed process met every drop and retried


def deliver(plan: Any, steps: int | None = None) -> tuple[list[int], list[int]]:
    """Real positions the loaders of `plan` deliver in their first `steps` steps (all: None), step by step and
    rank by rank (ranks step together), and the per-slot counts delivered (pads included)."""
    W, N = plan.topology.world_size, plan.topology.workers
    entries = [plan.slot_arrays(slot) for slot in range(W * N)]
    at = [0] * (W * N)
    orders = [plan.batch_order(r) for r in range(W)]
    out: list[int] = []
    for t in range(max(len(o) for o in orders) if steps is None else steps):
        for r in range(W):
            if t < len(orders[r]):
                w, n = orders[r][t]
                slot = r * N + w
                _, pos, pad = (x[at[slot]:at[slot] + n] for x in entries[slot])
                out.extend(pos[~pad].tolist())
                at[slot] += n
    return out, at


topologies = st.builds(lambda w, n, b, i, e: Topology(world_size=w, num_workers=n, batch_size=b, interleave=i, even=e),
                       st.integers(1, 3), st.integers(0, 3), st.integers(1, 17), st.integers(1, 4),
                       st.sampled_from(["pad", "drop", "none"]))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(T=st.integers(1, 2500), a=topologies, b=topologies, frac=st.floats(0, 1))
def test_batches_are_delivered_in_the_schedules_order_for_any_topology_and_elastic_resume(T, a, b, frac) -> None:
    """The mixture's plan ("batches"): the batches of all ranks and workers, step by step and rank by rank, are the
    epoch's positions in order, also when a save at any step resumes under another topology (R4), so one
    source's samples arrive in its sequence's order and its passes whole, one after the other. Interleave is
    ignored (it would mix two batches); `even="drop"` leaves out a tail, never a position in the middle."""
    plan = Plan([T], [0], [0], a, (), "batches", [1])
    steps = int(frac * min(plan.rank_batches(r) for r in range(a.world_size)))
    head, delivered = deliver(plan, steps)
    base, consumed = plan.fold(delivered)
    rest = Plan([T], base, [0], b, consumed, "batches", [1])
    tail, _ = deliver(rest)
    seq = head + tail
    assert seq == list(range(len(seq)))
    if b.even != "drop":
        assert len(seq) == T
    assert consumed == []  # a save at a step boundary is a prefix: the state stays O(1), not O(slots)


def test_a_state_from_the_uneven_mixture_plan_is_refused_clearly(exports) -> None:
    """Mixture states saved under an earlier plan of the epoch (the block split: uneven pieces per worker; one
    contiguous stretch per worker; units read as shards) cannot continue exactly under the batches dealt in
    delivery order: a StateError that says so, not a silently different order."""
    from wdspq.errors import StateError

    ld = make(exports, 600, 8, 0)
    take(ld, 3)
    state = ld.state_dict()
    assert state["shard_order"] == "batches"
    for old in ("block", "contiguous", "sequential"):
        with pytest.raises(StateError, match="earlier wdspq.*start the epoch afresh"):
            make(exports, 600, 8, 0).load_state_dict({**state, "shard_order": old})


@pytest.mark.parametrize("spe", [601, 14_899])
def test_workers_of_a_mixture_read_equal_shares_of_an_odd_epoch(exports, spe) -> None:
    """The throughput rule: with 2 workers each reads half the epoch, within one batch (the block split gave
    one of them two of three pieces, 2/3 of the work, so the mixture did not speed up with workers)."""
    from wdspq.cursor import resume

    ld = make(exports, spe, 8, 2)
    r = resume(ld.stream.fresh_state(0, ld.topology), ld.stream.shard_sizes, ld.topology, 0, ld.stream._blocks)
    counts = [r.plan.slot_real_count(s) for s in range(2)]
    assert sum(counts) == spe and abs(counts[0] - counts[1]) <= 8
    assert sum(1 for _ in ld) == len(ld)


def test_a_state_without_its_mixture_entry_still_checks_the_pass_order(exports) -> None:
    # a state without its "mixture" entry is checked by the virtual manifest id alone (docs/mixtures.md "Resume"),
    # so the id must tell a mixture read in another pass order (shuffle, shard_order) from this one
    def loader(**kw: Any) -> wdspq.StreamLoader:
        sources = [wdspq.Source(p, weight=w) for p, w in zip(exports, WEIGHTS)]
        return wdspq.StreamLoader(wdspq.ShardStream(sources, samples_per_epoch=300, **kw), batch_size=8)

    ld = loader()
    take(ld, 2)
    stripped = {k: v for k, v in ld.state_dict().items() if k != "mixture"}
    for kw in ({"shuffle": False}, {"shard_order": "sequential"}):
        with pytest.raises(wdspq.StateError):
            loader(**kw).load_state_dict(stripped)
    loader().load_state_dict(stripped)
