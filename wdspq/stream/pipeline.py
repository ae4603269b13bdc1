"""The stream as a `webdataset` pipeline: wdspq's stages, user stages, and per-sample randomness.

`ShardStream` is a `webdataset.DataPipeline` with webdataset's fluid interface. Its first three stages
are wdspq's: the resumable cursor (`CursorSource`: which shard position each entry of this worker's
share reads), the index-ranged read (`ReadRecords`) and the decode into tensors (`DecodeSamples`).
Users add stages with webdataset's own API (`stream.map(f)`, `.map_dict(...)`, `.rename(...)`,
`.compose(stage)`); they run where the stream runs, i.e. in the DataLoader workers.

The cursor counts samples, so a user stage must keep one sample in, one sample out, in order. Known
webdataset stages that drop, add or reorder samples are refused when composed (`UNSAFE_STAGES`); any
other stage is checked as it runs: each sample leaving the last stage must carry the `window_index` the
cursor planned next, or the iteration stops with `StageError` at that sample.

`stream.map(f, rng=True)` calls `f(sample, rng)` with a `numpy.random.Generator` that is a pure function
of (stream seed, epoch, `window_index`, the stage's rank among such stages) (`sample_rng`), so an
augmented window is the same in any topology, with any number of workers and after any resume.
`torch_generator(rng)` and `torch_seed(rng)` hand that randomness to torch-based augmentation.

`stream.map_batch(f)` adds a batch stage: `StreamLoader` applies `f` to each collated batch, after every
per-sample stage, in the main process once the batch has crossed from its worker (`apply_batch_stages`),
so the stream keeps its fused decode + collate and the shared-memory ring. The loader counts the batch
(window_index) before `f` runs; `f` may change keys and dtypes but must keep the batch size.
"""

from __future__ import annotations

import copy
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import default_collate
from webdataset import filters, shardlists
from webdataset.compat import FluidInterface
from webdataset.filters import reraise_exception
from webdataset.pipeline import DataPipeline
from webdataset.utils import PipelineStage

from ..errors import WdspqError

if TYPE_CHECKING:
    from ..cursor import Plan
    from .dataset import ShardStream

_RNG_TAG = 0x77647370  # "wdsp": keeps these generators apart from other uses of the same seed


class StageError(WdspqError):
    """A stage of a ShardStream would break the cursor's count (drops, adds or reorders samples)."""


# -- per-sample randomness ------------------------------------------------------------------------------


def sample_rng(seed: int, epoch: int, window_index: int, stage: int = 0) -> np.random.Generator:
    """The generator `stream.map(f, rng=True)` hands to `f` for one sample: a pure function of the stream's
    seed, the epoch, the sample's `window_index` (-1 for pads and placeholders) and the stage's rank among
    the stream's `rng=True` stages (0 for the first). Call it to reproduce a window's augmentation."""
    if window_index < -1 or seed < 0 or epoch < 0 or stage < 0:
        raise WdspqError(f"sample_rng: bad arguments seed={seed}, epoch={epoch}, window_index={window_index}, "
                         f"stage={stage}")
    entropy = [_RNG_TAG, int(seed), int(epoch), int(window_index) + 1, int(stage)]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def _torch_seed_of(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**63 - 1, dtype=np.int64))


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A CPU `torch.Generator` seeded from a sample's generator (one draw): for torch ops that take
    `generator=` (`torch.rand`, `randint`, `randn`, `randperm`, ...), deterministic per window."""
    g = torch.Generator()
    g.manual_seed(_torch_seed_of(rng))
    return g


@contextmanager
def torch_seed(rng: np.random.Generator) -> Iterator[None]:
    """Within the block, torch's global CPU generator is seeded from a sample's generator (one draw); it is
    restored afterwards. For augmentation libraries that draw from the global generator (kornia)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(_torch_seed_of(rng))
        yield


# -- wdspq's own stages -----------------------------------------------------------------------------------


@dataclass
class StageContext:
    """What the stages of one iteration of one (rank, worker) slot need: the stream, its plan and slot,
    the entries already delivered (skip), the epoch, and the batch size when batches are made here."""

    stream: ShardStream
    plan: Plan
    slot: int
    skip: int
    epoch: int
    batch_size: int | None = None


class WdspqStage(PipelineStage):
    """A stage that needs the iteration's context: `run(source, ctx)` (the source stage: `run(ctx)`)."""

    def run(self, *args: Any) -> Iterator[Any]:  # pragma: no cover - each stage defines it
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<wdspq {type(self).__name__}>"


class CursorSource(WdspqStage):
    """The source: this slot's entries `(shard, position, is_pad)` in the plan's order, from `skip` on."""

    def run(self, ctx: StageContext) -> Iterator[tuple[int, int, bool]]:  # type: ignore[override]
        return ctx.plan.slot_sequence(ctx.slot, ctx.skip)


class ReadRecords(WdspqStage):
    """The index-ranged read: each entry's record bytes, one ranged read per shard run, `(record, is_pad)`."""

    def run(self, entries: Iterator[tuple[int, int, bool]], ctx: StageContext) -> Iterator[tuple[Any, bool]]:  # type: ignore[override]
        return ctx.stream._slot_items(ctx.plan, ctx.slot, ctx.skip, entries=entries)


class DecodeSamples(WdspqStage):
    """The decode: each record as the sample dict of tensors (pads get `window_index` -1)."""

    def run(self, records: Iterator[tuple[Any, bool]], ctx: StageContext) -> Iterator[dict[str, torch.Tensor]]:  # type: ignore[override]
        return ctx.stream._decode_records(records)


class RandomMap(WdspqStage):
    """`stream.map(f, rng=True)`: `f(sample, rng)` with `sample_rng(seed, epoch, window_index, stage)`.
    Like webdataset's `map`: exceptions go to `handler`, and a `None` result drops the sample (an error
    here: the cursor counts every sample)."""

    def __init__(self, f: Callable[[Any, np.random.Generator], Any], handler: Callable[[Exception], bool],
                 stage: int) -> None:
        self.f, self.handler, self.stage = f, handler, int(stage)

    def run(self, source: Iterator[Any], ctx: StageContext) -> Iterator[Any]:  # type: ignore[override]
        seed, epoch, stage, f = ctx.stream.seed, ctx.epoch, self.stage, self.f
        for sample in source:
            try:
                result = f(sample, sample_rng(seed, epoch, int(sample["window_index"]), stage))
            except Exception as exn:
                if self.handler(exn):
                    continue
                break
            if result is None:
                continue
            yield result

    def __repr__(self) -> str:
        return f"<wdspq RandomMap {getattr(self.f, '__name__', self.f)!r} stage={self.stage}>"


# -- the check that keeps the cursor's count -------------------------------------------------------------


def _tap(samples: Iterable[dict[str, Any]], planned: deque[int]) -> Iterator[dict[str, Any]]:
    """Pass samples on, noting each one's window_index: the order the cursor planned."""
    for s in samples:
        planned.append(int(s["window_index"]))
        yield s


def _checked(samples: Iterable[Any], planned: deque[int], stages: list[Any]) -> Iterator[Any]:
    """Pass the last stage's samples on, each checked against the next planned window_index."""
    names = ", ".join(_stage_name(s) for s in stages)
    n = 0
    for s in samples:
        wi = s.get("window_index") if isinstance(s, dict) else None
        if wi is None:
            raise StageError(f"the stream's stages ({names}) returned {type(s).__name__} sample {n} without a "
                             "'window_index' key: stages must return the sample dict, window_index kept")
        if isinstance(wi, (torch.Tensor, np.ndarray)) and wi.ndim != 0:
            raise StageError(f"the stream's stages ({names}) returned a window_index of shape {tuple(wi.shape)} at "
                             f"sample {n}: a stage that batches is not allowed (StreamLoader batches)")
        got = int(wi)
        want = planned.popleft() if planned else None
        if got != want:
            what = "where the cursor planned none (a stage added a sample)" if want is None else \
                f"where the cursor planned window {want}"
            raise StageError(
                f"the stream's stages ({names}) delivered window {got} as sample {n} of this worker's share, {what}: "
                "a stage dropped, duplicated or reordered samples, which breaks the resumable cursor's count. "
                "Stages must keep one sample in, one sample out, in order (README \"Stages and augmentation\")")
        if "__key__" in s and s["__key__"] is None:
            del s["__key__"]  # webdataset's map adds the key of keyless samples as None
        yield s
        n += 1
    if planned:
        raise StageError(f"the stream's stages ({names}) dropped {len(planned)} sample(s) at the end of this worker's "
                         f"share (after sample {n}): stages must keep one sample in, one sample out")


def _collated(samples: Iterator[dict[str, Any]], batch_size: int) -> Iterator[Any]:
    """Default collation in the worker, `batch_size` samples at a time (the last batch may be short)."""
    while True:
        chunk = list(itertools.islice(samples, batch_size))
        if not chunk:
            return
        yield default_collate(chunk)


def run_stages(pipeline: DataPipeline, ctx: StageContext) -> Iterator[Any]:
    """One iteration of one slot through the whole pipeline (the stream's `__iter__`).

    Without user stages and with in-worker batching, the decode is fused with the collation (one copy of
    each record into its batch row: the fast path); otherwise samples are decoded one by one, pass the
    user stages and the check, and are collated here when the loader asked for batches."""
    source, read, decode, *user = pipeline.pipeline
    records = read.run(source.run(ctx), ctx)
    if not user:
        if ctx.batch_size is not None:
            return ctx.stream._collate_records(records, ctx.batch_size)
        return decode.run(records, ctx)
    planned: deque[int] = deque()
    out: Iterator[Any] = _tap(decode.run(records, ctx), planned)
    for stage in user:
        out = stage.run(out, ctx) if isinstance(stage, WdspqStage) else pipeline.invoke(stage, out)
    out = _checked(out, planned, user)
    return _collated(out, ctx.batch_size) if ctx.batch_size is not None else out


# -- batch stages -------------------------------------------------------------------------------------------


def _leading_sizes(batch: Any) -> set[int]:
    """The leading sizes of a batch's tensors, arrays and lists (one level into a dict, list or tuple); a
    list of sample dicts (`collate_fn=list`) has its length."""
    if isinstance(batch, (list, tuple)) and batch and all(isinstance(x, dict) for x in batch):
        return {len(batch)}
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else [batch]
    sizes = set()
    for v in values:
        if isinstance(v, (torch.Tensor, np.ndarray)):
            if v.ndim == 0:
                continue
            sizes.add(int(v.shape[0]))
        elif isinstance(v, (list, tuple)):
            sizes.add(len(v))
    return sizes


def apply_batch_stages(batch: Any, stages: Iterable[Callable[[Any], Any]], n: int) -> Any:
    """`batch` (of `n` samples) through the stream's batch stages in order; StageError when a stage returns
    nothing or a batch whose tensors, arrays or lists do not all have `n` rows."""
    for f in stages:
        out = f(batch)
        sizes = _leading_sizes(out) if out is not None else set()
        if out is None or sizes != {n}:
            got = "None" if out is None else f"leading sizes {sorted(sizes)}" if sizes else \
                f"a {type(out).__name__} without tensors, arrays or lists"
            raise StageError(f"batch stage {getattr(f, '__name__', f)!r} returned {got} for a batch of {n} samples: a "
                             "batch stage must keep the batch size (every tensor, array and list with the batch's "
                             f"{n} rows); the resumable cursor counts the samples of each batch")
        batch = out
    return batch


# -- the pipeline class and its fluid interface -----------------------------------------------------------


def _stage_name(stage: Any) -> str:
    f = getattr(stage, "f", None)
    if isinstance(stage, filters.FilterFunction) and f is not None:
        return getattr(f, "__name__", str(f)).lstrip("_")
    return getattr(stage, "__name__", None) or type(stage).__name__


_BATCHING = "StreamLoader makes the batches (batch_size=...); batch-level work goes in stream.map_batch(f)"
_ORDER = ("the stream orders itself (ShardStream(shuffle=True, seed=..., interleave=...)); a buffer would "
          "hold samples the state counts as delivered")
_DROP = "the cursor counts every sample; to skip samples, mask them in the training loop"
_TUPLE = "samples stay dicts with window_index (the state counts by it); make tuples in a collate_fn"
# webdataset stages that change the number or order of samples, by their function (FilterFunction.f)
UNSAFE_STAGES: dict[Any, str] = {
    filters._shuffle: _ORDER,
    filters._select: _DROP,
    filters._rsample: _DROP,
    itertools.islice: _DROP,
    filters._batched: _BATCHING,
    filters._unbatched: _BATCHING,
    filters._unlisted: _BATCHING,
    filters._to_tuple: _TUPLE,
    filters._extract_keys: _TUPLE,
    filters._map_tuple: _TUPLE,
    shardlists.resampled_: "it draws samples with replacement, and the cursor hands out every window once (R1)",
}
# ... and by their class or plain function
_UNSAFE_OBJECTS: dict[Any, str] = {
    filters.detshuffle: _ORDER,
    filters.Cached: "a cache replays earlier samples instead of the cursor's",
    filters.LMDBCached: "a cache replays earlier samples instead of the cursor's",
    shardlists.split_by_worker: "the stream splits its work over ranks and workers itself",
    shardlists.split_by_node: "the stream splits its work over ranks and workers itself",
    shardlists.single_node_only: "the stream splits its work over ranks and workers itself",
}


def refuse_unsafe(stage: Any) -> None:
    """Raise StageError for a webdataset stage known to drop, add or reorder samples."""
    why = None
    if isinstance(stage, (filters.FilterFunction, filters.RestCurried)):  # a stage, or its uncalled factory
        why = UNSAFE_STAGES.get(getattr(stage, "f", None))
    if why is None:
        for obj, reason in _UNSAFE_OBJECTS.items():
            if stage is obj or (isinstance(obj, type) and isinstance(stage, obj)):
                why = reason
                break
    if why is not None:
        raise StageError(f"webdataset stage {_stage_name(stage)!r} cannot be added to a ShardStream: it changes the "
                         f"number or order of samples, and the resumable cursor counts them ({why})")


class ShuffleFlag:
    """`ShardStream.shuffle`: the stream's shuffle flag (reads as the bool given to the constructor), which also
    stands where webdataset's `shuffle(bufsize)` method would be: calling it is refused with a clear error."""

    __slots__ = ("value",)

    def __init__(self, value: bool) -> None:
        self.value = bool(value)

    def __bool__(self) -> bool:
        return self.value

    def __eq__(self, other: object) -> bool:
        return self.value == (bool(other) if isinstance(other, ShuffleFlag) else other)

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return repr(self.value)

    def __call__(self, *args: Any, **kw: Any) -> Any:
        raise StageError(f"ShardStream.shuffle(...) cannot be added to a ShardStream: {_ORDER}. `stream.shuffle` is the "
                         "stream's shuffle flag (a bool)")


class StreamPipeline(DataPipeline, FluidInterface):
    """`webdataset.DataPipeline` + `webdataset.FluidInterface` whose first stages are wdspq's (cursor, read,
    decode). Stages are added with webdataset's API; `map(f, rng=True)` adds per-sample randomness."""

    batch_stages: tuple[Callable[[Any], Any], ...] = ()  # `map_batch`'s functions, applied by StreamLoader

    def __init__(self) -> None:
        super().__init__(CursorSource(), ReadRecords(), DecodeSamples())

    @property
    def user_stages(self) -> list[Any]:
        """The stages added after wdspq's cursor, read and decode (empty for a plain stream)."""
        return list(self.pipeline[3:])

    def append(self, f: Any) -> None:
        """Append a stage in place (refused for stages that drop, add or reorder samples)."""
        refuse_unsafe(f)
        super().append(f)

    def map(self, f: Callable[..., Any], handler: Callable[[Exception], bool] = reraise_exception,
            rng: bool = False) -> StreamPipeline:
        """A copy with `f` applied to every sample (webdataset's `map`); with `rng=True`, `f(sample, rng)`
        gets the sample's own `numpy.random.Generator` (`sample_rng`)."""
        if not rng:
            return super().map(f, handler=handler)  # type: ignore[no-any-return]
        k = sum(isinstance(s, RandomMap) for s in self.pipeline)
        return self.compose(RandomMap(f, handler, k))  # type: ignore[no-any-return]

    def map_batch(self, f: Callable[[Any], Any]) -> StreamPipeline:
        """A copy with `f` applied by `StreamLoader` to each collated batch, after all per-sample stages (in
        the main process, once the batch is out of the worker; the fused decode + collate and the shared
        ring are kept). `f` must keep the batch size; it may change keys and dtypes (`wdspq.to_lerobot`)."""
        if not callable(f):
            raise StageError(f"map_batch takes a function of one batch, got {type(f).__name__}")
        result = copy.copy(self)
        result.pipeline = list(self.pipeline)
        result.batch_stages = (*self.batch_stages, f)
        return result

    def decode(self, *args: Any, **kw: Any) -> StreamPipeline:
        raise StageError("ShardStream.decode: the samples are already decoded tensors (the stream's own decode "
                         "stage); webdataset's decode is for raw tar members (see README \"Reading shards without wdspq\")")

    def xdecode(self, *args: Any, **kw: Any) -> StreamPipeline:
        raise StageError("ShardStream.xdecode: the samples are already decoded tensors (the stream's own decode stage)")

    def repeat(self, nepochs: int = -1, nbatches: int = -1) -> StreamPipeline:
        raise StageError("ShardStream.repeat: epochs are driven by StreamLoader (set_epoch, one epoch per iter())")

    def with_epoch(self, nsamples: int = -1, nbatches: int = -1) -> StreamPipeline:
        raise StageError("ShardStream.with_epoch: an epoch is every window once (R1); StreamLoader drives epochs")

    def with_length(self, n: int, silent: bool = False) -> StreamPipeline:
        raise StageError("ShardStream.with_length: len(stream) is the export's window count (pads excluded); "
                         "len(StreamLoader) is the batches this rank still yields in the epoch")

    def iterator1(self) -> Iterator[Any]:
        """One epoch of this slot (webdataset's entry point; the same as `iter(stream)`)."""
        return iter(self)
