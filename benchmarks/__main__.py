"""`python -m benchmarks [names] [--smoke]`: see `benchmarks/runner.py` for the options."""

import os


# GNU OpenMP's threads spin at barriers by default; when another CPU-heavy job shares this 2-core machine, the spinning
# thread starves its partner and a tiny train step became ~100x slower. Passive waiting must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from benchmarks.runner import main  # noqa: E402


if __name__ == "__main__":
    raise SystemExit(main())
