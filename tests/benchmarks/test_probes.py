"""`python -m benchmarks.probes <name>` (as benchmarks/README.md documents it, from the repository root) runs and
records what the README quotes; here on the tiny preset, CPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["positional_conv", "cross_stack"])
def test_probe_writes_its_numbers(name, tmp_path):
    command = ["-m", "benchmarks.probes", name, "--preset", "tiny", "--output-dir", str(tmp_path)]
    completed = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    path = tmp_path / f"probe_{name}.json"
    assert f"-> {path}" in completed.stdout
    payload = json.loads(path.read_text())
    result = payload["result"]
    assert payload["probe"] == name and payload["preset"] == "tiny" and payload["device"] == "cpu"
    assert "git_commit" in payload["machine"]
    if name == "positional_conv":
        for key in ("kernel_conv_forward_ms", "kernel_fft_forward_backward_ms", "model_fft_train_step_ms"):
            assert result[key] > 0
        # the two implementations compute the same model (float32 rounding apart)
        assert 0 <= result["model_fp32_logits_max_abs_difference"] < 1e-4
    else:
        assert result["train_step_flops"] > 0 and result["train_step_seconds"] > 0
        assert 0 < result["share_of_matmul_peak"] < 2


@pytest.mark.slow  # about 2.5 minutes: seven run_finetune.py processes
def test_parallel_runs_times_both_ways(tmp_path):
    """Two run_finetune.py runs one after the other and both at once (one round, the tiny preset)."""
    command = ["-m", "benchmarks.probes", "parallel_runs", "--preset", "tiny", "--rounds", "1", "--output-dir",
               str(tmp_path)]  # fmt: skip
    completed = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    result = json.loads((tmp_path / "probe_parallel_runs.json").read_text())["result"]
    assert len(result["sequential_seconds"]) == len(result["parallel_seconds"]) == 1
    assert result["sequential_seconds"][0] > 0 and result["parallel_seconds"][0] > 0
    assert result["speedup_median"] == result["sequential_seconds"][0] / result["parallel_seconds"][0]
    assert result["threads_per_run_at_once"] == max(1, result["cores"] // 2)
