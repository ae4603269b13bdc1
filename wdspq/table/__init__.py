"""The canonical episode table: one Parquet row per episode, its metadata, writer, checks and reader.

One job per module: `meta` (streams, `TableMeta`, `read_meta`), `arrow` (episodes <-> Arrow columns),
`writer` (`TableWriter`, written atomically), `rates` (stream rates from timestamp steps),
`timestamps` (the per-episode timestamp rule), `validate` (`validate_table`), `file` (where a table is
read from, local or S3, with checked page reads), `stats` (normalisation statistics of the numeric
streams) and `episodes` (`EpisodeSource`: decoded episodes and windows as numpy, torch-free). The
format is described in docs/table.md. The names below are what an importer needs.
"""

from .arrow import Episode, arrow_schema, episodes_to_record_batch
from .meta import (
    FORMAT_VERSION,
    META_KEY,
    Stream,
    TableMeta,
    actions_stream,
    camera_stream,
    image_stream,
    read_meta,
    signal_stream,
)
from .writer import TableWriter, check_output_path

__all__ = [
    "FORMAT_VERSION",
    "META_KEY",
    "Episode",
    "Stream",
    "TableMeta",
    "TableWriter",
    "actions_stream",
    "arrow_schema",
    "camera_stream",
    "check_output_path",
    "episodes_to_record_batch",
    "image_stream",
    "read_meta",
    "signal_stream",
]
