"""Process-wide settings that make CPU passes fast; applied once when neuroscope is imported.

glibc returns every freed block above a (dynamic) threshold to the OS and maps fresh
pages for the next one. A forward+backward allocates and frees hundreds of MB of
activations, so on the CPU a large part of each pass went to page faults: measured on
drivescene-seg at 256x512, a forward took 38-45 ms with the defaults and 24-27 ms with
freed memory kept for reuse; an all-layer capture 138-148 ms vs 75 ms. Two knobs fix it:
blocks below 32 MB come from the heap (M_MMAP_THRESHOLD), and up to 1 GB of free heap is
kept rather than trimmed (M_TRIM_THRESHOLD). TensorFlow's own allocator gets the same
effect from TF_CPU_ALLOCATOR_USE_BFC.

Opt out with NEUROSCOPE_TUNE_MALLOC=0. A no-op off glibc (macOS, Windows, musl).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20      # glibc's maximum on 64-bit
TRIM_THRESHOLD = 1 << 30

_tuned: bool | None = None


def tune_allocator() -> bool:
    """Apply the malloc settings once; True when they are in effect."""
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if os.environ.get("NEUROSCOPE_TUNE_MALLOC", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _tuned = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _tuned
