"""`python -m benchmarks --smoke` (what `make bench-smoke` runs), as that command from the repository root: every
benchmark runs end to end on tiny models and writes its results, so the benchmarks never rot. Tiny models say
nothing about the targets: no verdicts are given."""

import json
import math
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks import BENCHMARKS


REPO = Path(__file__).resolve().parents[2]


def test_every_benchmark_runs_tiny_and_writes_its_results(tmp_path):
    output = tmp_path / "results"
    command = ["-m", "benchmarks", "--smoke", "--output-dir", str(output), "--cache-dir", str(tmp_path / "cache")]
    completed = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert f"results in {output}" in completed.stdout

    for name in BENCHMARKS:
        payload = json.loads((output / f"{name}.json").read_text())
        assert payload["name"] == name and payload["settings"]["smoke"] is True
        assert payload["command"].startswith("python -m benchmarks --smoke")
        assert payload["machine"]["versions"]["torch"] == torch.__version__ and "git_commit" in payload["machine"]
        rows = payload["rows"]
        assert rows and not [row for row in rows if row["metric"] == "error"], rows
        assert all(row["met"] is None for row in rows)
        numbers = [row["value"] for row in rows if isinstance(row["value"], (int, float))]
        assert numbers and all(math.isfinite(value) for value in numbers), rows
    for plot in ("scaling_audio_length.png", "scaling_cross_layers.png"):
        assert (output / plot).stat().st_size > 10_000
    summary = (output / "summary.md").read_text()
    assert "python -m benchmarks --smoke" in summary
    assert all(f"| {name} |" in summary for name in BENCHMARKS)
