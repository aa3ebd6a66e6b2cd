"""Runs the benchmarks, prints the table and writes one JSON file per benchmark (and `summary.md`).

python -m benchmarks                         # all, base-size towers, results in benchmarks/results/
python -m benchmarks memory scaling          # some of them
python -m benchmarks --smoke                 # all, tiny, results in a temporary folder
python -m benchmarks --device cuda           # the GPU path: bf16 autocast, CUDA memory statistics
"""

import argparse
import importlib
import json
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from cmt_training.cpu import tune_cpu_allocator

from . import BENCHMARKS
from .isolation import run_isolated
from .reporting import Result, Row, machine_info, markdown_table, write_result
from .settings import DEFAULT_CACHE_DIR, RESULTS_DIR, Settings


def parse_settings(argv: list[str] | None) -> tuple[Settings, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--smoke", action="store_true", help="tiny models and inputs: checks that everything runs")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="fp32, bf16 or fp16 autocast (default: fp32 on CPU, bf16 GPU)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds per timed measurement (default 3; smoke 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default on CPU: 1, see README)")
    parser.add_argument(
        "--output-dir", type=Path, default=None, help="default: benchmarks/results (smoke: a temp dir)"
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="corpora and tower caches")
    args = parser.parse_args(argv)

    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; available: {', '.join(BENCHMARKS)}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    output_dir = args.output_dir
    if output_dir is None:
        output_dir = Path(tempfile.mkdtemp(prefix="cmt-bench-smoke-")) if args.smoke else RESULTS_DIR
    settings = Settings(
        smoke=args.smoke,
        device=device,
        dtype=args.dtype or ("bf16" if device == "cuda" else "fp32"),
        repeats=args.repeats or (1 if args.smoke else 3),
        threads=args.threads or (1 if device == "cpu" else None),
        output_dir=output_dir,
        cache_dir=args.cache_dir,
    )
    return settings, list(args.names) or list(BENCHMARKS)


def run_one(name: str, settings: Settings) -> Result:
    """Runs one benchmark (in a fresh child process: see `run_benchmarks`); a failure becomes an error row."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    module = importlib.import_module(f"benchmarks.{name}")
    if settings.device != "cuda" and getattr(module, "CPU_ALLOCATOR_TUNING", True):  # no CUDA init before forks
        tune_cpu_allocator()  # as run_finetune.py / run_pretrain.py do on CPU
    try:
        result = module.run(settings)
    except Exception as error:  # noqa: BLE001 - reported in the table and the exit code
        traceback.print_exc()
        result = Result(name, module.TITLE, [Row("error", f"{type(error).__name__}: {error}", met=False)])
    if settings.smoke:  # tiny models say nothing about the targets
        for row in result.rows:
            row.met = None if row.metric != "error" else row.met
    return result


def run_benchmarks(settings: Settings, names: list[str], command: str) -> list[Result]:
    """Runs the named benchmarks in order, each in a fresh child process, so that none inherits another's memory,
    threads or compiled kernels; a failure is reported as a row and the others still run."""
    results = []
    for name in names:
        title = importlib.import_module(f"benchmarks.{name}").TITLE
        print(f"[{name}] {title} ...", flush=True)
        started = time.perf_counter()
        try:
            result = run_isolated(run_one, name, settings)
        except Exception as error:  # noqa: BLE001 - e.g. the child was killed for memory
            result = Result(name, title, [Row("error", f"{type(error).__name__}: {error}", met=False)])
        seconds = time.perf_counter() - started
        path = write_result(result, settings, seconds, command)
        print(markdown_table([result]).split("\n", 2)[-1], flush=True)
        print(f"[{name}] {seconds:.0f} s -> {path}", flush=True)
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    settings, names = parse_settings(argv)
    command = "python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else argv)
    machine = machine_info(settings.runtime)
    print(f"{machine['cpu']} x{machine['cpu_count']}, {machine['memory_gib']} GiB, torch {torch.__version__}, ")
    print(f"load average {machine['load_average']}, settings {settings.describe()}", flush=True)
    results = run_benchmarks(settings, names, command)
    print(markdown_table(results))
    write_summary(settings.output_dir)
    print(f"results in {settings.output_dir}")
    failed = [result.name for result in results if any(row.metric == "error" for row in result.rows)]
    return 1 if failed else 0


def write_summary(output_dir: Path):
    """`summary.md`: the latest result of every benchmark in `output_dir` (runs of a subset update only their rows),
    with the command, time and machine load of each."""
    results, runs = [], []
    for name in BENCHMARKS:
        path = output_dir / f"{name}.json"
        if not path.is_file():
            continue
        payload = json.loads(path.read_text())
        results.append(Result(name, payload["title"], [Row(**row) for row in payload["rows"]]))
        machine = payload["machine"]
        runs.append(
            f"- {name}: `{payload['command']}`, {payload['wall_seconds']:.0f} s, load average "
            f"{machine['load_average']}, commit {str(machine['git_commit'])[:10]}{' (dirty)' if machine['git_dirty'] else ''}"
        )
    if results:
        machine = json.loads((output_dir / f"{results[0].name}.json").read_text())["machine"]
        gpu = f"{machine['gpu']}, " if machine.get("gpu") else ""
        (output_dir / "summary.md").write_text(
            f"Machine: {gpu}{machine['cpu']}, {machine['cpu_count']} cores, {machine['memory_gib']} GiB, torch "
            f"{machine['versions']['torch']}, transformers {machine['versions']['transformers']} (each run's load "
            f"average below)\n\n{markdown_table(results)}\n\nRuns:\n" + "\n".join(runs) + "\n"
        )
