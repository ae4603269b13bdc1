"""`EpisodeSource`: a table's episodes, decoded, and the windows cut from them, as numpy (no torch).

The one reader of episodes for the map-style dataset (`ParquetWindowDataset`, a torch front over this
class), the exporter, `verify --table` and the pictures. It reads one row group at a time through the
checked page reads of `file`, decodes camera clips and images, keeps decoded episodes and their row
groups in one LRU bounded by bytes per process, and cuts window i with `windows.cut_window` in
canonical order (`WindowIndex`).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import SchemaError
from ..media import decode_image, decode_video
from ..offsets import episode_infos
from ..text import load_tokenizer, tokenize, tokenizer_identity
from ..windows import CameraClip, EpisodeArrays, WindowIndex, WindowSpec, cut_window, sample_schema
from .arrow import list_to_numpy
from .file import open_parquet, read_row_group
from .meta import TableMeta, read_meta

DEFAULT_CACHE_BYTES = 512 * 2**20


class ByteLRU:
    """A bounded-by-bytes LRU cache (decoded episodes, row groups); per process, never pickled."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: Any) -> Any:
        hit = self.items.get(key)
        if hit is None:
            self.misses += 1
            return None
        self.hits += 1
        self.items.move_to_end(key)
        return hit[0]

    def put(self, key: Any, value: Any, nbytes: int) -> None:
        if nbytes > self.max_bytes:
            return
        self.items[key] = (value, nbytes)
        self.bytes += nbytes
        while self.bytes > self.max_bytes:
            _, (_, n) = self.items.popitem(last=False)
            self.bytes -= n


class EpisodeSource:
    """Every window of a table, in canonical order, as numpy: `sample_numpy(i)` is window i.

    Files are opened lazily in each process, so a source pickles into worker processes (no file
    handles or caches travel). Each process keeps decoded episodes (video frames dominate) and the
    Parquet row groups they came from in one LRU bounded by `cache_bytes` (default 512 MiB) in all,
    because random access would otherwise decode the same clip over and over; a row group or episode
    larger than the bound is used and not kept. Text is tokenised once per episode at construction.
    """

    def __init__(
        self,
        table: str | os.PathLike,
        spec: WindowSpec | dict[str, Any],
        tokenizer: Any = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.path = str(table)
        self.spec = spec if isinstance(spec, WindowSpec) else WindowSpec.from_dict(spec)
        self.meta: TableMeta = read_meta(self.path)
        self.rspec = self.spec.resolve(self.meta.layout())
        pf = open_parquet(self.path)
        # One row group at a time: only the ids, texts and action counts are kept (never whole columns of a
        # huge table; the timestamps themselves are read again per episode when it is used).
        self.episode_ids: list[str] = []
        texts: list[str] = []
        lengths: list[np.ndarray] = []
        for g in range(pf.metadata.num_row_groups):
            cols = read_row_group(pf, self.path, g, ["episode_id", "text", self.meta.actions.ts_column])
            self.episode_ids += cols.column("episode_id").to_pylist()
            texts += cols.column("text").to_pylist()
            lengths.append(pc.list_value_length(cols.column(self.meta.actions.ts_column)).to_numpy(zero_copy_only=False))
            del cols
        self.n_actions = np.concatenate(lengths).astype(np.int64) if lengths else np.zeros(0, np.int64)
        if (self.n_actions == 0).any():
            bad = int(np.flatnonzero(self.n_actions == 0)[0])
            raise SchemaError(f"{self.path}: episode {self.episode_ids[bad]!r} (row {bad}), column 'action_ts': empty")
        rg_rows = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
        self._rg_starts = np.concatenate([[0], np.cumsum(rg_rows)]).astype(np.int64)
        self.index = WindowIndex(self.n_actions, self.rspec)
        tok = load_tokenizer(tokenizer)
        requested = "default" if tokenizer is None else os.fspath(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else None
        self.tokenizer_id = tokenizer_identity(tok, requested)
        self.tokens = tokenize(tok, texts, self.spec.max_text_tokens)
        self._infos = (episode_infos(self.meta.extra, self.episode_ids, texts, self.n_actions)
                       if self.spec.delta_timestamps is not None else None)
        self.cache_bytes = cache_bytes
        self._local: dict[str, Any] | None = None

    # -- per-process state -------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_local"] = None
        return state

    def _proc(self) -> dict[str, Any]:
        loc = self._local
        if loc is None or loc["pid"] != os.getpid():
            loc = self._local = {
                "pid": os.getpid(),
                "pf": open_parquet(self.path),
                "cache": ByteLRU(self.cache_bytes),  # ("episode", i) -> EpisodeArrays, ("row_group", g) -> Table
            }
        return loc

    # -- episodes ----------------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return len(self.n_actions)

    def sample_schema(self) -> dict[str, dict]:
        """Every sample key with its dtype and shape (`windows.sample_schema`)."""
        return sample_schema(self.rspec, list(self.tokens))

    def _row(self, episode: int) -> pa.Table:
        loc = self._proc()
        rg = int(np.searchsorted(self._rg_starts, episode, side="right") - 1)
        cache: ByteLRU = loc["cache"]
        table = cache.get(("row_group", rg))
        if table is None:
            table = read_row_group(loc["pf"], self.path, rg)
            cache.put(("row_group", rg), table, table.nbytes)
        return table.slice(episode - int(self._rg_starts[rg]), 1)

    def episode(self, episode: int) -> EpisodeArrays:
        """Decoded arrays of one episode (cached per process, bounded by bytes)."""
        loc = self._proc()
        cache: ByteLRU = loc["cache"]
        ep = cache.get(("episode", episode))
        if ep is not None:
            return ep
        row = self._row(episode)
        eid = self.episode_ids[episode]
        where = f"{self.path}: episode {eid!r} (row {episode})"
        signals = {
            s.name: (list_to_numpy(row.column(s.ts_column), None, np.float64),
                     list_to_numpy(row.column(s.column), s.width, np.float32))
            for s in self.meta.signals
        }
        cameras = {s.name: self._camera(row, s, where) for s in self.meta.cameras}
        images = {}
        for s in self.meta.images:
            img = row.column(s.column)[0].as_py()
            images[s.name] = None
            if img is not None:
                images[s.name] = decode_image(img, where=f"{where}, image {s.name!r}")
                if images[s.name].shape[1:] != s.hw:
                    raise SchemaError(
                        f"{where}, image {s.name!r}: image is {images[s.name].shape[1]}x{images[s.name].shape[2]}, "
                        f"the table says {s.height}x{s.frame_width}"
                    )
        ep = EpisodeArrays(
            action_ts=list_to_numpy(row.column(self.meta.actions.ts_column), None, np.float64),
            actions=list_to_numpy(row.column(self.meta.actions.column), self.meta.actions.width, np.float32),
            signals=signals,
            cameras=cameras,
            images=images,
            tokens={k: v[episode] for k, v in self.tokens.items()},
            info=self._infos[episode] if self._infos is not None else {},
        )
        nbytes = ep.action_ts.nbytes + ep.actions.nbytes + sum(t.nbytes + v.nbytes for t, v in signals.values())
        nbytes += sum(c.frames.nbytes + c.ts.nbytes for c in cameras.values() if c is not None)
        cache.put(("episode", episode), ep, nbytes)
        return ep

    def _camera(self, row: pa.Table, s: Any, where: str) -> CameraClip | None:
        """Decode one camera clip of a row and check it against its timestamps and the table's frame size."""
        clip = row.column(s.column)[0].as_py()
        if clip is None:
            return None
        frames, fps = decode_video(clip, where=f"{where}, camera {s.name!r}")
        if frames.shape[2:] != s.hw:
            raise SchemaError(
                f"{where}, camera {s.name!r}: frames are {frames.shape[2]}x{frames.shape[3]}, "
                f"the table says {s.height}x{s.frame_width}"
            )
        if s.ts_column is None:  # version 1: constant rate from video_t0
            t0 = float(row.column(s.t0_column)[0].as_py() or 0.0)
            rate = s.fps or fps
            return CameraClip(ts=t0 + np.arange(len(frames), dtype=np.float64) / rate, frames=frames, fps=rate)
        ts = list_to_numpy(row.column(s.ts_column), None, np.float64)
        if len(ts) != len(frames):
            raise SchemaError(
                f"{where}, camera {s.name!r}: the clip decodes to {len(frames)} frames but column "
                f"{s.ts_column!r} has {len(ts)} timestamps"
            )
        return CameraClip(ts=ts, frames=frames)

    # -- windows -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    def _check_index(self, i: int) -> int:
        n = len(self.index)
        if isinstance(i, np.integer):
            i = int(i)
        if not isinstance(i, int):
            raise TypeError(f"window index must be an integer, got {type(i).__name__}")
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"window index out of range (dataset has {n} windows)")
        return i

    def sample_numpy(self, i: int) -> dict[str, np.ndarray]:
        """Window `i` as numpy arrays (what the exporter writes)."""
        i = self._check_index(i)
        ep, _, k = self.index.locate(i)
        return cut_window(self.episode(int(ep)), int(k), self.rspec, i, int(ep))

    def episode_windows(self, episode: int) -> Iterator[dict[str, np.ndarray]]:
        """Every window of one episode, anchors ascending (numpy samples)."""
        arrays = self.episode(episode)
        first = int(self.index.starts[episode])
        for j in range(int(self.index.counts[episode])):
            yield cut_window(arrays, j * self.index.stride, self.rspec, first + j, episode)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({Path(self.path).name!r}, episodes={self.num_episodes}, windows={len(self)}, "
            f"A={self.rspec.A}, streams={[s.name for s in self.meta.streams]})"
        )
