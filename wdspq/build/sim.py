"""A simulated table with realistic camera frames: MuJoCo renders of a two-link arm among objects.

Each episode: a seeded smoothed-random policy drives the arm (actions, 2-D, at the control rate),
the joint state (positions and velocities, 4-D) is logged at the physics rate, and two named cameras
render at their own rates with their own timestamps: `front` (a fixed view) and `wrist` (mounted on
the arm's last link). Objects start at seeded places and fall and get pushed. Deterministic for a
seed (single-threaded physics, lossless FFV1 clips). Needs `pip install 'wdspq[sim]'` and a renderer:
`MUJOCO_GL=egl` (set by default here) works headless with Mesa's llvmpipe; shadows are off (~5 ms a
frame).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import SchemaError, WdspqError
from ..media import encode_clip
from ..table import Episode, TableMeta, TableWriter, actions_stream, camera_stream, signal_stream

TASKS = ("push the red cube to the left", "sweep the objects off the table", "tap the green ball",
         "move the arm over the blue cylinder")
_SCENE = """<mujoco><option timestep="{dt}"/><visual><quality shadowsize="0"/><global offwidth="{size}" offheight="{size}"/></visual>
<asset><texture name="grid" type="2d" builtin="checker" rgb1=".55 .42 .3" rgb2=".35 .25 .18" width="256" height="256"/>
<material name="wood" texture="grid" texrepeat="6 6" reflectance=".15"/>
<texture name="sky" type="skybox" builtin="gradient" rgb1=".5 .6 .75" rgb2=".05 .05 .1" width="64" height="64"/></asset>
<worldbody><light pos="0 -0.5 2.5" dir="0 .2 -1" diffuse=".9 .9 .85"/><light pos="1 1 2" dir="-.5 -.5 -1" diffuse=".3 .3 .4"/>
<geom type="plane" size="2 2 .1" material="wood"/>
<body pos="0 .25 .05"><joint name="j0" type="hinge" axis="0 0 1" damping=".2"/>
 <geom type="capsule" fromto="0 0 0 .35 0 .25" size=".035" rgba=".85 .85 .9 1"/>
 <body pos=".35 0 .25"><joint name="j1" type="hinge" axis="0 1 0" damping=".2"/>
  <geom type="capsule" fromto="0 0 0 .25 0 -.15" size=".03" rgba=".3 .35 .4 1"/>
  <geom type="box" pos=".27 0 -.17" size=".03 .05 .02" rgba=".9 .5 .1 1"/>
  <camera name="wrist" pos=".2 0 -.05" xyaxes="0 -1 0 .6 0 .8" fovy="70"/></body></body>
{objects}
<camera name="front" pos="0 -1.1 .75" xyaxes="1 0 0 0 .55 .83"/></worldbody>
<actuator><motor joint="j0" gear="3"/><motor joint="j1" gear="3"/></actuator></mujoco>"""
_OBJECTS = ('<geom type="box" size=".06 .06 .06" rgba=".8 .15 .15 1"/>', '<geom type="sphere" size=".07" rgba=".15 .7 .25 1"/>',
            '<geom type="cylinder" size=".05 .08" rgba=".15 .3 .85 1"/>',
            '<geom type="ellipsoid" size=".08 .05 .04" rgba=".9 .85 .2 1"/>')


@dataclass(frozen=True)
class SimConfig:
    """What a simulated table is made of (recorded in the table's `source`)."""

    seconds: float = 4.0
    control_hz: float = 20.0
    physics_hz: float = 100.0
    camera_fps: tuple[float, float] = (20.0, 12.5)  # front, wrist: every 5th and 8th physics step
    video_size: int = 96
    seed: int = 0


def _mujoco():  # noqa: ANN202
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import mujoco
    except ImportError:
        raise WdspqError("wdspq build sim needs MuJoCo: pip install 'wdspq[sim]' (or pip install mujoco)") from None
    return mujoco


def sim_episode(index: int, cfg: SimConfig) -> Episode:
    """One rendered episode (deterministic for `cfg.seed` and `index`)."""
    mujoco = _mujoco()
    rng = np.random.default_rng([cfg.seed, index])
    objects = "\n".join(
        f'<body pos="{x:.3f} {y:.3f} {z:.3f}"><freejoint/>{geom}</body>'
        for geom, (x, y, z) in zip(_OBJECTS, rng.uniform([-.35, -.35, .2], [.35, .15, .8], size=(4, 3)))
    )
    model = mujoco.MjModel.from_xml_string(_SCENE.format(dt=1.0 / cfg.physics_hz, size=cfg.video_size, objects=objects))
    data = mujoco.MjData(model)
    try:
        renderer = mujoco.Renderer(model, cfg.video_size, cfg.video_size)
    except Exception as e:  # no GL context: say what to install or set
        raise WdspqError(f"wdspq build sim: MuJoCo cannot render here ({type(e).__name__}: {e}); set MUJOCO_GL=egl before mujoco is first imported "
                         "(Mesa EGL) or MUJOCO_GL=osmesa (apt-get install libosmesa6)") from None
    steps = int(round(cfg.seconds * cfg.physics_hz))
    per_control = int(round(cfg.physics_hz / cfg.control_hz))
    target = np.zeros(2)
    ctrl = np.zeros(2)
    actions, action_ts, joints, joint_ts = [], [], [], []
    frames: dict[str, list[np.ndarray]] = {"front": [], "wrist": []}
    frame_ts: dict[str, list[float]] = {"front": [], "wrist": []}
    next_frame = {"front": 0.0, "wrist": 0.0}
    try:
        for k in range(steps):
            t = k / cfg.physics_hz
            if k % per_control == 0:  # the policy: a smoothed random walk of torques
                target = 0.8 * target + rng.normal(0, 0.6, 2)
                ctrl = np.clip(0.6 * ctrl + 0.4 * target, -1, 1)
                actions.append(ctrl.astype(np.float32))
                action_ts.append(t)
            data.ctrl[:] = ctrl
            mujoco.mj_step(model, data)
            joints.append(np.r_[data.qpos[:2], data.qvel[:2]].astype(np.float32))
            joint_ts.append(t)
            for cam, fps in zip(("front", "wrist"), cfg.camera_fps):
                if t + 1e-9 >= next_frame[cam]:
                    renderer.update_scene(data, cam)
                    frames[cam].append(renderer.render().copy())
                    frame_ts[cam].append(t)
                    next_frame[cam] += 1.0 / fps
    finally:
        renderer.close()
    cams = {c: (encode_clip(np.stack(frames[c]), fps=int(round(fps))), np.asarray(frame_ts[c]))
            for c, fps in zip(("front", "wrist"), cfg.camera_fps)}
    return Episode(episode_id=f"sim-{cfg.seed}-{index:06d}", text=TASKS[int(rng.integers(len(TASKS)))],
                   action_ts=np.asarray(action_ts), actions=np.stack(actions),
                   signals={"joints": (np.asarray(joint_ts), np.stack(joints))}, cameras=cams)


def build_sim(out: str | os.PathLike, episodes: int = 8, seconds: float = 4.0, video_size: int = 96, seed: int = 0,
              progress: bool = True, overwrite: bool = True, row_group_size: int = 8) -> TableMeta:
    """Render `episodes` simulated episodes into a version 2 table at `out`, atomically (see the module doc)."""
    if episodes < 1:
        raise SchemaError("episodes must be >= 1")
    cfg = SimConfig(seconds=float(seconds), video_size=int(video_size), seed=int(seed))
    streams = [actions_stream(2, ["tau_shoulder", "tau_elbow"]),
               signal_stream("joints", 4, ["q_shoulder", "q_elbow", "dq_shoulder", "dq_elbow"]),
               camera_stream("front", video_size, video_size, codec="ffv1", lossless=True),
               camera_stream("wrist", video_size, video_size, codec="ffv1", lossless=True)]
    with TableWriter(out, streams, row_group_size=row_group_size, overwrite=overwrite) as writer:
        for i in tqdm(range(episodes), desc=f"build {Path(out).name}", unit="ep", disable=not progress):
            writer.add(sim_episode(i, cfg))
        return writer.close(source=f"sim(seed={seed}, seconds={seconds}, video_size={video_size}, episodes={episodes})")
