"""Where the time goes: the operators that take the most self time in one call (torch.profiler)."""

from collections.abc import Callable
from typing import Any

from .settings import Runtime


def top_operators(function: Callable[[], Any], runtime: Runtime, limit: int | None = 10) -> list[dict[str, Any]]:
    """The operators that took the most self time in one call of `function` (torch.profiler); all with `limit=None`."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if runtime.is_cuda else [])
    with profile(activities=activities) as profiler:
        function()
        runtime.sync()
    events = profiler.key_averages()
    key = "self_device_time_total" if runtime.is_cuda else "self_cpu_time_total"
    total = sum(getattr(event, key) for event in events) or 1.0
    ranked = sorted(events, key=lambda event: getattr(event, key), reverse=True)[:limit]
    return [
        {
            "operator": event.key,
            "self_ms": round(getattr(event, key) / 1e3, 2),
            "share": round(getattr(event, key) / total, 4),
            "calls": event.count,
        }
        for event in ranked
    ]
