"""Table builders: each turns a source (synthetic generator, seed table, HDF5 logs, LeRobot, robomimic, MuJoCo)
into the canonical table."""

from .common import parse_episodes
from .hdf5 import Hdf5Layout, build_from_hdf5, ns_to_seconds
from .lerobot import build_from_lerobot
from .robomimic import build_from_robomimic
from .seed import build_from_seed
from .sim import build_sim
from .synthetic import build_synthetic

__all__ = ["Hdf5Layout", "build_from_hdf5", "build_from_lerobot", "build_from_robomimic", "build_from_seed",
           "build_sim", "build_synthetic", "ns_to_seconds", "parse_episodes"]
