"""Pictures of the data: one window, one episode, an export's statistics (`wdspq show`).

A window picture is a pure function of the sample and its context (table streams, spec, resolved row
counts, task text), so a window drawn from the table and from its shards is the same PNG. Needs
matplotlib, an optional extra (`pip install 'wdspq[viz]'`): training machines do not need it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import WdspqError
from .table import TableMeta
from .table.rates import median_rate
from .windows import WindowSpec

MASKED_GREY = 0.55
_SAVE = {"dpi": 80, "metadata": {"Software": None}}  # no version string: same picture, same bytes


def _plt() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise WdspqError("pictures need matplotlib: pip install 'wdspq[viz]' (or pip install matplotlib)") from None
    return plt


def _save(plt: Any, fig: Any, path: str | os.PathLike) -> str:
    fig.tight_layout()
    fig.savefig(path, **_SAVE)
    plt.close(fig)
    return str(path)


@dataclass
class WindowContext:
    """What a sample alone does not say: the table's streams, the spec and its row counts, the task text."""

    meta: TableMeta
    spec: WindowSpec
    resolved: dict[str, Any]
    text: str = ""
    caption: str = ""  # one more title line (e.g. which source of a mixture the window came from)


def _np(x: Any) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def _masked_tile(h: int, w: int) -> np.ndarray:
    """A grey tile with diagonal hatching: a frame the window has no data for."""
    tile = np.full((h, w, 3), MASKED_GREY, np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    tile[(xx + yy) % max(4, (h + w) // 12) == 0] = 0.3
    return tile


def _series(ax: Any, t: np.ndarray, values: np.ndarray, mask: np.ndarray, names: list[str], title: str) -> None:
    for d in range(values.shape[1]):
        ax.plot(t, np.where(mask, values[:, d], np.nan), lw=1, label=names[d] if d < len(names) else f"{d}")
    if (~mask).any():
        step = float(np.median(np.diff(t))) if len(t) > 1 else 1.0
        for i in np.flatnonzero(~mask):
            ax.axvspan(t[i] - step / 2, t[i] + step / 2, color="0.85", lw=0)
    ax.axvline(0.0, color="k", lw=0.5)
    ax.set_title(title, fontsize=8, loc="left")
    ax.tick_params(labelsize=6)
    if values.shape[1] <= 8:
        ax.legend(fontsize=5, ncol=min(values.shape[1], 8), loc="upper right")


def infer_context(sample: dict[str, Any]) -> WindowContext:
    """A context from the sample's keys alone (no rates, names or text): frames labelled by slot."""
    from .table import actions_stream, camera_stream, image_stream, signal_stream

    s = {k: _np(v) for k, v in sample.items()}
    streams = [actions_stream(s["actions"].shape[1])]
    for k, v in s.items():
        if f"{k}_mask" not in s or k == "actions":
            continue
        if v.dtype == np.uint8 and v.ndim == 4:
            streams.append(camera_stream(k, v.shape[2], v.shape[3]))
        elif v.dtype == np.uint8 and v.ndim == 3:
            streams.append(image_stream(k, v.shape[1], v.shape[2]))
        elif v.ndim == 2:
            streams.append(signal_stream(k, v.shape[1]))
    cams = [x for x in streams if x.kind == "camera"]
    offsets = tuple(range(len(s[cams[0].name]))) if cams else (0,)
    return WindowContext(TableMeta(streams=streams), WindowSpec(acts_length_sec=1.0, obs_length_sec=1.0, video_frame_offsets=offsets), {})


def show_window(sample: dict[str, Any], path: str | os.PathLike, ctx: WindowContext | None = None) -> str:
    """Draw one window: per camera its frames at their offsets (masked ones hatched grey), the images,
    actions and every signal against time relative to t0 (masked rows shaded), task text and identity.

    `ctx` (from `table_window`/`shards_window`) gives rates, names, offsets and the text; without it they
    are inferred from the sample (times in rows, frames by slot)."""
    plt = _plt()
    ctx = ctx or infer_context(sample)
    s = {k: _np(v) for k, v in sample.items()}
    meta, spec = ctx.meta, ctx.spec
    t0 = float(s["t0"])
    delta = spec.delta_timestamps
    if delta is not None:  # explicit offsets: streams not listed are one unstacked row; draw them as one
        for name in ["actions", *(x.name for x in meta.signals), *(x.name for x in meta.cameras)]:
            if name not in delta:
                for k in (name, f"{name}_mask", f"{name}_ts"):
                    if k in s:
                        s[k] = s[k][None]
    cams = [c.name for c in meta.cameras]
    imgs = [i.name for i in meta.images]
    ncols = max([len(s[c]) for c in cams] + [len(imgs), 1])
    rows = len(cams) + (1 if imgs else 0) + 1 + len(meta.signals)
    heights = [1.0] * (len(cams) + (1 if imgs else 0)) + [1.3] * (1 + len(meta.signals))
    fig = plt.figure(figsize=(2.0 * max(ncols, 3), sum(heights) * 1.6 + 0.6))
    gs = fig.add_gridspec(rows, ncols, height_ratios=heights)
    r = 0
    for c in cams:
        offsets = ([f"{o:+d}" for o in spec.for_stream(c).video_frame_offsets] if delta is None
                   else [f"{d:+g} s" for d in delta.get(c, (0.0,))])
        for j in range(len(s[c])):
            ax = fig.add_subplot(gs[r, j])
            if bool(s[f"{c}_mask"][j]):
                ax.imshow(s[c][j].transpose(1, 2, 0), interpolation="nearest")
                label = f"{c} {offsets[j]}: {float(s[f'{c}_ts'][j]) - t0:+.3f} s"
            else:
                ax.imshow(_masked_tile(*s[c][j].shape[1:]), interpolation="nearest")
                label = f"{c} {offsets[j]}: masked"
            ax.set_title(label, fontsize=7)
            ax.axis("off")
        r += 1
    for j, name in enumerate(imgs):
        ax = fig.add_subplot(gs[r, j])
        ok = bool(s[f"{name}_mask"])
        ax.imshow(s[name].transpose(1, 2, 0) if ok else _masked_tile(*s[name].shape[1:]), interpolation="nearest")
        ax.set_title(name + ("" if ok else ": masked"), fontsize=7)
        ax.axis("off")
    r += 1 if imgs else 0
    rate = float(meta.actions.rate_hz or 1.0)
    ax = fig.add_subplot(gs[r, :])
    a = s["actions"]
    _series(ax, np.arange(len(a)) / rate if delta is None else np.asarray(delta.get("actions", (0.0,))), a, s["actions_mask"].astype(bool), list(meta.actions.names or []),
            f"actions ({a.shape[1]}-D, {rate:g} Hz)")
    r += 1
    for sig in meta.signals:
        ax = fig.add_subplot(gs[r, :])
        v = s[sig.name]
        srate = float((ctx.resolved.get("signals", {}).get(sig.name) or {}).get("rate_hz") or sig.rate_hz or 1.0)
        t = (spec.for_stream(sig.name).obs_offset_sec + np.arange(len(v)) / srate if delta is None
             else np.asarray(delta.get(sig.name, (0.0,))))
        _series(ax, t, v, s[f"{sig.name}_mask"].astype(bool), list(sig.names or []),
                f"{sig.name} ({v.shape[1]}-D, {srate:g} Hz)")
        r += 1
    fig.axes[-1].set_xlabel("time relative to t0 (s)", fontsize=7)
    fig.suptitle(f"window {int(s['window_index'])}, episode {int(s['episode_index'])}, anchor "
                 f"{int(s['anchor_index'])}, t0 {t0:.3f} s\n" + (f"{ctx.caption}\n" if ctx.caption else "")
                 + repr(ctx.text), fontsize=8)
    return _save(plt, fig, path)


def show_episode(ds: Any, episode: int, path: str | os.PathLike, thumbs: int = 16) -> str:
    """Draw one episode of an `EpisodeSource` (or a map-style dataset) on one time axis: every numeric stream, a strip of
    thumbnails per camera at their own times (dropped frames marked), and the anchors of its windows."""
    plt = _plt()
    if not 0 <= episode < ds.num_episodes:
        raise WdspqError(f"{ds.path}: episode {episode} out of range (the table has {ds.num_episodes})")
    ep = ds.episode(episode)
    meta = ds.meta
    base = float(ep.action_ts[0])
    rows = len(meta.cameras) + 1 + len(meta.signals)
    fig, axes = plt.subplots(rows, 1, figsize=(11, 1.7 * rows + 0.6), sharex=True, squeeze=False)
    axes = axes[:, 0]
    for ax, cam in zip(axes, meta.cameras):
        clip = ep.cameras.get(cam.name)
        ax.set_yticks([])
        ax.set_title(f"camera {cam.name}", fontsize=8, loc="left")
        if clip is None or not len(clip.ts):
            continue
        ts = clip.ts - base
        span = (ts[-1] - ts[0]) if len(ts) > 1 else 1.0
        width = span / max(thumbs, 1)
        for j in np.unique(np.linspace(0, len(ts) - 1, num=min(thumbs, len(ts))).round().astype(int)):
            ax.imshow(clip.frames[j].transpose(1, 2, 0), extent=(ts[j], ts[j] + width * 0.95, 0, 1), aspect="auto")
        rate = cam.rate_hz or (median_rate([ts], cam.ts_column or cam.name) if len(ts) > 1 else 1.0)
        for g in np.flatnonzero(np.diff(ts) > 1.5 / rate):
            ax.axvspan(ts[g], ts[g + 1], color="red", alpha=0.35, lw=0)  # a dropped frame
        ax.set_ylim(0, 1)
    t = ep.action_ts - base
    _series(axes[len(meta.cameras)], t, ep.actions, np.ones(len(t), bool), list(meta.actions.names or []),
            f"actions ({ep.actions.shape[1]}-D)")
    first, count = int(ds.index.starts[episode]), int(ds.index.counts[episode])
    anchors = np.arange(count) * ds.index.stride
    axes[len(meta.cameras)].plot(t[anchors], np.full(len(anchors), np.nanmin(ep.actions)), "|", color="k", ms=6,
                                 label="window anchors")
    for ax, sig in zip(axes[len(meta.cameras) + 1:], meta.signals):
        st, vals = ep.signals[sig.name]
        _series(ax, st - base, vals, np.ones(len(st), bool), list(sig.names or []), f"{sig.name} ({vals.shape[1]}-D)")
    axes[-1].set_xlabel("time since the episode's first action (s)", fontsize=7)
    fig.suptitle(f"episode {episode} ({ds.episode_ids[episode]!r}): {count} windows "
                 f"({first}..{first + count - 1}), A={ds.rspec.A} rows, stride {ds.index.stride}", fontsize=8)
    return _save(plt, fig, path)


def show_stats(stats: dict[str, Any], path: str | os.PathLike, meta: TableMeta | None = None) -> str:
    """Per stream and dimension: mean ± std (bars) and min/max (markers), from an export's manifest."""
    plt = _plt()
    names = list(stats)
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 2.0 * len(names) + 0.5), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        st = stats[name]
        mean, std = np.asarray(st["mean"]), np.asarray(st["std"])
        x = np.arange(len(mean))
        ax.errorbar(x, mean, yerr=std, fmt="o", ms=3, capsize=3, label="mean ± std")
        ax.plot(x, st["min"], "v", ms=4, label="min")
        ax.plot(x, st["max"], "^", ms=4, label="max")
        labels = list(meta.stream(name).names or []) if meta is not None else []
        ax.set_xticks(x, labels if len(labels) == len(x) else [str(i) for i in x], fontsize=6)
        ax.set_title(f"{name}: {st['count']:,} rows", fontsize=8, loc="left")
        ax.legend(fontsize=6, loc="upper right")
        ax.tick_params(labelsize=6)
    return _save(plt, fig, path)


def _decode_text(tok: Any, sample: dict[str, Any]) -> str:
    ids = _np(sample["input_ids"])
    keep = _np(sample["attention_mask"]).astype(bool) if "attention_mask" in sample else np.ones(len(ids), bool)
    return str(tok.decode(ids[keep].tolist(), skip_special_tokens=True))


def table_window(table: str | os.PathLike, window: int, spec: WindowSpec, tokenizer: Any = None
                 ) -> tuple[dict[str, np.ndarray], WindowContext]:
    """Window `window` of a table and its picture context."""
    from .table.episodes import EpisodeSource
    from .text import load_tokenizer

    ds = EpisodeSource(table, spec, tokenizer=tokenizer)
    sample = ds.sample_numpy(window)
    ctx = WindowContext(ds.meta, spec, ds.rspec.summary(), _decode_text(load_tokenizer(tokenizer), sample))
    return sample, ctx


def shards_window(source: str, window: int, tokenizer: Any = None) -> tuple[dict[str, np.ndarray], WindowContext]:
    """Window `window` of an export, found by `Manifest.locate` (one sample read)."""
    from .shardfmt import load_manifest, read_run

    m = load_manifest(source)
    n = m.num_windows
    if not 0 <= window < n:
        raise WdspqError(f"{m.url}: window {window} out of range (the export has {n})")
    shard, pos = m.locate(window)
    sample = next(iter(read_run(m, shard, pos, pos + 1)))
    if int(sample["window_index"]) != window:
        raise WdspqError(f"{m.shard_url(shard)}, sample {pos}: holds window {int(sample['window_index'])}, not {window}")
    return sample, export_context(m, sample, tokenizer)


def export_context(m: Any, sample: dict[str, Any], tokenizer: Any = None, caption: str = "") -> WindowContext:
    """The drawing context of a sample of the export with manifest `m`: its table's streams, its spec and the
    sample's task text (with `tokenizer`, else the export's own when it can be loaded here, else the bundled one)."""
    import json

    from .shardfmt.manifest import requested_tokenizer
    from .text import load_tokenizer

    d = m.data
    meta = TableMeta.from_json(json.dumps(d["table_meta"]))
    if tokenizer is None:
        tokenizer = requested_tokenizer(m)
    return WindowContext(meta, WindowSpec.from_dict(d["spec"]), d.get("resolved", {}),
                         _decode_text(load_tokenizer(tokenizer), sample), caption)
