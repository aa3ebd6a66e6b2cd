"""What a run writes about itself: JSON files written atomically and always valid, the environment card (versions,
commit, command) and mean ± std over folds or seeds. `benchmarks/` writes its results with the same functions."""

import json
import math
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np


PACKAGE_DIR = Path(__file__).resolve().parent


def to_jsonable(value: Any) -> Any:
    """`value` with NumPy scalars and arrays, paths and tuples turned into JSON types, and NaN / ±Inf into `None`
    (JSON has no NaN: `json.dumps` would write the invalid token `NaN`)."""
    if isinstance(value, dict):
        return {str(key): to_jsonable(inner) for key, inner in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(inner) for inner in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Writes `payload` as indented JSON through a temporary file and a rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(to_jsonable(payload), indent=2, allow_nan=False) + "\n")
    os.replace(temporary, path)
    return path


def git_state(directory: str | os.PathLike = PACKAGE_DIR) -> dict[str, Any]:
    """The commit checked out where `directory` lives and whether the tree has uncommitted changes (None outside
    a git checkout, e.g. for an installed wheel)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=directory, capture_output=True, text=True)
        return {"git_commit": commit, "git_dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "git_dirty": None}


def command_line(script: str | os.PathLike | None = None, argv: list[str] | None = None) -> str:
    """The command that started this run, as a shell would type it: `python <script> <argv...>`."""
    if script is None:
        return shlex.join(sys.argv)
    arguments = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", os.path.relpath(script) if Path(script).is_absolute() else str(script), *arguments])


def environment_card(command: str | None = None) -> dict[str, Any]:
    """Versions of the stack, the commit and the command: what a result needs to be reproduced."""
    import accelerate
    import datasets
    import torch
    import transformers

    import modeling_cmt

    return {
        "versions": {
            "modeling_cmt": modeling_cmt.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "datasets": datasets.__version__,
            "accelerate": accelerate.__version__,
            "python": platform.python_version(),
        },
        **git_state(),
        "command": command or command_line(),
        "machine": platform.platform(),
    }


def aggregate(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, sample standard deviation and count of every numeric metric that all runs (folds or seeds) have."""
    names = sorted(set.intersection(*(set(run) for run in runs))) if runs else []
    summary = {}
    for name in names:
        values = np.array([run[name] for run in runs], dtype=float)
        summary[name] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "n": len(values),
        }
    return summary
