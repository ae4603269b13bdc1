"""Import the seed project's table layout into the canonical table.

The seed table (written by its `parquet_create.py`) has one row per episode with `text`, `actions` and
`observations` as list<list<double>> whose column 0 is the timestamp, and `image`/`video` as file paths
relative to the directory the seed ran in (or to the table's folder). Media bytes are inlined here.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from ..errors import MediaError, SchemaError
from ..media import decode_image, encode_png, probe_clip
from ..table import (
    Episode,
    TableMeta,
    TableWriter,
    actions_stream,
    camera_stream,
    check_output_path,
    image_stream,
    signal_stream,
)
from ..table.timestamps import check_timestamps

REQUIRED = ("text", "actions", "observations")
MEDIA = ("image", "video")
SHOW_MISSING = 5


def _resolve(value: str, table_dir: Path) -> Path | None:
    """A seed media path: absolute, or relative to the working directory, or to the table's folder."""
    p = Path(value)
    if p.is_absolute():
        return p if p.is_file() else None
    for base in (Path.cwd(), table_dir):
        cand = base / p
        if cand.is_file():
            return cand
    return None


def _media_column(pf: pq.ParquetFile, name: str) -> pa.DataType | None:
    if name not in pf.schema_arrow.names:
        return None
    t = pf.schema_arrow.field(name).type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)):
        raise SchemaError(f"{pf.reader_path}: column {name!r}: type {t}, expected a file path (string) or bytes")
    return t


MISSING_MEDIA = ("error", "skip")


def _check_media_paths(pf: pq.ParquetFile, table_dir: Path, where: str, missing_media: str = "error") -> dict[str, int]:
    """Media paths that do not exist, per column. `error`: fail before writing anything, listing the
    first few; `skip`: return the counts (those episodes get an empty image/clip)."""
    missing: list[str] = []
    total = 0
    per: dict[str, int] = {}
    for name in MEDIA:
        t = _media_column(pf, name)
        if t is None or not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            continue
        row = 0
        for g in range(pf.num_row_groups):
            values = pf.read_row_group(g, columns=[name]).column(0).to_pylist()
            for v in values:
                if v is not None and _resolve(v, table_dir) is None:
                    total += 1
                    per[name] = per.get(name, 0) + 1
                    if len(missing) < SHOW_MISSING:
                        missing.append(f"row {row} {name} {v!r}")
                row += 1
    if total and missing_media == "error":
        more = f" and {total - len(missing)} more" if total > len(missing) else ""
        raise SchemaError(
            f"{where}: {total} media file(s) not found (looked relative to the working directory {str(Path.cwd())!r} "
            f"and to the table's folder {str(table_dir)!r}): {'; '.join(missing)}{more}; "
            "pass --missing-media skip to build without them"
        )
    return per


def _split_matrix(arr: pa.Array, where: str, column: str, start: int) -> list[np.ndarray]:
    """list<list<double>> rows -> one (n, width) float64 array per row, vectorised over the row group."""
    if arr.null_count:
        r = int(np.argmax(arr.is_null().to_numpy(zero_copy_only=False)))
        raise SchemaError(f"{where}: row {start + r}, column {column!r}: is null")
    lengths = np.asarray(pc.list_value_length(arr).to_numpy(zero_copy_only=False), dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    items = arr.flatten()
    if items.null_count:
        p = int(np.argmax(items.is_null().to_numpy(zero_copy_only=False)))
        r = int(np.searchsorted(offsets, p, side="right") - 1)
        raise SchemaError(f"{where}: row {start + r}, column {column!r}: has a null row")
    widths = np.asarray(pc.list_value_length(items).to_numpy(zero_copy_only=False), dtype=np.int64)
    if widths.size == 0:
        return [np.zeros((0, 0)) for _ in range(len(lengths))]
    if (widths != widths[0]).any() or widths[0] < 2:
        p = int(np.argmax(widths != widths[0])) if (widths != widths[0]).any() else 0
        r = int(np.searchsorted(offsets, p, side="right") - 1)
        raise SchemaError(
            f"{where}: row {start + r}, column {column!r}: inner row {p - offsets[r]} has {widths[p]} values; "
            f"every row must be [timestamp, v1, ..., vD] with one width (first row has {widths[0]})"
        )
    flat = items.flatten().to_numpy(zero_copy_only=False).astype(np.float64, copy=False).reshape(-1, int(widths[0]))
    return [flat[offsets[r] : offsets[r + 1]] for r in range(len(lengths))]


def _read_media(value: object, table_dir: Path, skip_missing: bool = False) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    p = _resolve(str(value), table_dir)
    if p is None:
        if skip_missing:
            return None
        raise SchemaError(f"media file {value!r} not found")  # vanished since the pre-scan
    return p.read_bytes()


def _first_media_shapes(
    pf: pq.ParquetFile, media_cols: list[str], table_dir: Path, where: str
) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """(image HxW, clip HxW) of the first image and clip in the table (they size the table's streams)."""
    found: dict[str, tuple[int, int]] = {}
    for name in media_cols:
        for g in range(pf.num_row_groups):
            values = [v for v in pf.read_row_group(g, columns=[name]).column(0).to_pylist()
                      if v is not None and (isinstance(v, bytes) or _resolve(str(v), table_dir) is not None)]
            if values:  # the first file that exists sizes the stream
                data = _read_media(values[0], table_dir)
                try:
                    if name == "image":
                        rgb = decode_image(data, where=f"{where}: column 'image' ({values[0]!r})")
                        found[name] = (rgb.shape[1], rgb.shape[2])
                    else:
                        found[name] = probe_clip(data)[:2]
                except MediaError:
                    raise
                except Exception as e:  # PyAV raises many types on bad bytes
                    raise MediaError(f"{where}: column {name!r} ({values[0]!r}): cannot read the clip: {e}") from None
                break
    return found.get("image"), found.get("video")


def clip_start(first_action: float, first_observation: float, n_frames: int, fps: float) -> float:
    """Time of a seed clip's frame 0 on the episode's clock.

    The seed's clips start at time 0. When the episode's first timestamp lies within the clip's span
    `[0, n_frames / fps]` the episode and clip share that clock and 0 is kept; otherwise (an epoch clock,
    where every frame at j / fps would fall outside every window) frame 0 goes to the first timestamp.
    """
    first = min(first_action, first_observation)
    return 0.0 if 0.0 <= first <= n_frames / fps else first


def _seed_streams(dims: tuple[int, int], image_hw: tuple[int, int] | None,
                  video_hw: tuple[int, int] | None) -> list:
    streams = [actions_stream(dims[0]), signal_stream("observations", dims[1])]
    if video_hw is not None:
        streams.append(camera_stream("frames", *video_hw))
    if image_hw is not None:
        streams.append(image_stream("image", *image_hw))
    return streams


def build_from_seed(
    seed_table: str | os.PathLike,
    out: str | os.PathLike,
    row_group_size: int = 16,
    progress: bool = True,
    overwrite: bool = True,
    missing_media: str = "error",
) -> TableMeta:
    """Convert a seed-layout table into a version 2 table at `out` (atomically); ids are `seed-000000`, ...

    Timestamps are column 0 of each action/observation row (signal `observations`); clips keep their own
    encoding as camera `frames`, frame j shown at j / fps (the seed's clips start at 0 on the episode's
    clock) - unless the episode's first timestamp lies outside the clip's span (e.g. epoch seconds): then
    frame 0 is placed at that first timestamp, with a warning (`clip_start`); `image` stays.
    `missing_media="skip"`: an image or clip file that does not exist leaves that episode's image/clip
    empty (masks false in every sample); a column none of whose files exist gives no stream at all. The
    counts are in the returned metadata's `extra["missing_media_skipped"]`.
    """
    if missing_media not in MISSING_MEDIA:
        raise SchemaError(f"missing_media must be one of {', '.join(MISSING_MEDIA)}, got {missing_media!r}")
    seed_table = Path(seed_table)
    where = str(seed_table)
    if not seed_table.is_file():
        raise SchemaError(f"{where}: seed table does not exist")
    check_output_path(Path(out), overwrite=overwrite, inputs=[seed_table])
    try:
        pf = pq.ParquetFile(seed_table)
    except (pa.ArrowInvalid, OSError) as e:
        raise SchemaError(f"{where}: not a readable Parquet file: {e}") from None
    names = pf.schema_arrow.names
    for name in REQUIRED:
        if name not in names:
            raise SchemaError(f"{where}: column {name!r} missing; a seed table has columns {', '.join(REQUIRED + MEDIA)}")
    for name in ("actions", "observations"):
        t = pf.schema_arrow.field(name).type
        if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not (
            pa.types.is_list(t.value_type) or pa.types.is_large_list(t.value_type) or pa.types.is_fixed_size_list(t.value_type)
        ):
            raise SchemaError(f"{where}: column {name!r}: type {t}, expected list<list<double>> (timestamp in column 0)")
    media_cols = [m for m in MEDIA if _media_column(pf, m) is not None]
    table_dir = seed_table.resolve().parent
    skipped = _check_media_paths(pf, table_dir, where, missing_media)
    skip = missing_media == "skip"

    image_hw_first, video_first = _first_media_shapes(pf, media_cols, table_dir, where)
    writer: TableWriter | None = None
    image_hw: tuple[int, int] | None = None
    video_info: tuple[int, int, float] | None = None
    dims: tuple[int, int] | None = None
    row = aligned = 0
    bar = tqdm(total=pf.metadata.num_rows, desc=f"build {Path(out).name}", unit="ep", disable=not progress)
    try:
        for g in range(pf.num_row_groups):
            tbl = pf.read_row_group(g, columns=list(REQUIRED) + media_cols)
            texts = tbl.column("text").to_pylist()
            acts = _split_matrix(tbl.column("actions").combine_chunks(), where, "actions", row)
            obs = _split_matrix(tbl.column("observations").combine_chunks(), where, "observations", row)
            media = {m: tbl.column(m).to_pylist() for m in media_cols}
            del tbl
            for r in range(len(texts)):
                ep_id = f"seed-{row:06d}"
                here = f"{where}: row {row} (episode {ep_id!r})"
                a, o = acts[r], obs[r]
                if a.shape[0] == 0 or o.shape[0] == 0:
                    col = "actions" if a.shape[0] == 0 else "observations"
                    raise SchemaError(f"{here}, column {col!r}: empty episode")
                ep_dims = (a.shape[1] - 1, o.shape[1] - 1)
                if dims is None:
                    dims = ep_dims
                elif ep_dims != dims:
                    raise SchemaError(
                        f"{here}: dimensions D={ep_dims[0]}, S={ep_dims[1]} differ from the first episode's "
                        f"D={dims[0]}, S={dims[1]}"
                    )
                for col, m in (("actions", a), ("observations", o)):
                    check_timestamps(m[:, 0], f"{here}, column {col!r} (timestamps in column 0)")
                    if not np.isfinite(m[:, 1:]).all():
                        raise SchemaError(f"{here}, column {col!r}: NaN or infinite values")
                image = video = None
                frame_ts = np.zeros(0)
                if "image" in media:
                    value = media["image"][r]
                    image = _read_media(value, table_dir, skip)
                    if image is not None:
                        rgb = decode_image(image, where=f"{here}, column 'image' ({value!r})")
                        hw = (rgb.shape[1], rgb.shape[2])
                        if image_hw is None:
                            image_hw = hw
                        elif hw != image_hw:
                            raise SchemaError(f"{here}, column 'image': size {hw} differs from the first image's {image_hw}")
                        if not (image.startswith(b"\x89PNG") or image.startswith(b"\xff\xd8")):
                            image = encode_png(rgb.transpose(1, 2, 0))  # the table holds PNG or JPEG
                if "video" in media:
                    value = media["video"][r]
                    video = _read_media(value, table_dir, skip)
                    if video is not None:
                        try:
                            h, w, fps, n_frames = probe_clip(video)
                        except Exception as e:  # PyAV raises many types on bad bytes
                            raise MediaError(f"{here}, column 'video' ({value!r}): cannot read the clip: {e}") from None
                        if not fps:
                            raise SchemaError(f"{here}, column 'video' ({value!r}): the clip has no frame rate")
                        info = (h, w, fps)
                        clip_t0 = clip_start(float(a[0, 0]), float(o[0, 0]), n_frames, fps)
                        aligned += clip_t0 != 0.0
                        frame_ts = clip_t0 + np.arange(n_frames, dtype=np.float64) / fps
                        if video_info is None:
                            video_info = info
                        elif info != video_info:
                            raise SchemaError(
                                f"{here}, column 'video': clip is {info[0]}x{info[1]} at {info[2]:g} fps, the first "
                                f"clip is {video_info[0]}x{video_info[1]} at {video_info[2]:g} fps"
                            )
                if writer is None:
                    writer = TableWriter(out, _seed_streams(dims, image_hw_first, video_first),
                                         row_group_size=row_group_size, overwrite=overwrite)
                ep = Episode(
                    episode_id=ep_id,
                    text=texts[r] if texts[r] is not None else "",
                    action_ts=np.ascontiguousarray(a[:, 0]),
                    actions=np.ascontiguousarray(a[:, 1:], dtype=np.float32),
                    signals={"observations": (np.ascontiguousarray(o[:, 0]), np.ascontiguousarray(o[:, 1:], dtype=np.float32))},
                    cameras={"frames": (video, frame_ts)} if video_first is not None else {},
                    images={"image": image} if image_hw_first is not None else {},
                )
                writer.add(ep)
                row += 1
                bar.update(1)
        if writer is None:
            raise SchemaError(f"{where}: the seed table has no rows")
        extra = {"missing_media_skipped": skipped} if skipped else {}
        if aligned:
            extra["clips_aligned_to_episode_start"] = aligned
            warnings.warn(
                f"{where}: {aligned} episode(s) have timestamps that do not start near 0 (e.g. epoch seconds) "
                "while their clips start at 0; frame 0 of those clips is placed at the episode's first "
                "action/observation time (recorded in the table's extra['clips_aligned_to_episode_start'])",
                stacklevel=2,
            )
        return writer.close(source=f"seed({seed_table.name})", extra=extra or None)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()
