"""The map-style reference dataset over the canonical table: `ds[i]` is the window with window_index i."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from .errors import SchemaError
from .media import decode_image, decode_video
from .schema import TableMeta, read_meta
from .text import DEFAULT_TOKENIZER, load_tokenizer, tokenize, tokenizer_identity
from .windows import EpisodeArrays, SampleShapes, WindowIndex, WindowSpec, cut_window, sample_schema

DEFAULT_CACHE_BYTES = 512 * 2**20


class _LRU:
    """A bounded-by-bytes LRU cache (decoded episodes); per process, never pickled."""

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


def _list_to_numpy(col: pa.ChunkedArray | pa.Array, dim: int | None, dtype: np.dtype) -> np.ndarray:
    """One row's list<...> cell -> numpy, without Python loops (flatten twice for fixed-size lists)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    flat = arr.flatten()
    if dim is not None:
        flat = flat.flatten()
    out = flat.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return out.reshape(-1, dim) if dim is not None else out


class ParquetWindowDataset(torch.utils.data.Dataset):
    """Map-style dataset of every window of a table, in canonical order (the reference for the shards).

    Files are opened lazily in each process, so the dataset works inside DataLoader workers. Each
    process keeps decoded episodes (video frames dominate) in an LRU bounded by `cache_bytes`
    (default 512 MiB), because random access would otherwise decode the same clip over and over.
    Text is tokenised once per episode at construction.
    """

    def __init__(
        self,
        table: str | os.PathLike,
        spec: WindowSpec | dict[str, Any],
        tokenizer: Any = DEFAULT_TOKENIZER,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.path = str(table)
        self.spec = spec if isinstance(spec, WindowSpec) else WindowSpec.from_dict(spec)
        self.meta: TableMeta = read_meta(self.path)
        self.rspec = self.spec.resolve(self.meta.action_rate_hz, self.meta.observation_rate_hz)
        pf = pq.ParquetFile(self.path)
        cols = pf.read(columns=["episode_id", "text", "action_ts"])
        self.episode_ids: list[str] = cols.column("episode_id").to_pylist()
        texts = cols.column("text").to_pylist()
        lengths = pc.list_value_length(cols.column("action_ts")).to_numpy(zero_copy_only=False)
        self.n_actions = np.asarray(lengths, dtype=np.int64)
        if (self.n_actions == 0).any():
            bad = int(np.flatnonzero(self.n_actions == 0)[0])
            raise SchemaError(f"{self.path}: episode {self.episode_ids[bad]!r} (row {bad}), column 'action_ts': empty")
        rg_rows = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
        self._rg_starts = np.concatenate([[0], np.cumsum(rg_rows)]).astype(np.int64)
        self.index = WindowIndex(self.n_actions, self.rspec)
        tok = load_tokenizer(tokenizer)
        self.tokenizer_id = tokenizer_identity(tok, tokenizer if isinstance(tokenizer, str) else None)
        self.tokens = tokenize(tok, texts, self.spec.max_text_tokens)
        m = self.meta
        self.shapes = SampleShapes(
            action_dim=m.action_dim,
            obs_dim=m.obs_dim,
            frame_hw=(m.frame_height, m.frame_width),
            image_hw=(m.image_height, m.image_width) if m.image_height > 0 else None,
        )
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
                "pf": pq.ParquetFile(self.path),
                "episodes": _LRU(self.cache_bytes),
                "row_group": (None, None),
            }
        return loc

    # -- episodes ----------------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return len(self.n_actions)

    def sample_schema(self) -> dict[str, dict]:
        return sample_schema(self.rspec, self.shapes, list(self.tokens))

    def _row(self, episode: int) -> dict[str, Any]:
        loc = self._proc()
        rg = int(np.searchsorted(self._rg_starts, episode, side="right") - 1)
        cached_rg, table = loc["row_group"]
        if cached_rg != rg:
            table = loc["pf"].read_row_group(rg)
            loc["row_group"] = (rg, table)
        return table.slice(episode - int(self._rg_starts[rg]), 1)

    def episode(self, episode: int) -> EpisodeArrays:
        """Decoded arrays of one episode (cached per process, bounded by bytes)."""
        loc = self._proc()
        cache: _LRU = loc["episodes"]
        ep = cache.get(episode)
        if ep is not None:
            return ep
        row = self._row(episode)
        eid = self.episode_ids[episode]
        where = f"{self.path}: episode {eid!r} (row {episode})"
        m = self.meta
        frames, fps = None, 0.0
        video = row.column("video")[0].as_py()
        if video is not None and m.frame_height > 0:
            frames, fps = decode_video(video, where=f"{where}, column 'video'")
            if frames.shape[2:] != (m.frame_height, m.frame_width):
                raise SchemaError(
                    f"{where}, column 'video': frames are {frames.shape[2]}x{frames.shape[3]}, "
                    f"the table says {m.frame_height}x{m.frame_width}"
                )
        image = None
        if self.shapes.image_hw is not None:
            img = row.column("image")[0].as_py()
            if img is not None:
                image = decode_image(img, where=f"{where}, column 'image'")
                if image.shape[1:] != self.shapes.image_hw:
                    raise SchemaError(
                        f"{where}, column 'image': image is {image.shape[1]}x{image.shape[2]}, "
                        f"the table says {self.shapes.image_hw[0]}x{self.shapes.image_hw[1]}"
                    )
        ep = EpisodeArrays(
            action_ts=_list_to_numpy(row.column("action_ts"), None, np.float64),
            actions=_list_to_numpy(row.column("actions"), m.action_dim, np.float32),
            observation_ts=_list_to_numpy(row.column("observation_ts"), None, np.float64),
            observations=_list_to_numpy(row.column("observations"), m.obs_dim, np.float32),
            frames=frames,
            fps=fps,
            video_t0=float(row.column("video_t0")[0].as_py() or 0.0),
            image=image,
            tokens={k: v[episode] for k, v in self.tokens.items()},
        )
        nbytes = sum(a.nbytes for a in (ep.action_ts, ep.actions, ep.observation_ts, ep.observations))
        nbytes += 0 if frames is None else frames.nbytes
        cache.put(episode, ep, nbytes)
        return ep

    # -- windows -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    def _check_index(self, i: int) -> int:
        n = len(self.index)
        if isinstance(i, (np.integer, torch.Tensor)):
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
        return cut_window(self.episode(int(ep)), int(k), self.rspec, self.shapes, i, int(ep))

    def episode_windows(self, episode: int) -> Iterator[dict[str, np.ndarray]]:
        """Every window of one episode, anchors ascending (numpy samples)."""
        arrays = self.episode(episode)
        first = int(self.index.starts[episode])
        for j in range(int(self.index.counts[episode])):
            yield cut_window(arrays, j * self.index.stride, self.rspec, self.shapes, first + j, episode)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v) for k, v in self.sample_numpy(i).items()}

    def __repr__(self) -> str:
        return (
            f"ParquetWindowDataset({Path(self.path).name!r}, episodes={self.num_episodes}, windows={len(self)}, "
            f"A={self.rspec.A}, O={self.rspec.O}, frames={len(self.rspec.offsets)})"
        )
