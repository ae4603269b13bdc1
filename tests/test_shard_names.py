"""The shard format owns its names, its manifest's layout and tar walking (wdspq/shardfmt/): the name
rules round-trip, a window is found where the export put it, and no module outside shardfmt spells a
shard name, parses one, or walks a tar."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from wdspq.errors import WdspqError
from wdspq.shardfmt.names import (
    index_name,
    is_export_file,
    locate_window,
    parse_shard_index,
    shard_assignment,
    shard_name,
)

PACKAGE = Path(__file__).resolve().parent.parent / "wdspq"


def test_names_round_trip():
    assert shard_name(12) == "shard-000012.tar"
    assert index_name(12) == index_name("shard-000012.tar") == "shard-000012.idx.npy"
    assert [parse_shard_index(shard_name(i)) for i in (0, 7, 999_999)] == [0, 7, 999_999]
    for other in ("shard-000012.idx.npy", "shard-12.tar", "xshard-000012.tar", "manifest.json", ".shard-000001.tar.tmp-1"):
        assert parse_shard_index(other) is None, other
    assert is_export_file("shard-000003.tar") and is_export_file("shard-000003.idx.npy")
    assert not is_export_file("samples.zdict") and not is_export_file(".shard-000003.tar.tmp-9-ab")


@pytest.mark.parametrize("shuffle", [True, False])
def test_locate_window_finds_each_window_where_the_assignment_put_it(shuffle):
    n, per, seed = 53, 10, 4
    manifest = {"num_windows": n, "samples_per_shard": per, "seed": seed, "shuffle": shuffle}
    shards = shard_assignment(n, per, seed, shuffle)
    for w in range(n):
        s, pos = locate_window(manifest, w)
        assert int(shards[s][pos]) == w
    assert sorted(np.concatenate(shards).tolist()) == list(range(n))
    with pytest.raises(WdspqError, match="out of range"):
        locate_window(manifest, n)


def _outside_shardfmt() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if "shardfmt" not in p.relative_to(PACKAGE).parts]


def test_no_module_outside_shardfmt_spells_parses_or_walks_shards():
    spelled = re.compile(r"""["']shard-|\[6:12\]|INDEX_SUFFIX|^\s*import tarfile|^\s*from tarfile""", re.M)
    offenders = [f"{p.relative_to(PACKAGE)}: {m.group(0).strip()}"
                 for p in _outside_shardfmt() for m in spelled.finditer(p.read_text(encoding="utf-8"))]
    assert offenders == []
