"""CPU runtime of the training scripts: glibc's malloc settings for PyTorch's activation buffers, and multi-process
launches on machines without GPUs (gloo DDP)."""

import ctypes
import logging
import os
import sys

import torch


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


def launched_world_size() -> int:
    """How many processes the launcher (accelerate launch, torchrun) started for this job; 1 for a plain run."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def use_gloo_without_gpus() -> bool:
    """
    Makes a multi-process launch on a machine without GPUs one gloo DDP job. accelerate's multi-process launcher
    (`accelerate launch --multi_gpu --num_processes N`, or `examples/accelerate_configs/cpu_ddp.yaml`) starts the N
    processes with `ACCELERATE_USE_CPU=False`, and `TrainingArguments` then sets each up as a lone process: N
    independent trainings racing on one output folder. Must run before the `TrainingArguments` are built (they set
    up the devices when constructed). Returns whether it switched the processes to CPU DDP.
    """
    if launched_world_size() <= 1 or torch.cuda.is_available():
        return False
    os.environ["ACCELERATE_USE_CPU"] = "true"
    return True


def check_world_size(training_args) -> None:
    """Refuses a run whose processes do not form the job the launcher started (e.g. every rank training alone)."""
    launched = launched_world_size()
    if launched > 1 and training_args.world_size != launched:
        raise RuntimeError(
            f"This process is one of {launched} started by the launcher (WORLD_SIZE={launched}), but training would "
            f"run with world size {training_args.world_size}: the processes would train independently and overwrite "
            "each other's output. Launch with `accelerate launch --multi_gpu --num_processes N ...` (GPUs, or CPUs "
            "with gloo) or `--config_file examples/accelerate_configs/cpu_ddp.yaml`."
        )
