"""Self-checking loader state (R7): mismatches fail loudly, wrong-order calls do
what StreamLoader's documentation says, and the audit digests prove what a run saw.

Uses the small export of tests/stream_child.py (394 windows, 9 uneven shards), built once per session.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from stream_child import indices, make_export, make_loader, real, take

import wdspq
from wdspq.cursor import CursorState, set_digest_of
from wdspq.shardfmt import load_manifest

B = 8


@pytest.fixture(scope="module")
def export(small_table, tokenizer_path, tmp_path_factory) -> str:
    return make_export(small_table, tokenizer_path, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def n_windows(export) -> int:
    return load_manifest(export).num_windows


def job(export: str, **kw) -> dict:
    return {**dict(source=export, seed=3, batch_size=B, num_workers=0), **kw}


def saved_after(export: str, n: int, **kw) -> tuple[list[list[int]], dict]:
    """(window_index lists of the first n batches, the JSON round-tripped state after them)."""
    loader = make_loader(job(export, **kw))
    head = indices(take(loader, n))
    return head, json.loads(json.dumps(loader.state_dict()))


def assert_exactly_once(ids: list[int], n: int) -> None:
    dup = [i for i, c in Counter(ids).items() if c > 1]
    assert not dup, f"windows delivered twice: {dup[:10]}"
    assert sorted(ids) == list(range(n)), f"missing windows: {sorted(set(range(n)) - set(ids))[:10]}"


# ----------------------------------------------------------------------------------------------
# mismatches: a clear StateError naming the difference


def test_state_from_another_export_seed_or_spec_is_refused(export, small_table, tokenizer_path,
                                                           tmp_path_factory):
    _, state = saved_after(export, 3)
    root = tmp_path_factory.getbasetemp()
    other_export = make_export(small_table, tokenizer_path, root, seed=4)  # same table and spec, other shuffle
    loader = make_loader(job(other_export))
    with pytest.raises(wdspq.StateError, match="manifest") as e:
        loader.load_state_dict(state)
    assert "window spec" not in str(e.value) and "seed" not in str(e.value)

    loader = make_loader(job(export) | {"seed": 4})
    with pytest.raises(wdspq.StateError, match="seed 3 in the state vs 4 in this stream"):
        loader.load_state_dict(state)

    spec = dict(acts_length_sec=0.5, obs_length_sec=0.5, video_frame_offsets=[-1, 0], stride=6)
    other_spec = make_export(small_table, tokenizer_path, root, spec=spec)
    loader = make_loader(job(other_spec))
    with pytest.raises(wdspq.StateError, match="window spec"):
        loader.load_state_dict(state)

    loader = make_loader(job(export) | {"shuffle": False})
    with pytest.raises(wdspq.StateError, match="shuffle=True in the state vs shuffle=False"):
        loader.load_state_dict(state)
    # a refused state leaves the loader as it was: its own start of epoch 0
    kept = loader.state_dict()
    assert kept["shuffle"] is False and kept["delivered"] == [0] and kept["epoch"] == 0


def test_unusable_states_are_refused_at_load(export):
    """A rank's own state cannot resume another rank or another topology (it needs a merge)."""
    states = []
    for rank in range(2):
        loader = make_loader(job(export, rank=rank, world_size=2))
        take(loader, 2)
        states.append(loader.state_dict())
    rank0 = make_loader(job(export, rank=0, world_size=2))
    with pytest.raises(wdspq.StateError, match="rank 0"):
        rank0.load_state_dict(states[1])
    single = make_loader(job(export))
    with pytest.raises(wdspq.StateError, match="merge"):
        single.load_state_dict(states[0])
    single.load_state_dict(wdspq.merge_states(states))  # the merged one is fine
    with pytest.raises(wdspq.StateError):
        single.load_state_dict({"version": 1})
    with pytest.raises(wdspq.StateError, match="version"):
        single.load_state_dict({**states[0], "version": 99})


def test_state_is_small_plain_json(export):
    """R6: a plain JSON dict of O(shards + slots) numbers; R7: it names manifest, seed, epoch, topology."""
    _, state = saved_after(export, 5, num_workers=2)
    m = load_manifest(export)
    assert state["manifest_id"] == m.id and state["spec_id"] == m.spec_id
    assert state["seed"] == 3 and state["epoch"] == 0
    assert state["topology"] == {"world_size": 1, "num_workers": 2, "batch_size": B, "interleave": 4, "even": "pad"}
    assert len(state["base"]) == len(m.shards) and len(state["delivered"]) == 2
    assert len(json.dumps(state)) < 1000


# ----------------------------------------------------------------------------------------------
# wrong-order calls


def test_save_before_iterating_is_a_start_of_epoch_state(export, n_windows):
    full = indices(take(make_loader(job(export))))
    fresh = make_loader(job(export))
    state = json.loads(json.dumps(fresh.state_dict()))
    assert state["epoch"] == 0 and state["delivered"] == [0] and not state["complete"]
    resumed = make_loader(job(export))
    resumed.load_state_dict(state)
    assert state == json.loads(json.dumps(resumed.state_dict()))  # saving a just-loaded state returns it
    assert indices(take(resumed)) == full
    # the same for a loader told to start at epoch 2 and saved before iterating
    fresh = make_loader(job(export))
    fresh.set_epoch(2)
    state = fresh.state_dict()
    assert state["epoch"] == 2
    resumed = make_loader(job(export))
    resumed.load_state_dict(state)
    epoch2 = indices(take(resumed))
    assert epoch2 != full and sorted(real(epoch2)) == list(range(n_windows))


@pytest.mark.parametrize("persistent", [False, True])
def test_load_while_iterating(export, persistent):
    """The running iteration raises StateError at its next batch; the next iter() continues from the
    loaded state. With persistent workers the old iteration must not consume the new one's batches."""
    kw = dict(num_workers=2, persistent_workers=persistent)
    full = indices(take(make_loader(job(export, **kw))))
    _, s9 = saved_after(export, 9, **kw)
    loader = make_loader(job(export, **kw))
    it = iter(loader)
    head = [next(it)["window_index"].tolist() for _ in range(3)]
    assert head == full[:3]
    loader.load_state_dict(s9)
    it2 = iter(loader)
    first = next(it2)["window_index"].tolist()
    with pytest.raises(wdspq.StateError, match="during this iteration|while this iteration"):
        next(it)
    rest = [first] + [b["window_index"].tolist() for b in it2]
    assert rest == full[9:]
    assert loader.state_dict()["complete"]

    loader = make_loader(job(export, **kw))  # load after iter() began, next batch requested from the old iterator
    it = iter(loader)
    next(it)
    loader.load_state_dict(s9)
    with pytest.raises(wdspq.StateError):
        next(it)
    assert indices(take(loader)) == full[9:]


def test_load_before_the_first_batch_of_an_iterator(export):
    """An iterator that has not produced a batch yet starts from a state loaded after iter()."""
    full = indices(take(make_loader(job(export))))
    _, s4 = saved_after(export, 4)
    loader = make_loader(job(export))
    it = iter(loader)
    loader.load_state_dict(s4)
    assert [b["window_index"].tolist() for b in it] == full[4:]


def test_load_twice_last_wins(export):
    full = indices(take(make_loader(job(export))))
    _, s3 = saved_after(export, 3)
    _, s7 = saved_after(export, 7)
    loader = make_loader(job(export))
    loader.load_state_dict(s3)
    loader.load_state_dict(s7)
    assert len(loader) == len(full) - 7  # len(): what an iter() started now yields
    it = iter(loader)
    rest = [next(it)["window_index"].tolist()]
    assert len(loader) == len(full) - 8
    rest += [b["window_index"].tolist() for b in it]
    assert rest == full[7:]
    assert len(loader) == len(full)  # the epoch is over: the next iter() starts epoch 1
    loader.load_state_dict(s3)  # going back is allowed too: the state says where to continue
    assert indices(take(loader)) == full[3:]


def test_two_consecutive_resumes_same_topology(export):
    """stop, resume, stop, resume: the concatenation is the uninterrupted run, digests included."""
    kw = dict(num_workers=2)
    uninterrupted = make_loader(job(export, **kw))
    full = indices(take(uninterrupted))
    final = uninterrupted.state_dict()
    got, state = saved_after(export, 4, **kw)
    for stop in (11, None):
        loader = make_loader(job(export, **kw))
        loader.load_state_dict(state)
        got += indices(take(loader, None if stop is None else stop - len(got)))
        state = json.loads(json.dumps(loader.state_dict()))
    assert got == full
    assert state["digest"] == final["digest"]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_two_consecutive_elastic_resumes(export, n_windows):
    """(world 1) -> (world 2, two ranks saved and merged) -> (world 1, 3 workers): exactly once, and
    the epoch's set digest equals the uninterrupted run's."""
    uninterrupted = make_loader(job(export))
    take(uninterrupted)
    complete_set = CursorState.from_dict(uninterrupted.state_dict()).total_set_digest()
    assert complete_set == set_digest_of(range(n_windows))

    seen, state = saved_after(export, 6)
    states = []
    for rank, stop in ((0, 5), (1, 5)):
        loader = make_loader(job(export, rank=rank, world_size=2, batch_size=5))
        loader.load_state_dict(state)
        seen += indices(take(loader, stop))
        states.append(loader.state_dict())
    state = json.loads(json.dumps(wdspq.merge_states(states)))
    assert CursorState.from_dict(state).total_set_digest() == set_digest_of(real(seen))
    loader = make_loader(job(export, num_workers=3))
    loader.load_state_dict(state)
    seen += indices(take(loader))
    assert_exactly_once(real(seen), n_windows)
    end = CursorState.from_dict(loader.state_dict())
    assert end.complete and end.total_set_digest() == complete_set


def test_complete_state_never_replays(export):
    """A state saved after the last batch resumes to nothing in that epoch, then the next epoch."""
    uninterrupted = make_loader(job(export))
    epoch0 = indices(take(uninterrupted))
    state = uninterrupted.state_dict()
    assert state["complete"] and state["epoch"] == 0
    epoch1 = indices(take(uninterrupted))  # implicit advance
    resumed = make_loader(job(export))
    resumed.load_state_dict(state)
    got = []
    for epoch in range(state["epoch"], 2):
        resumed.set_epoch(epoch)
        got.append(indices(take(resumed)))
    assert got == [[], epoch1] and epoch1 != epoch0


# ----------------------------------------------------------------------------------------------
# set_epoch


@pytest.mark.parametrize("persistent", [False, True])
def test_set_epoch_mid_epoch(export, persistent):
    """set_epoch(other) starts that epoch from its beginning in every worker; set_epoch(current) keeps
    the position (the documented restart loop)."""
    kw = dict(num_workers=2, persistent_workers=persistent)
    ref = make_loader(job(export, **kw))
    ref.set_epoch(1)
    epoch1 = indices(take(ref))
    loader = make_loader(job(export, **kw))
    head = indices(take(loader, 5))
    loader.set_epoch(0)
    rest0 = indices(take(loader, 2))
    loader.set_epoch(1)
    assert indices(take(loader)) == epoch1
    assert head + rest0 != epoch1[:7]
    full0 = indices(take(make_loader(job(export, **kw)), 7))
    assert head + rest0 == full0


# ----------------------------------------------------------------------------------------------
# audit digests


def test_digests_prove_same_data(export):
    a = make_loader(job(export))
    b = make_loader(job(export))
    take(a)
    take(b)
    assert a.state_dict()["digest"] == b.state_dict()["digest"]
    c = make_loader(job(export, num_workers=2))  # another topology: another order, the same set
    take(c)
    assert c.state_dict()["digest"]["set"] == a.state_dict()["digest"]["set"]
    assert c.state_dict()["digest"]["ordered"] != a.state_dict()["digest"]["ordered"]
    d = make_loader(job(export) | {"seed": 4})
    take(d, 3)
    assert d.state_dict()["digest"]["set"] != a.state_dict()["digest"]["set"]
    # a resumed run (same topology) reports the uninterrupted run's digests at every point
    head = make_loader(job(export))
    take(head, 10)
    resumed = make_loader(job(export))
    resumed.load_state_dict(head.state_dict())
    take(resumed, 5)
    straight = make_loader(job(export))
    take(straight, 15)
    assert resumed.state_dict()["digest"] == straight.state_dict()["digest"]
