"""Process-wide settings that make CPU passes fast; applied once when neuroscope is imported.

glibc returns every freed block above a (dynamic) threshold to the OS and maps fresh
pages for the next one. A forward+backward allocates and frees hundreds of MB of
activations, so on the CPU a large part of each pass went to page faults: measured on
drivescene-seg at 256x512, a forward took 38-45 ms with the defaults and 24-27 ms with
freed memory kept for reuse; an all-layer capture 138-148 ms vs 75 ms. Two knobs fix it:
blocks below 32 MB come from the heap (M_MMAP_THRESHOLD), and up to 1 GB of free heap is
kept rather than trimmed (M_TRIM_THRESHOLD). TensorFlow's own allocator gets the same
effect from TF_CPU_ALLOCATOR_USE_BFC.

Kept free memory is per malloc arena, and glibc gives threads their own arenas (up to 8
per core): a server whose script runs, prefetches and jobs run in ever new threads could
keep up to the trim threshold in each. The number of arenas is capped at
NEUROSCOPE_MALLOC_ARENAS (default 2, M_ARENA_MAX; effective for arenas created after
neuroscope is imported, i.e. nearly all in a server).

Opt out with NEUROSCOPE_TUNE_MALLOC=0. A no-op off glibc (macOS, Windows, musl). A
long-lived process bounds what is kept with `trim_above` (the dashboard: after each script
run, above the limit server_rss_soft_bytes).

OpenBLAS (numpy's and scipy's) gets one thread: its idle workers spin for a while after
every matrix product, and on a 2-core machine they then take a core from the framework's
next pass. Measured on drivescene-seg: a batch-4 forward right after one small numpy
matmul took 189-224 ms instead of 120-173 ms; RISE and Score-CAM ran their passes 1.6-1.8x
slower than the same passes alone. Neuroscope's own products are small (map resizes, CAM
weights); the frameworks keep their own thread pools. Opt out: NEUROSCOPE_BLAS_THREADS=0,
or set another count.

Framework threads on a shared, busy machine (`configure_threads`): torch's OpenMP workers
spin-wait between parallel regions by default; when other processes hold the cores, a
spinning worker is descheduled while the others wait for it at every barrier, and a forward
of drivescene-seg took ~1.0 s instead of ~0.14 s (2 cores under load, scripts/bench_threads.py;
docs/benchmark.md). OMP_WAIT_POLICY=PASSIVE (workers sleep at barriers) removes the
collapse and costs little on an idle machine; it is set before torch is imported unless
the environment already sets it (opt out: NEUROSCOPE_OMP_WAIT_POLICY=ACTIVE). Thread
counts stay the frameworks' defaults (one per core) unless NEUROSCOPE_THREADS=N, which
sets torch's intra-op threads and TensorFlow's intra- and inter-op threads to N.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 32 << 20      # glibc's maximum on 64-bit
TRIM_THRESHOLD = 1 << 30

_tuned: bool | None = None
_glibc = None   # the C library once tune_allocator found glibc's mallopt (trim_above reuses it)


def tune_allocator() -> bool:
    """Apply the malloc settings once; True when they are in effect."""
    global _tuned, _glibc
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
    _glibc = libc
    try:
        arenas = int(os.environ.get("NEUROSCOPE_MALLOC_ARENAS", "2"))
    except ValueError:
        arenas = 2
    if arenas > 0:
        mallopt(M_ARENA_MAX, arenas)
    return _tuned


def rss_bytes() -> int:
    """This process's resident set size (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def trim_above(limit_bytes: int) -> bool:
    """Return freed heap to the OS (glibc malloc_trim) when RSS is above `limit_bytes`.

    The tuned allocator keeps freed memory for reuse (fast passes); a long-lived server
    calls this after each unit of work, so what is kept stays bounded: RSS above the
    limit costs one trim (a few ms, then page faults on the next pass), below it nothing.
    True when a trim ran."""
    if not _tuned or _glibc is None or limit_bytes <= 0 or rss_bytes() <= limit_bytes:
        return False
    trim = getattr(_glibc, "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True


_blas_limited: int | None = None


def limit_blas_threads() -> int:
    """Set every loaded OpenBLAS (numpy's, scipy's) to NEUROSCOPE_BLAS_THREADS threads
    (default 1); returns how many libraries were set. Before numpy is imported the
    environment variable does it; afterwards the libraries' own setter."""
    global _blas_limited
    if _blas_limited is not None:
        return _blas_limited
    _blas_limited = 0
    try:
        n = int(os.environ.get("NEUROSCOPE_BLAS_THREADS", "1"))
    except ValueError:
        n = 1
    if n <= 0:
        return 0
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(n))   # for a numpy imported later
    if "numpy" not in sys.modules:
        return 0
    import numpy
    import importlib.util
    dirs = [os.path.join(os.path.dirname(os.path.dirname(numpy.__file__)), "numpy.libs")]
    scipy_spec = importlib.util.find_spec("scipy")
    if scipy_spec is not None and scipy_spec.origin:
        dirs.append(os.path.join(os.path.dirname(os.path.dirname(scipy_spec.origin)), "scipy.libs"))
    for d in dirs:
        for path in glob.glob(os.path.join(d, "*openblas*.so*")):
            try:
                lib = ctypes.CDLL(path)     # already loaded by numpy: the same handle
            except OSError:
                continue
            for name in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                         "openblas_set_num_threads64_", "openblas_set_num_threads"):
                setter = getattr(lib, name, None)
                if setter is not None:
                    setter.argtypes, setter.restype = [ctypes.c_int], None
                    setter(n)
                    _blas_limited += 1
                    break
    return _blas_limited


_threads_configured = False


def configure_threads() -> dict[str, str]:
    """Set the OpenMP wait policy (and NEUROSCOPE_THREADS counts) before the frameworks
    load; returns the settings in effect. Idempotent."""
    global _threads_configured
    policy = os.environ.get("NEUROSCOPE_OMP_WAIT_POLICY", "PASSIVE").strip().upper() or "PASSIVE"
    if not _threads_configured:
        _threads_configured = True
        os.environ.setdefault("OMP_WAIT_POLICY", policy)
        n = os.environ.get("NEUROSCOPE_THREADS", "").strip()
        if n.isdigit() and int(n) > 0:
            for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
                os.environ.setdefault(var, n)
            if "torch" in sys.modules:   # imported before neuroscope: set the pool directly
                sys.modules["torch"].set_num_threads(int(n))
    return {k: os.environ.get(k, "") for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")}
