"""benchmarks/reporting.py: a result is written as valid JSON (a NaN or infinite measurement becomes null) and shows
as "n/a" in the table and the summary."""

import json
import math

import numpy as np
import pytest

from benchmarks.reporting import Result, format_value, write_result
from benchmarks.runner import write_summary
from benchmarks.settings import Settings


def strict_json(text: str):
    return json.loads(text, parse_constant=lambda token: pytest.fail(f"invalid JSON token {token}"))


def test_result_with_nan_is_written_as_valid_json(tmp_path):
    settings = Settings(smoke=True, output_dir=tmp_path)
    result = Result("memory", "Peak memory")
    result.add("peak saved", float("nan"), "%", target=">= 40 %", met=False)
    result.add("largest batch", np.int64(18))
    result.details = {"rounds": np.array([1.5, math.inf]), "fit": {"slope": np.float32(0.25)}, "sizes": (1, 2)}

    path = write_result(result, settings, seconds=1.234, command="python -m benchmarks memory --smoke")

    assert path == tmp_path / "memory.json" and not list(tmp_path.glob("*.tmp"))
    payload = strict_json(path.read_text())
    assert [row["value"] for row in payload["rows"]] == [None, 18]
    assert payload["details"] == {"rounds": [1.5, None], "fit": {"slope": 0.25}, "sizes": [1, 2]}
    assert payload["wall_seconds"] == 1.2 and payload["settings"]["output_dir"] == str(tmp_path)
    assert {"git_commit", "git_dirty", "cpu", "load_average"} <= set(payload["machine"])
    assert set(payload["machine"]["versions"]) >= {"torch", "transformers", "numpy", "modeling_cmt"}

    write_summary(tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "| memory | peak saved | n/a % | >= 40 % | **no** |" in summary
    assert "`python -m benchmarks memory --smoke`, 1 s" in summary


@pytest.mark.parametrize(
    "value, shown",
    [
        (None, "n/a"),
        (float("nan"), "n/a"),
        ("1.0 / 2.0", "1.0 / 2.0"),
        (1234.4, "1,234"),
        (12.34, "12.3"),
        (0.01234, "0.0123"),
    ],
)
def test_format_value(value, shown):
    assert format_value(value) == shown
