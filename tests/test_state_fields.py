"""Edited loader states are refused: non-integer counts, and a `complete` the counts do not support.

Before, `delivered: 160.5` was read as 160 and a hand-set `complete: true` made the stream skip the
rest of the epoch without a word.
"""

from __future__ import annotations

import json
import re

import pytest
from stream_child import indices, make_export, make_loader, take

import wdspq
from wdspq.cursor import CursorState, Topology, new_epoch_state, resume

B = 8


@pytest.fixture(scope="module")
def export(small_table, tokenizer_path, tmp_path_factory) -> str:
    return make_export(small_table, tokenizer_path, tmp_path_factory.getbasetemp())


def job(export: str, **kw) -> dict:
    return {**dict(source=export, seed=3, batch_size=B, num_workers=0), **kw}


def saved_after(export: str, n: int) -> dict:
    loader = make_loader(job(export))
    take(loader, n)
    return json.loads(json.dumps(loader.state_dict()))


@pytest.mark.parametrize("field, value, name", [
    ("delivered", [160.5], "delivered[0]"),
    ("delivered", ["16"], "delivered[0]"),
    ("delivered", [True], "delivered[0]"),
    ("epoch", 0.5, "epoch"),
    ("seed", "3", "seed"),
    ("base", "first", None),
])
def test_non_integer_fields_are_refused(export, field, value, name):
    state = saved_after(export, 2)
    if field == "base":
        state["base"] = [1.5] + state["base"][1:]
        name = "base[0]"
    else:
        state[field] = value
    loader = make_loader(job(export))
    with pytest.raises(wdspq.StateError, match=rf"state field '{re.escape(name)}' is .*expected an integer"):
        loader.load_state_dict(state)
    with pytest.raises(wdspq.StateError, match=re.escape(f"'{name}'")):
        CursorState.from_dict(state)


def test_integral_floats_are_read_as_integers(export):
    """A JSON tool that writes every number as a float (16.0) does not break a resume."""
    state = saved_after(export, 2)
    floats = dict(state, delivered=[float(d) for d in state["delivered"]], epoch=float(state["epoch"]))
    want = indices(take(_loaded(export, state)))
    assert indices(take(_loaded(export, floats))) == want


def _loaded(export: str, state: dict):
    loader = make_loader(job(export))
    loader.load_state_dict(state)
    return loader


def test_hand_set_complete_is_refused(export):
    state = saved_after(export, 2)
    assert not state["complete"]
    edited = dict(state, complete=True)
    with pytest.raises(wdspq.StateError, match=r"'complete' is true but slot 0 delivered 16 of its \d+ entries"):
        make_loader(job(export)).load_state_dict(edited)
    with pytest.raises(wdspq.StateError, match="'complete' is 'yes', expected true or false"):
        CursorState.from_dict(dict(state, complete="yes"))
    # a genuinely finished epoch keeps loading, and resumes to nothing
    loader = make_loader(job(export))
    take(loader)
    done = json.loads(json.dumps(loader.state_dict()))
    assert done["complete"]
    resumed = _loaded(export, done)
    resumed.set_epoch(done["epoch"])
    assert indices(take(resumed)) == []


def test_complete_is_checked_against_the_plan():
    topo = Topology(world_size=1, num_workers=2, batch_size=4, interleave=1, even="pad")
    st = new_epoch_state("m", "s", 0, True, 0, 3, topo)
    sizes = [10, 7, 5]
    resume(st, sizes, topo)  # fresh: fine
    st.complete = True
    with pytest.raises(wdspq.StateError, match="'complete' is true but slot 0 delivered 0 of its"):
        resume(st, sizes, topo)
    with pytest.raises(wdspq.StateError, match="'complete' is true"):  # also on an elastic resume
        resume(st, sizes, Topology(world_size=1, num_workers=1, batch_size=4, interleave=1, even="pad"))
