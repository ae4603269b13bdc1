"""`wdspq info MIXTURE.json`: a mixture's sources, weights, windows and passes per epoch (no shard is read)."""

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


def run_mixture_info(path: str) -> int:
    import wdspq

    from ..mixture import read_mixture_file

    sources, opts = read_mixture_file(path)
    print(format_mixture(wdspq.ShardStream(sources, **opts)))
    return 0
