"""Keep freed memory in the process while sampling on a CPU.

glibc's malloc serves blocks above its mmap threshold (at most 32 MiB) with fresh `mmap` pages and returns
them on free, and trims the heap's free top back to the kernel. A sampling batch of a few hundred images, with
two or three guided predictions per image, makes activations above that size at every layer of every step, so
each operator faults in and zeroes new pages: half of a step's time can go to the kernel. Raising both
thresholds, as `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` would at start-up, lets freed blocks be reused.
"""

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def user_tuned_malloc(environ: dict[str, str] = os.environ) -> bool:
    """Whether the environment already tunes glibc's malloc (its variables or `glibc.malloc` tunables)."""
    return any(name in environ for name in USER_SETTINGS) or "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")


def keep_freed_memory(limit: int = KEEP_BYTES) -> bool:
    """Have glibc reuse freed blocks up to `limit` bytes instead of unmapping them, and keep up to `limit`
    bytes of free heap. Returns whether the setting took effect: False off Linux, with another C library,
    or where the environment tunes malloc itself (left as the user set it)."""
    if not sys.platform.startswith("linux") or user_tuned_malloc():
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, limit)) and bool(mallopt(M_TRIM_THRESHOLD, limit))
