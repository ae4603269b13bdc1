"""Keep freed memory for reuse in DataLoader workers (glibc malloc), instead of handing it back to the OS.

Why: a worker decodes into large short-lived buffers (a frame pack of several MB, records of ~170 KB on the
sim table) and frees a block's worth of them at once. glibc then trims the top of the heap (its dynamic
threshold follows the largest freed chunk) and the next block faults the same memory in again, page by
page: measured on the shared-frames sim export, ~14 page faults a sample and a worker's CPU per sample
1.3x that of the same work in the main process, where longer-lived allocations happen to keep the heap
top from being trimmed. Fixed thresholds (`mallopt`) end that: allocations up to MMAP_THRESHOLD come from
the heap and up to TRIM_THRESHOLD of freed heap stays mapped for the next block. Only in DataLoader worker
processes (which exist to load data), once each; nothing on other C libraries, or when the user set either
threshold through glibc's environment variables.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest dynamic threshold (64-bit): a pack or a record comes from the heap
TRIM_THRESHOLD = 128 * 2**20  # freed heap kept for reuse, at most (a few blocks' decode)

_done_pid: int | None = None


def keep_freed_memory() -> bool:
    """Set this process's glibc malloc thresholds (see the module doc), once per process; False where it does
    not apply (not glibc, or thresholds set by the user)."""
    global _done_pid
    if _done_pid == os.getpid():
        return True
    _done_pid = os.getpid()
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "MALLOC_TRIM_THRESHOLD_" in os.environ or "MALLOC_MMAP_THRESHOLD_" in os.environ or "_threshold" in tunables:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # this process's symbols (glibc's); find_library would run ldconfig
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
