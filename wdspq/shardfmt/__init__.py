"""The shard format, version 2 (docs/shards.md): the only code in wdspq that knows bytes.

- `encoding`: Encoding (frame codec, compression) and SampleCodec (sample <-> tar members <-> record).
- `delta`: the delta filter of float time series in a zstd record.
- `tuning`: the zstd record's per-export tuning (which keys get the delta filter, a trained dictionary).
- `names`: the export's file names (shard, index sidecar) and which shard holds a window.
- `layout`: tar bytes of a sample, end of archive, parsing a sample's span.
- `index`: the per-shard index sidecar (each sample's byte offset and length).
- `manifest`: the O(shards) manifest, its checks, and loading a shard's index.
- `read`: reading a run of samples by ranged read.
- `shared`, `shared_read`: the shared-frames layout, and its block-order reads.
"""

from .encoding import (
    COMPRESSIONS,
    DEFAULT_ENCODING,
    FRAME_CODECS,
    RAW,
    Encoding,
    SampleCodec,
    decode_record,
    key_of,
)
from .index import index_bytes
from .layout import end_of_archive, sample_tar
from .manifest import MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION, Manifest, load_manifest, stats_digest
from .names import index_name, locate_window, parse_shard_index, shard_assignment, shard_name
from .read import read_records, read_run

__all__ = [
    "COMPRESSIONS", "DEFAULT_ENCODING", "FRAME_CODECS", "MANIFEST_FORMAT", "MANIFEST_NAME", "MANIFEST_VERSION",
    "RAW", "Encoding", "Manifest", "SampleCodec", "decode_record", "end_of_archive", "index_bytes", "index_name",
    "key_of", "load_manifest", "locate_window", "parse_shard_index", "read_records", "read_run", "sample_tar",
    "shard_assignment", "shard_name", "stats_digest",
]
