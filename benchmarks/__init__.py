"""CMT benchmarks: what training and inference cost, measured as ratios taken in the same run.

`python -m benchmarks` (or `make bench`) runs every benchmark, prints a table and writes
`benchmarks/results/<name>.json`; `python -m benchmarks --smoke` (`make bench-smoke`) runs all of them on tiny models
in seconds so they never rot. See benchmarks/README.md for the latest results.

This module imports nothing heavy, so `python -m benchmarks` can set OpenMP's environment before torch loads.
"""

BENCHMARKS = (
    "hardware_efficiency",
    "cross_modal_cost",
    "finetune_throughput",
    "tower_cache",
    "memory",
    "data_pipeline",
    "inference",
    "scaling",
    "export",
    "timeline",
)
