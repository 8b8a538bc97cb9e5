"""Keep freed memory inside the process on Linux (glibc), so that CPU training stops paying page faults every step.

PyTorch's CPU allocator is plain ``malloc``. Each training step allocates and frees the same activation buffers (up to
~26 MB each at batch 128); glibc returns big freed blocks to the kernel (``mmap``/trim), so the next step touches
fresh pages and takes a page fault per 4 KiB: about 20,000 faults per step for the default UNet. Serving blocks up to
32 MiB from the heap and never trimming it keeps those pages; the process holds on to its peak memory instead.
Measured in ``benchmarks/bench_train.py`` (``--no_tune_allocator`` for the A/B; benchmarks/RESULTS.md).
"""

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

# mallopt parameter numbers, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above 32 MiB on 64-bit (HEAP_MAX_SIZE / 2); mallopt takes a C int.
MMAP_THRESHOLD_BYTES = 32 * 2**20
TRIM_THRESHOLD_BYTES = 2**31 - 1


def keep_freed_memory() -> bool:
    """Ask glibc to serve blocks up to 32 MiB from its heap and never give the heap back to the kernel.

    Returns True when both settings took effect, False where they cannot (not Linux, no glibc ``mallopt``, e.g. musl
    or macOS): there nothing changes, training only runs as it did.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; musl's stub returns 0 for everything
    applied = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    applied = applied and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    if not applied:
        logger.info("mallopt refused the allocator settings; CPU training runs with the default allocator.")
    return applied
