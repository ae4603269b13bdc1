"""`wdspq info MIXTURE.json` (a mixture's sources, weights, windows and passes per epoch; no shard is read) and
`wdspq show MIXTURE.json --window I` (the mixture's sample I of an epoch, drawn with its source named)."""

from __future__ import annotations

from typing import Any


def format_mixture(stream: Any) -> str:
    """A mixture stream as a few aligned lines and one line per source."""
    n = stream.samples_per_epoch
    lines = [f"{'mixture':<11}{len(stream.readers)} sources, {n:,} samples per epoch, seed {stream.seed}, "
             f"{'shuffled passes' if stream.source_shuffle else 'canonical order'}",
             f"{'keys':<11}{', '.join(stream.schema)}",
             f"{'#':>3}  {'weight':>7} {'share':>7} {'windows':>9} {'per epoch':>10} {'passes':>7}  source"]
    total_w = sum(r.source.weight for r in stream.readers)
    for r, c, p in zip(stream.readers, stream.counts, stream.passes_per_epoch()):
        ren = f"  rename {dict(r.source.rename)}" if r.source.rename else ""
        lines.append(f"{r.index:>3}  {r.source.weight:>7.3g} {r.source.weight / total_w:>7.1%} {r.n:>9,} "
                     f"{c:>10,} {p:>7.2f}  {r.manifest.url}{ren}")
    return "\n".join(lines)


def open_mixture(path: str) -> Any:
    """The mixture stream of a mixture file (reads only the sources' manifests)."""
    import wdspq

    from ..mixture import read_mixture_file

    sources, opts = read_mixture_file(path)
    return wdspq.ShardStream(sources, **opts)


def run_mixture_info(path: str) -> int:
    print(format_mixture(open_mixture(path)))
    return 0


def mixture_window(path: str, position: int, epoch: int = 0, tokenizer: Any = None) -> tuple[dict[str, Any], Any, str]:
    """(sample, drawing context, description: what it is, then its source's path) of sample `position` of epoch `epoch` of the mixture in
    `path`: the sample one process with no workers delivers at that place of the epoch (the schedule's order),
    read from its source (one sample read) and drawn with that source's streams, spec and text."""
    from ..errors import WdspqError
    from ..viz import export_context

    stream = open_mixture(path)
    n = len(stream)
    if not 0 <= position < n:
        raise WdspqError(f"{path}: window {position} out of range (the mixture's epoch has {n:,} samples)")
    j, k = stream.sched.at(position)
    K = int(epoch) * stream.counts[j] + k  # the source's sample in its endless pass sequence (docs/mixtures.md)
    src = stream.readers[j]
    it = src.records(K, K + 1)
    try:
        record = next(it)
    finally:
        it.close()
    rec = src.codec.record_array(record)
    sample = {key: rec[key] for key in src.codec.schema}
    pas, off = divmod(K, src.n)
    what = (f"mixture sample {position:,} of epoch {epoch}: source {j}, weight {src.source.weight:g}, pass {pas} "
            f"(its sample {off:,} of {src.n:,})")
    where = str(src.source.path)
    caption = what + "\n" + (where if len(where) <= 90 else "..." + where[-87:])  # fits the picture's width
    return sample, export_context(src.manifest, sample, tokenizer, caption), f"{what}\n{where}"
