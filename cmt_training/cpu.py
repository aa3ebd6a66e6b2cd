"""CPU runtime tuning for the training scripts: glibc's malloc settings for PyTorch's activation buffers."""

import ctypes
import logging
import sys


logger = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD_MAX = 32 * 1024**2  # glibc's largest allowed value on 64-bit systems


def tune_cpu_allocator() -> bool:
    """
    Makes glibc's malloc keep freed memory for reuse: blocks up to 32 MiB come from the heap instead of fresh
    mmaps, and the heap is not trimmed back to the OS after every large free. PyTorch's CPU allocator has no cache
    of its own, so with glibc's adaptive defaults a training step's activation buffers (a CMT-4 step at 4 x 5 s
    allocates ~12 MiB attention and feed-forward tensors by the hundred) are unmapped when freed and page-faulted
    back on their next use: elementwise ops then run several times slower (benchmarks/README.md, "Cost of the
    cross-modal stack"). The price is that the process keeps its peak heap instead of shrinking between steps.
    Returns whether the settings were applied (False off Linux/glibc).
    """
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        applied = (
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
            and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
            and libc.mallopt(M_TOP_PAD, 64 * 1024**2)
        )
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    return bool(applied)


def apply_cpu_allocator_tuning(training_args) -> bool:
    """Calls `tune_cpu_allocator` for a CPU run whose `--cpu_allocator_tuning` is on (the default); logs the result."""
    if not (getattr(training_args, "cpu_allocator_tuning", False) and training_args.device.type == "cpu"):
        return False
    applied = tune_cpu_allocator()
    if applied:
        logger.info("CPU run: glibc malloc keeps freed activation memory (--cpu_allocator_tuning false: off).")
    return applied
