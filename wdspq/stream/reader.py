"""Reading runs of samples from shards under an error policy (README "Faults tried, and what wdspq does").

`SampleReader.run(shard, start, stop)` wraps `shardfmt.read_run` and always yields exactly
`stop - start` samples or raises:

- `on_error="raise"` (default): the first bad sample raises `ShardError` (a `WdspqError`) naming the
  shard URL, the sample and the member. Any unexpected exception from the tar/npy layers is mapped
  to `ShardError` too.
- `on_error="skip"`: a bad sample (member that does not decode, sample missing its member, truncated
  shard, missing shard file, checksum mismatch, storage failure after retries) is replaced by a
  *placeholder*: a sample of the same schema, all zeros (every `*_mask` false) with `window_index`,
  `episode_index` and `anchor_index` -1. `window_index == -1` is the flag pads already use, so batch
  sizes and the cursor's accounting stay exact and every good window is still delivered exactly once;
  `episode_index == -1` tells a placeholder from a pad. After an error the reader reopens at the next
  sample's index offset; once a shard is known to be short (truncated) or unreadable, the samples it
  cannot hold become placeholders without further reads. Skips are counted (`skipped`); the first one
  in an iteration warns once (`SkippedSamplesWarning`, naming the shard and sample), and
  `end_iteration()` logs the total on the `wdspq` logger.
- `verify_checksums=True`: before the first read of a shard in a process, the whole shard object is
  hashed and its size and sha256 compared with the manifest; a mismatch raises, or (skip) replaces
  every sample of that shard.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..cursor import PAD_INDEX
from ..errors import ExportChangedError, ShardError, StorageError, WdspqError
from ..shardfmt import Manifest, SampleCodec, read_records, read_run
from ..shardfmt.manifest import entry_mismatch, is_file_entry
from ..shardfmt.read import MappedSamples
from ..shardfmt.shared import SharedFramesCodec
from ..shardfmt.shared_read import SharedSamples

logger = logging.getLogger("wdspq")

POLICIES = ("raise", "skip")
PLACEHOLDER_INDEX = PAD_INDEX  # a placeholder's index keys: the flag pads carry, so the cursor counts it alike
_INDEX_KEYS = ("window_index", "episode_index", "anchor_index")


class SkippedSamplesWarning(UserWarning):
    """Bad samples were replaced by placeholders (`on_error="skip"`)."""


class SampleReader:
    """Read runs of samples of one export under an error policy (see the module doc)."""

    def __init__(
        self,
        manifest: Manifest,
        codec: SampleCodec | None = None,
        on_error: str = "raise",
        verify_checksums: bool = False,
    ) -> None:
        if on_error not in POLICIES:
            raise WdspqError(f"on_error must be one of {POLICIES}, got {on_error!r}")
        self.manifest = manifest
        self.codec = codec or manifest.codec()
        self.on_error = on_error
        self.verify_checksums = bool(verify_checksums)
        self.skipped = 0  # samples replaced by placeholders in the current iteration of this process
        self.first_skip: str | None = None
        self._warned = False
        self._pid = os.getpid()
        self._checked: dict[int, ShardError | None] = {}  # shard -> checksum verdict (this process)
        self._bad_from: dict[int, tuple[int, str]] = {}  # shard -> (first unreadable sample, why)

    # -- public --------------------------------------------------------------------------------------
    def run(self, shard: int, start: int, stop: int) -> Iterator[dict[str, np.ndarray]]:
        """Samples `start .. stop-1` of `shard`: exactly `stop - start` of them (placeholders when skipping)."""
        return self._policy_run(shard, start, stop, raw=False)

    def run_records(self, shard: int, start: int, stop: int) -> Iterator[memoryview | bytes]:
        """Like `run`, but each sample is its record's raw bytes (layout `codec.dtype`, possibly read-only),
        checked against the schema."""
        return self._policy_run(shard, start, stop, raw=True)

    def _policy_run(self, shard: int, start: int, stop: int, raw: bool) -> Iterator[Any]:
        self._same_process()
        if stop <= start:
            return
        if self.verify_checksums and shard not in self._bad_from:
            err = self._checksum_error(shard)
            if err is not None:
                if self.on_error == "raise":
                    raise err
                self._bad_from[shard] = (0, str(err))
        yield from self._run(shard, start, stop, raw)

    def mapped(self, shard: int, needed: np.ndarray, whole_blocks: bool = False) -> MappedSamples | SharedSamples | None:
        """Block-order reads of `shard` whose records are decoded when they are indexed: by mapping
        (`shardfmt.read.MappedSamples`, for the sorted positions `needed`; a local shard) or, with
        `whole_blocks` (the caller takes a whole block per call, as `epoch_order.read_in_order` does), for
        a shared-frames shard `shardfmt.shared_read.SharedSamples` (each take reads its runs and their
        packs: taking a block piecemeal would read a pack once per piece); or None: checksums to verify
        first, the shard already found bad here, or neither applies. Its errors leave the read to
        `run_records`, which applies this policy."""
        self._same_process()
        if self.verify_checksums or shard in self._bad_from:
            return None
        if isinstance(self.codec, SharedFramesCodec):
            return SharedSamples(self.manifest, shard, self.codec) if whole_blocks and len(needed) else None
        return MappedSamples.create(self.manifest, shard, needed, self.codec)

    def placeholder(self, raw: bool = False) -> Any:
        """A fresh placeholder sample: zeros of the schema, masks false, index keys -1 (raw: its record bytes)."""
        rec = np.zeros((), dtype=self.codec.dtype)
        for k in _INDEX_KEYS:
            if k in self.codec.schema:
                rec[k] = PLACEHOLDER_INDEX
        if raw:
            return rec.tobytes()
        return {k: rec[k] for k in self.codec.schema}

    def end_iteration(self) -> None:
        """Log the number of samples skipped in this iteration (if any) and reset the count and warning."""
        if self.skipped:
            logger.warning(
                "wdspq: on_error='skip': %d bad sample(s) replaced by placeholders (window_index -1) in this "
                "iteration (process %d); first: %s",
                self.skipped,
                os.getpid(),
                self.first_skip,
            )
        self.skipped = 0
        self.first_skip = None
        self._warned = False

    # -- internals -----------------------------------------------------------------------------------
    def _same_process(self) -> None:
        """Checksum verdicts and counts belong to one process: a worker starts with its own."""
        pid = os.getpid()
        if pid != self._pid:
            self._pid = pid
            self._checked.clear()
            self._bad_from.clear()
            self.skipped, self.first_skip, self._warned = 0, None, False

    def _url(self, shard: int) -> str:
        return self.manifest.storage.url(self.manifest.shards[shard]["name"])

    def _read(self, shard: int, start: int, stop: int, raw: bool = False) -> Iterator[Any]:
        """`read_run` (or raw records), with any exception mapped to a one-line WdspqError naming the shard."""
        if raw:
            it = read_records(self.manifest, shard, start, stop, self.codec)
        else:
            it = read_run(self.manifest, shard, start, stop, self.codec)
        try:
            yield from it
        except WdspqError as e:
            raise e from None
        except Exception as e:
            raise ShardError(
                f"{self._url(shard)}, samples {start}..{stop - 1}: cannot read: {type(e).__name__}: {e}"
            ) from None
        finally:
            it.close()

    def _read_one(self, shard: int, pos: int, raw: bool) -> tuple[Any, WdspqError | None]:
        """Sample `pos` read on its own: (sample, None) or (None, its error).

        A run's error can be reported one sample early (the tar grouping looks one member ahead), so
        the failing sample is isolated before it is blamed.
        """
        try:
            out = [bytes(x) if raw else x for x in self._read(shard, pos, pos + 1, raw)]
        except WdspqError as e:
            return None, e
        return out[0], None

    def _checksum_error(self, shard: int) -> ShardError | None:
        """Hash the whole shard once per process; a ShardError naming the shard if it differs from the manifest."""
        if shard in self._checked:
            return self._checked[shard]
        entry = self.manifest.shards[shard]
        name, url = entry["name"], self._url(shard)
        err: ShardError | None = None
        size, digest = 0, ""
        try:
            size, digest = self.manifest.storage.sha256(name)
        except WdspqError as e:
            err = ShardError(f"{url}: cannot verify the checksum: {e}")
        except Exception as e:
            err = ShardError(f"{url}: cannot verify the checksum: {type(e).__name__}: {e}")
        if err is None and not is_file_entry(entry):
            err = ShardError(f"{url}: the manifest records no size/sha256 for this shard; cannot verify it")
        wrong = None if err is not None else entry_mismatch(entry, size, digest, "shard")
        if wrong:
            err = ShardError(f"{url}: checksum mismatch: {wrong}")
        self._checked[shard] = err
        return err

    def _probe(self, shard: int) -> None:
        """After a read error: find (once) where the shard stops being readable (missing file or truncation)."""
        if shard in self._bad_from:
            return
        entry = self.manifest.shards[shard]
        try:
            offsets = self.manifest.offsets(shard).tolist()
            size = self.manifest.storage.size(entry["name"])
        except WdspqError as e:
            self._bad_from[shard] = (0, f"{self._url(shard)}: cannot read the shard: {e}")
            return
        except Exception as e:
            self._bad_from[shard] = (0, f"{self._url(shard)}: cannot read the shard: {type(e).__name__}: {e}")
            return
        if size < offsets[-1]:
            first = int(np.searchsorted(np.asarray(offsets[1:], dtype=np.int64), size, side="right"))
            self._bad_from[shard] = (
                first,
                f"{self._url(shard)}: shard is truncated to {size} bytes (the index's samples end at byte "
                f"{offsets[-1]}): samples {first}..{len(offsets) - 2} are cut",
            )

    def _run(self, shard: int, start: int, stop: int, raw: bool) -> Iterator[Any]:
        """Read `start .. stop-1`; on an error isolate the failing sample, then raise or replace it and reopen."""
        pos = start
        while pos < stop:
            bad = self._bad_from.get(shard)
            if bad is not None and pos >= bad[0]:  # the shard is missing or cut before `pos`: no more reads
                self._skip(shard, pos, stop - pos, bad[1])
                for _ in range(stop - pos):
                    yield self.placeholder(raw)
                return
            end = stop if bad is None else min(stop, bad[0])
            it = self._read(shard, pos, end, raw)
            error: WdspqError | None = None
            try:
                while True:
                    try:
                        sample = next(it)
                    except StopIteration:
                        break
                    except ExportChangedError:
                        raise  # never skipped: reading on would mix two exports
                    except WdspqError as e:
                        error = e
                        break
                    pos += 1
                    yield sample
            finally:
                it.close()
            if error is None:
                continue
            if self.on_error == "raise" and isinstance(error, StorageError):
                raise error  # storage failed after its retries: not a fault of one sample, nothing to isolate
            single, error = self._read_one(shard, pos, raw)
            if single is not None:  # the run's error belongs to a later sample: go on from the next one
                pos += 1
                yield single
                continue
            assert error is not None
            if self.on_error == "raise":
                raise error
            self._probe(shard)
            bad = self._bad_from.get(shard)
            if bad is not None and pos >= bad[0]:
                continue  # the loop's top replaces the rest of the run at once
            self._skip(shard, pos, 1, str(error))
            yield self.placeholder(raw)
            pos += 1

    def _skip(self, shard: int, sample: int, n: int, why: str) -> None:
        """Count `n` placeholders from `sample` on; warn at the first skip of the iteration."""
        self.skipped += n
        if self.first_skip is None:
            self.first_skip = (
                why if self._url(shard) in why else f"{self._url(shard)}, sample {sample}: {why}"
            )
        if not self._warned:
            self._warned = True
            warnings.warn(
                SkippedSamplesWarning(
                    f"wdspq: on_error='skip': replaced {n} bad sample(s) from sample {sample} of shard "
                    f"{self._url(shard)} with placeholders (window_index -1): {why}. Further bad samples of this "
                    "iteration are counted, not warned; the total is logged when the iteration ends."
                ),
                stacklevel=2,
            )
