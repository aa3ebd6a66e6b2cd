"""benchmarks/probes.py runs and records what benchmarks/README.md quotes (tiny preset, CPU)."""

import json

import pytest

from benchmarks import probes


@pytest.mark.parametrize("name", ["positional_conv", "cross_stack"])
def test_probe_writes_its_numbers(name, tmp_path, capsys):
    probes.main([name, "--preset", "tiny", "--output-dir", str(tmp_path)])
    payload = json.loads((tmp_path / f"probe_{name}.json").read_text())
    result = payload["result"]
    assert payload["probe"] == name and payload["preset"] == "tiny" and payload["device"] == "cpu"
    assert f"-> {tmp_path / f'probe_{name}.json'}" in capsys.readouterr().out
    if name == "positional_conv":
        for key in ("kernel_conv_forward_ms", "kernel_fft_forward_backward_ms", "model_fft_train_step_ms"):
            assert result[key] > 0
        # the two implementations compute the same model (float32 rounding apart)
        assert 0 <= result["model_fp32_logits_max_abs_difference"] < 1e-4
    else:
        assert result["train_step_flops"] > 0 and result["train_step_seconds"] > 0
        assert 0 < result["share_of_matmul_peak"] < 2
