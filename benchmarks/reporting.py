"""The result format: a benchmark's rows (metric, value, target, verdict), details and notes; the machine it ran on;
`<output_dir>/<name>.json` written through `cmt_training.results` (atomic, valid JSON); the markdown table."""

import contextlib
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmt_training.results import environment_card, write_json

from .settings import Runtime, Settings


GIB = 1024**3


@dataclass
class Row:
    """One line of the results table. `met` is None for a measurement that has no target."""

    metric: str
    value: float | str
    unit: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Result:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, *args, **kwargs) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        return row


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def machine_info(runtime: Runtime | None = None) -> dict[str, Any]:
    """The hardware and its load, with the environment card's library versions and git commit."""
    import psutil

    card = environment_card()
    return {
        "platform": card["machine"],
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(psutil.virtual_memory().total / GIB, 1),
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "gpu": torch.cuda.get_device_name(runtime.device) if runtime is not None and runtime.is_cuda else None,
        "versions": {**card["versions"], "numpy": np.__version__},
        "git_commit": card["git_commit"],
        "git_dirty": card["git_dirty"],
    }


def write_result(result: Result, settings: Settings, seconds: float, command: str) -> Path:
    """`<output_dir>/<name>.json`: the rows, the details, the settings, the machine and the command."""
    payload = {
        "name": result.name,
        "title": result.title,
        "command": command,
        "settings": settings.describe(),
        "machine": machine_info(settings.runtime),
        "wall_seconds": round(seconds, 1),
        "rows": [asdict(row) for row in result.rows],
        "notes": result.notes,
        "details": result.details,
    }
    return write_json(settings.output_dir / f"{result.name}.json", payload)


def format_value(value: float | str | None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if value != value:
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def markdown_table(results: list[Result]) -> str:
    lines = ["| benchmark | metric | value | target | met | note |", "|---|---|---|---|---|---|"]
    marks = {True: "yes", False: "**no**", None: ""}
    for result in results:
        for row in result.rows:
            value = f"{format_value(row.value)} {row.unit}".strip()
            lines.append(f"| {result.name} | {row.metric} | {value} | {row.target} | {marks[row.met]} | {row.note} |")
    return "\n".join(lines)
