"""Fresh child processes for measurements that must not inherit anything (memory peaks above all), and the peak
memory of the process they run in."""

import contextlib
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from .settings import Runtime


# What the forkserver imports once: torch, transformers, modeling_cmt and cmt_training's arguments (and the FLOP
# formulas registered on import), everything a measurement needs before it builds a model.
FORKSERVER_PRELOAD = ["benchmarks.models"]

_MP_CONTEXT = None
_IN_ISOLATED_CHILD = False


def _status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_memory(runtime: Runtime) -> int:
    """Starts a new peak measurement and returns the current usage in bytes: CUDA allocator statistics on GPUs; the
    process's resident set on CPU (its high-water mark VmHWM is reset through /proc/self/clear_refs)."""
    if runtime.is_cuda:
        torch.cuda.reset_peak_memory_stats(runtime.device)
        return torch.cuda.memory_allocated(runtime.device)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    import psutil

    return psutil.Process().memory_info().rss


def peak_memory(runtime: Runtime) -> int:
    """Peak bytes since `reset_peak_memory`: CUDA allocator peak, or VmHWM (getrusage's max RSS if /proc lacks it)."""
    if runtime.is_cuda:
        return torch.cuda.max_memory_allocated(runtime.device)
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024


def _forkserver():
    """A forkserver that imports the libraries once (`FORKSERVER_PRELOAD`); every measurement then runs in a fresh
    child forked from it (milliseconds instead of a ~5 s import), whose memory holds nothing from earlier runs."""
    global _MP_CONTEXT
    if _MP_CONTEXT is None:
        _MP_CONTEXT = multiprocessing.get_context("forkserver")
        _MP_CONTEXT.set_forkserver_preload(FORKSERVER_PRELOAD)
    return _MP_CONTEXT


def _call_isolated(function: Callable, args: tuple, kwargs: dict):
    global _IN_ISOLATED_CHILD
    _IN_ISOLATED_CHILD = True
    return function(*args, **kwargs)


def run_isolated(function: Callable, *args, **kwargs):
    """Runs `function(*args, **kwargs)` in a fresh child process and returns its (picklable) result. A child that
    isolates again (a benchmark measuring memory per configuration) forks itself: it has run no computation yet, so
    it holds no thread pool or CUDA context that a fork could break, and it saves starting a second forkserver."""
    context = multiprocessing.get_context("fork") if _IN_ISOLATED_CHILD else _forkserver()
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:  # one task, then the child exits
        return pool.submit(_call_isolated, function, args, kwargs).result()
