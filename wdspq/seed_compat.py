"""The seed's `TimeSeriesParquetDataset` constructor as a thin front of `ParquetWindowDataset`.

Seed users switch by changing one import. What changed behind the same arguments:

- `sample_rate`: the seed accepted it and ignored it. Here, when given, observations are resampled
  linearly at `sample_rate` Hz (`obs_resample="linear"`, `obs_rate_hz=sample_rate`), so
  `O = round(obs_length_sec * sample_rate)`; pass `obs_resample="nearest"` to pick nearest samples
  instead. When `None`, raw observation rows are taken by time (`obs_resample="none"`).
- `device`: kept, but samples are always returned on the CPU. Moving tensors to CUDA inside
  `__getitem__` runs in DataLoader worker processes, where it is wrong (CUDA in forked workers fails,
  and pinning/transfer belongs to the main process). Move whole batches in the training loop with
  `wdspq.to_device(batch, ds.device)` (or `ds.to_device(batch)`).
- `checkpoint_path`: replaces the seed's pickle of the global RNG state with a resumable sampler,
  `ds.sampler(shuffle=True, seed=0)`, whose epoch position (epoch, seed, index into the epoch's
  permutation) is written atomically to `checkpoint_path` by `ds.save_checkpoint()` and restored when
  the sampler is created and the file exists. The permutation is recomputed from (seed, epoch).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import SpecError, StateError
from .table.episodes import DEFAULT_CACHE_BYTES
from .table_dataset import ParquetWindowDataset
from .windows import WindowSpec

CHECKPOINT_FORMAT = "wdspq.sampler-checkpoint/1"


def default_device() -> torch.device:
    """CUDA if available, then MPS, then CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def to_device(batch: Any, device: str | torch.device | None = None) -> Any:
    """Move a (nested dict / list / tuple) batch of tensors to `device` (default: CUDA, then MPS, then CPU).

    Call it in the training loop, in the main process, never inside a Dataset or DataLoader worker.
    Pinned tensors (DataLoader(pin_memory=True)) are copied with `non_blocking=True`. Non-tensors pass
    through unchanged.
    """
    dev = default_device() if device is None else torch.device(device)

    def move(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x.to(dev, non_blocking=x.is_pinned())
        if isinstance(x, Mapping):
            return {k: move(v) for k, v in x.items()}
        if isinstance(x, tuple) and hasattr(x, "_fields"):  # namedtuple
            return type(x)(*(move(v) for v in x))
        if isinstance(x, (list, tuple)):
            return type(x)(move(v) for v in x)
        return x

    return move(batch)


def _atomic_write_json(path: Path, obj: Any) -> None:
    """JSON written through the storage layer's atomic put (temp file, fsync, rename): never a partial file."""
    from .storage import LocalStorage

    LocalStorage(path.parent).put_bytes(path.name, json.dumps(obj, sort_keys=True, indent=1).encode())


class CheckpointSampler(torch.utils.data.Sampler[int]):
    """A resumable sampler over `num_windows` indices: epoch `e` is a permutation seeded by (seed, e).

    State is (epoch, index): `index` counts the indices of the current epoch already handed out. An
    iterator continues from that position; finishing an epoch moves to the next one. With
    `checkpoint_path`, `save_checkpoint()` writes the state atomically and construction restores it.

    DataLoader workers prefetch: the sampler runs ahead of the training loop by up to
    `num_workers * prefetch_factor` batches. For an exact resume pass what the loop actually consumed,
    `save_checkpoint(consumed=batches_done * batch_size)`; without it the saved position is what was
    handed to the DataLoader (exact with `num_workers=0`).
    """

    def __init__(
        self,
        num_windows: int,
        shuffle: bool = True,
        seed: int = 0,
        checkpoint_path: str | os.PathLike | None = None,
        identity: Mapping[str, Any] | None = None,
    ) -> None:
        if num_windows < 0:
            raise ValueError(f"num_windows must be >= 0, got {num_windows}")
        self.num_windows = int(num_windows)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.identity = dict(identity or {})
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.epoch = 0
        self.index = 0
        self.dataloader_index = 0  # the seed's batch counter (get/set_dataloader_index), saved alongside
        if self.checkpoint_path is not None and self.checkpoint_path.exists():
            self.load_checkpoint()

    # -- order ---------------------------------------------------------------------------------
    def permutation(self, epoch: int | None = None) -> np.ndarray:
        """The order of one epoch: a pure function of (seed, epoch), never of global RNG state."""
        e = self.epoch if epoch is None else int(epoch)
        if not self.shuffle:
            return np.arange(self.num_windows, dtype=np.int64)
        return np.random.default_rng([self.seed, e]).permutation(self.num_windows).astype(np.int64)

    def __iter__(self) -> Iterator[int]:
        if self.index >= self.num_windows:  # a finished epoch that was not rolled over yet
            self.epoch, self.index = self.epoch + 1, 0
        perm = self.permutation()
        while self.index < self.num_windows:
            i = int(perm[self.index])
            self.index += 1
            yield i
        self.epoch, self.index = self.epoch + 1, 0

    def __len__(self) -> int:
        """Indices the next iteration yields (the rest of the current epoch)."""
        return self.num_windows - self.index if self.index < self.num_windows else self.num_windows

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` from its beginning."""
        self.epoch, self.index = int(epoch), 0

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """Plain JSON-serialisable state; `consumed` overrides the position within the current epoch."""
        index = self.index if consumed is None else int(consumed)
        if not 0 <= index <= self.num_windows:
            raise StateError(f"consumed={consumed} is outside the epoch of {self.num_windows} windows")
        return {
            "format": CHECKPOINT_FORMAT,
            "dataloader_index": int(self.dataloader_index),
            "epoch": self.epoch,
            "index": index,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_windows": self.num_windows,
            "identity": self.identity,
        }

    def load_state_dict(self, state: Mapping[str, Any], where: str = "sampler state") -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise StateError(f"{where}: not a wdspq sampler checkpoint (format {state.get('format')!r})")
        self.dataloader_index = int(state.get("dataloader_index") or 0)
        if state.get("index") is None:  # saved by a dataset that had no sampler: only the batch counter
            return
        for key, mine in (("num_windows", self.num_windows), ("seed", self.seed), ("shuffle", self.shuffle)):
            if state.get(key) != mine:
                raise StateError(f"{where}: saved {key}={state.get(key)!r}, but this sampler has {key}={mine!r}")
        if self.identity and state.get("identity") and state["identity"] != self.identity:
            raise StateError(f"{where}: saved for {state['identity']!r}, but this dataset is {self.identity!r}")
        index = state.get("index")
        if not isinstance(index, int) or not 0 <= index <= self.num_windows:
            raise StateError(f"{where}: index {index!r} is outside 0..{self.num_windows}")
        self.epoch, self.index = int(state["epoch"]), index

    def save_checkpoint(self, consumed: int | None = None) -> Path:
        """Write the state to `checkpoint_path` atomically (temp file, fsync, rename)."""
        if self.checkpoint_path is None:
            raise StateError("this sampler has no checkpoint_path to save to")
        _atomic_write_json(self.checkpoint_path, self.state_dict(consumed))
        return self.checkpoint_path

    def load_checkpoint(self) -> None:
        assert self.checkpoint_path is not None
        if _is_pickle(self.checkpoint_path):
            return  # the seed's own pickle: never unpickled (the dataset warns once)
        try:
            state = json.loads(self.checkpoint_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise StateError(f"{self.checkpoint_path}: cannot read sampler checkpoint: {e}") from None
        self.load_state_dict(state, where=str(self.checkpoint_path))


class SeedPickleWarning(UserWarning):
    """The checkpoint file is the seed's pickle: it is not loaded (unpickling runs arbitrary code)."""


def _is_pickle(path: Path) -> bool:
    """Whether `path` starts like a pickle (protocol 2+ opcode PROTO), i.e. the seed's old checkpoint."""
    try:
        with open(path, "rb") as f:
            return f.read(1) == b"\x80"
    except OSError:
        return False


class TimeSeriesParquetDataset(ParquetWindowDataset):
    """The seed's constructor over the map-style reference dataset (see the module docstring).

    `**spec_options` are further `WindowSpec` fields (`obs_offset_sec`, `stride`, `full_windows_only`,
    `obs_resample`, `max_text_tokens`, ...).
    """

    def __init__(
        self,
        parquet_file: str | os.PathLike,
        acts_length_sec: float,
        obs_length_sec: float,
        sample_rate: float | None = None,
        video_frame_offsets: list[int] | tuple[int, ...] | None = None,
        device: str | torch.device | None = None,
        checkpoint_path: str | os.PathLike | None = None,
        tokenizer: Any = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        **spec_options: Any,
    ) -> None:
        opts = dict(spec_options)
        if sample_rate is not None:
            if opts.get("obs_resample", "linear") == "none":
                raise SpecError("sample_rate resamples observations; it cannot be combined with obs_resample='none'")
            if opts.get("obs_rate_hz") not in (None, sample_rate):
                raise SpecError(f"sample_rate={sample_rate} and obs_rate_hz={opts['obs_rate_hz']} disagree; give one")
            opts.setdefault("obs_resample", "linear")
            opts["obs_rate_hz"] = sample_rate
        if video_frame_offsets is not None:
            opts["video_frame_offsets"] = video_frame_offsets
        unknown = set(opts) - set(WindowSpec.__dataclass_fields__)
        if unknown:
            raise SpecError(f"TimeSeriesParquetDataset: unknown options {sorted(unknown)}")
        spec = WindowSpec(acts_length_sec=acts_length_sec, obs_length_sec=obs_length_sec, **opts)
        super().__init__(parquet_file, spec, tokenizer=tokenizer, cache_bytes=cache_bytes)
        self.sample_rate = sample_rate
        self.device = device  # where batches go (to_device); samples themselves stay on the CPU
        self.checkpoint_path = str(checkpoint_path) if checkpoint_path is not None else None
        self._sampler: CheckpointSampler | None = None
        self._dataloader_index = 0
        if self.checkpoint_path is not None and os.path.exists(self.checkpoint_path):
            if _is_pickle(Path(self.checkpoint_path)):
                warnings.warn(SeedPickleWarning(
                    f"{self.checkpoint_path}: this is the seed's pickle checkpoint; wdspq does not load pickles "
                    "(unpickling runs arbitrary code), so training starts at dataloader index 0. The next "
                    f"save_checkpoint() moves it to {self.checkpoint_path}.seed.pkl and writes a JSON checkpoint."
                ), stacklevel=2)
            else:
                try:
                    saved = json.loads(Path(self.checkpoint_path).read_text(encoding="utf-8"))
                except (OSError, ValueError) as e:
                    raise StateError(f"{self.checkpoint_path}: cannot read the checkpoint: {e}") from None
                self._dataloader_index = int(saved.get("dataloader_index") or 0) if isinstance(saved, dict) else 0

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_sampler"] = None  # the sampler lives in the main process only
        return state

    def sampler(self, shuffle: bool = True, seed: int = 0) -> CheckpointSampler:
        """The resumable sampler for a DataLoader (`DataLoader(ds, sampler=ds.sampler(), ...)`).

        Restores the position saved in `checkpoint_path` when that file exists.
        """
        self._sampler = CheckpointSampler(
            len(self),
            shuffle=shuffle,
            seed=seed,
            checkpoint_path=self.checkpoint_path,
            identity=self._identity(),
        )
        return self._sampler

    def _identity(self) -> dict[str, Any]:
        """What a checkpoint must match: the window spec and the episode count."""
        return {"spec": self.spec.digest(), "episodes": self.num_episodes}

    def set_dataloader_index(self, idx: int) -> None:
        """The seed's batch counter: saved by `save_checkpoint()` and restored at construction."""
        self._dataloader_index = int(idx)

    def get_dataloader_index(self) -> int:
        return self._dataloader_index

    def save_checkpoint(self, checkpoint_path: str | os.PathLike | None = None, dataloader_index: int | None = None,
                        consumed: int | None = None) -> Path:
        """Save the batch counter and, with a `sampler()`, its epoch position to `checkpoint_path`, atomically.

        The seed's signature (`checkpoint_path`, `dataloader_index`) plus the sampler's `consumed`. A
        seed pickle at the path is moved aside to `<path>.seed.pkl` first, never overwritten or loaded.
        """
        path = str(checkpoint_path) if checkpoint_path is not None else self.checkpoint_path
        if path is None:
            raise StateError("save_checkpoint: the dataset was created without checkpoint_path")
        if dataloader_index is not None:
            self._dataloader_index = int(dataloader_index)
        if _is_pickle(Path(path)):
            os.replace(path, path + ".seed.pkl")
        if self._sampler is not None:
            self._sampler.dataloader_index = self._dataloader_index
            state = self._sampler.state_dict(consumed)
        elif consumed is not None:
            raise StateError("save_checkpoint(consumed=...): create the sampler first with ds.sampler(...)")
        else:  # no sampler position to save: the batch counter only
            state = {"format": CHECKPOINT_FORMAT, "dataloader_index": self._dataloader_index, "epoch": None,
                     "index": None, "identity": self._identity()}
        _atomic_write_json(Path(path), state)
        return Path(path)

    def to_device(self, batch: Any) -> Any:
        """Move a batch to this dataset's `device` (CUDA, then MPS, then CPU when it is None)."""
        return to_device(batch, self.device)
