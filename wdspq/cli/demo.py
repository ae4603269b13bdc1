"""`wdspq demo`: the command around wdspq.demo.run_demo."""

from __future__ import annotations

from typing import Any

from ..demo import run_demo
from ..errors import WdspqError
from .common import add_tokenizer_arg


def add_demo(sub: Any) -> None:
    """Register `wdspq demo`."""
    p = sub.add_parser(
        "demo",
        help="build a synthetic table, export shards, stream an epoch, checkpoint and resume",
        description="Run the main job end to end on synthetic data: build a table, export pre-windowed "
        "shards, stream one epoch with StreamLoader, stop mid-epoch, save the loader state as JSON and "
        "resume it in a fresh loader, checking that the result equals the uninterrupted epoch.",
    )
    p.add_argument("--workdir", default="data/demo", help="where the table, shards and state go (default: data/demo)")
    p.add_argument("--episodes", type=int, default=12, help="synthetic episodes (default: 12)")
    p.add_argument("--seconds", type=float, default=6.0, help="mean episode length in seconds (default: 6)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers (default: 2)")
    add_tokenizer_arg(p)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_run)


def _run(args: Any) -> int:
    if args.episodes < 1 or args.seconds <= 1.0 or args.batch_size < 1 or args.num_workers < 0:
        raise WdspqError("demo: --episodes >= 1, --seconds > 1, --batch-size >= 1 and --num-workers >= 0 are required")
    run_demo(args.workdir, episodes=args.episodes, seconds=args.seconds, batch_size=args.batch_size,
             num_workers=args.num_workers, tokenizer=args.tokenizer, progress=not args.no_progress)
    return 0
