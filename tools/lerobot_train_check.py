"""Train LeRobot's ACT policy for a few hundred steps from wdspq batches (not part of the test suite).

    .venv/bin/wdspq build lerobot DATASET /tmp/t.parquet
    .venv/bin/wdspq export /tmp/t.parquet /tmp/shards --delta-timestamps '{"action": [0.0, 0.1, ..., 0.9]}' (fps 10)
    /path/to/lerobot-venv/bin/python tools/lerobot_train_check.py /tmp/shards /tmp/t.parquet --wdspq-site SITE

Runs in LeRobot's venv (0.3.2) with wdspq's own dependencies taken from `--wdspq-site` (the wdspq venv's
site-packages, appended after LeRobot's). torchvision's registry wheels do not import beside the CPU
torch, so it is stubbed out and ACT runs without cameras (its ResNet backbone is torchvision's); ACT
then needs an environment state, which is the robot state here. The data lines are the only change
from a LeRobot training loop: `StreamLoader` + `to_lerobot` instead of `LeRobotDataset` + `DataLoader`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lerobot_front_check import _StubTorchvision  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shards")
    ap.add_argument("table")
    ap.add_argument("--wdspq-site", required=True, help="site-packages of the venv wdspq is installed in")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    sys.meta_path.insert(0, _StubTorchvision())
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.append(a.wdspq_site)
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy

    import wdspq

    torch.manual_seed(0)
    stats = {k: v for k, v in wdspq.lerobot_stats(a.table).items() if k in ("action", "observation.state")}
    stats["observation.environment_state"] = stats["observation.state"]
    cfg = ACTConfig(input_features={"observation.state": PolicyFeature(FeatureType.STATE, (4,)),
                                    "observation.environment_state": PolicyFeature(FeatureType.ENV, (4,))},
                    output_features={"action": PolicyFeature(FeatureType.ACTION, (6,))},
                    chunk_size=10, n_action_steps=10, dim_model=128, dim_feedforward=512, n_encoder_layers=2)
    policy = ACTPolicy(cfg, dataset_stats=stats)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    # the data lines: a wdspq stream instead of LeRobotDataset + DataLoader
    loader = wdspq.StreamLoader(wdspq.ShardStream(a.shards, shuffle=True, seed=0), batch_size=a.batch)
    step, epoch, t, losses = 0, 0, time.perf_counter(), []
    while step < a.steps:
        for batch in loader:
            batch = wdspq.to_lerobot(batch)
            batch["observation.environment_state"] = batch["observation.state"]  # ACT without cameras
            loss, _ = policy.forward(batch)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
            step += 1
            if step % 50 == 0:
                print(f"step {step}: loss {sum(losses[-50:]) / 50:.3f}")
            if step == a.steps:
                break
        epoch += 1
        loader.set_epoch(epoch)
    print(f"{step} steps in {time.perf_counter() - t:.0f} s; loss {losses[0]:.3f} -> {sum(losses[-20:]) / 20:.3f}")


if __name__ == "__main__":
    main()
