"""The benchmarks package and the example scripts' folder on sys.path (neither is installed)."""

import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session", autouse=True)
def benchmarks_on_path():
    added = [path for path in (str(REPO), str(REPO / "examples")) if path not in sys.path]
    sys.path[:0] = added
    yield
    for path in added:
        sys.path.remove(path)
