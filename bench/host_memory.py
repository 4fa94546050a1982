"""Host memory: keep the memory a training step frees for the next step.

glibc's malloc serves every block above its mmap threshold (128 KiB, rising to at most
32 MiB) with its own ``mmap`` and gives it back with ``munmap`` when freed; it also trims
the heap's free top above a threshold. A CPU training step allocates and frees its
activations and gradients (tens of MiB each), so each step the kernel maps those pages
again and zero-fills them on first touch: a large share of a CPU step's time, measured by
``benchmarks/host_memory_faults.py`` (reports/performance.md, "Host memory").

``retain_freed_memory`` turns both off for the process (``mallopt(M_MMAP_MAX, 0)``,
``mallopt(M_TRIM_THRESHOLD, 2 GiB)``), the programmatic form of glibc's
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` environment tuning. It changes where
memory comes from, never a computed value. The cost is a resident set that stays near the
process's peak; ``release_freed_memory`` (``malloc_trim``) hands the free part back, as the
runner does between cells so that each cell's peak-memory figure is its own.

Elsewhere (macOS, musl, Windows) both are no-ops and report so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

HOST_MEMORY_MODES = ("retain", "system")  # retain: keep freed memory in the process

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: the largest, 2 GiB


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def retain_freed_memory() -> bool:
    """Keep freed host memory in the process for reuse; whether it took effect."""
    libc = _glibc()
    if libc is None:
        return False
    # Order matters: with mmap still allowed, a fixed trim threshold alone would also fix
    # the mmap threshold at 128 KiB (glibc stops adapting it) and fault far more.
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )


def release_freed_memory() -> bool:
    """Give the heap's free memory back to the system; whether any was released."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def apply(mode: str) -> bool:
    """Apply a ``--host-memory`` mode; ``system`` leaves the allocator as it is."""
    if mode not in HOST_MEMORY_MODES:
        raise ValueError(f"host memory mode {mode!r} is not one of {HOST_MEMORY_MODES}")
    return retain_freed_memory() if mode == "retain" else False
