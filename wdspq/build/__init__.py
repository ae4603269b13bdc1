"""Table builders: each turns a source (synthetic generator, seed table, HDF5 logs) into the canonical table."""

from .hdf5 import Hdf5Layout, build_from_hdf5, ns_to_seconds
from .seed import build_from_seed
from .sim import build_sim
from .synthetic import build_synthetic

__all__ = ["Hdf5Layout", "build_from_hdf5", "build_from_seed", "build_sim", "build_synthetic", "ns_to_seconds"]
