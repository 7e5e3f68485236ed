"""How this process returns freed memory to the system (glibc's malloc; elsewhere a no-op).

Feature caching frees a large float32 batch after keeping its float16 copy, over and over. With
glibc's default (dynamic) mmap threshold those batches come to live in the heap, and the heap
cannot shrink past the cached views allocated after them: on DeepPCB under the tile policy a
process grew to ~3x its live tensors (BENCHMARKS.md, ablation). A fixed threshold serves every
block above it by mmap, so it goes back to the system the moment it is freed (measured 1.2x).
"""
from __future__ import annotations

import ctypes
import sys

MMAP_THRESHOLD = 128 * 1024  # bytes; the same value benchmarks give their child processes by env
_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)


def return_large_blocks() -> bool:
    """Fix glibc's mmap threshold for the rest of this process; False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl and other libcs without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
