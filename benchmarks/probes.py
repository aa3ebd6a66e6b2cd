"""One-off measurements behind statements in benchmarks/README.md that are not benchmarks with targets.

    python -m benchmarks.probes positional_conv [--device cuda]   # HuBERT's positional convolution: cuDNN/oneDNN vs FFT
    python -m benchmarks.probes cross_stack                       # the cross-modal layers alone, from tower outputs
    python -m benchmarks.probes compile --device cuda             # torch.compile on a CMT-4 train step
    python -m benchmarks.probes parallel_runs --preset demo       # two fine-tuning runs at once vs one after the other

Each prints its numbers and writes `results/probe_<name>.json` (`results/h100/...` with `--output-dir`).
"""

import argparse
import statistics
import time
from pathlib import Path

import torch

from cmt_training.data import SAMPLING_RATE
from cmt_training.results import write_json
from modeling_cmt.tower_patches import fft_grouped_conv1d

from .flops import count_flops
from .models import build_classifier, forward_function, random_batch, train_step_function
from .reporting import machine_info
from .settings import RESULTS_DIR, Runtime
from .timing import matmul_rate, peak_matmul_size


def mean_seconds(function, runtime: Runtime, calls: int, warmup: int = 2) -> float:
    """Mean wall-clock seconds of `calls` back-to-back calls after `warmup` calls, synchronised on GPUs."""
    for _ in range(warmup):
        function()
    runtime.sync()
    start = time.perf_counter()
    for _ in range(calls):
        function()
    runtime.sync()
    return (time.perf_counter() - start) / calls


def mixed_lengths(runtime: Runtime) -> list[int]:
    """Batch of 4 (CPU) or 32 (GPU) utterances of 5, 4, 3 and 5 s."""
    return [80000, 64000, 48000, 80000] * (8 if runtime.is_cuda else 1)


def positional_conv(runtime: Runtime, preset: str) -> dict:
    """The grouped 128-tap positional convolution alone (768 channels, 16 groups, 249 frames = 5 s) by the
    framework's convolution and by `fft_grouped_conv1d`, then CMT-4 with `positional_conv_implementation` "fft" and
    "conv" (same weights) on a batch of mixed lengths."""
    batch = 32 if runtime.is_cuda else 4
    calls = 10 if runtime.is_cuda else 3
    conv = torch.nn.Conv1d(768, 768, 128, padding=64, groups=16).to(runtime.device)
    inputs = torch.randn(batch, 768, 249, device=runtime.device, requires_grad=True)
    kernels = {
        "conv": lambda: conv(inputs),
        "fft": lambda: fft_grouped_conv1d(inputs, conv.weight, conv.bias, 64, 16),
    }
    result = {"kernel_batch": batch}
    for name, kernel in kernels.items():

        def forward(kernel=kernel):
            with torch.no_grad(), runtime.autocast():
                kernel()

        def forward_backward(kernel=kernel):
            with runtime.autocast():
                output = kernel()
            output.float().sum().backward()

        result[f"kernel_{name}_forward_ms"] = 1e3 * mean_seconds(forward, runtime, calls)
        result[f"kernel_{name}_forward_backward_ms"] = 1e3 * mean_seconds(forward_backward, runtime, calls)

    models = {name: build_classifier(preset, runtime, positional_conv_implementation=name) for name in ("fft", "conv")}
    models["conv"].load_state_dict(models["fft"].state_dict())
    data = runtime.to_device(random_batch(models["fft"].config, mixed_lengths(runtime), 24))
    inputs_only = {key: value for key, value in data.items() if key != "labels"}
    with torch.no_grad():  # float32, no autocast: how far apart the two implementations are
        logits = {name: model.eval()(**inputs_only).logits for name, model in models.items()}
    result["model_fp32_logits_max_abs_difference"] = (logits["fft"] - logits["conv"]).abs().max().item()
    for name, model in models.items():
        result[f"model_{name}_forward_ms"] = 1e3 * mean_seconds(forward_function(model, data, runtime), runtime, calls)
        step = train_step_function(model, data, runtime)
        result[f"model_{name}_train_step_ms"] = 1e3 * mean_seconds(step, runtime, calls)
    result["model_batch_seconds"] = [samples / SAMPLING_RATE for samples in mixed_lengths(runtime)]
    return result


def cross_stack(runtime: Runtime, preset: str) -> dict:
    """The four cross-modal layers and the head trained alone on precomputed tower outputs (4 x 249 frames, 24
    tokens): FLOPs and time of a train step against the matmul peak."""
    model = build_classifier(preset, runtime)
    batch_size, frames, tokens = 4, 249, 24
    width = model.config.audio_config.hidden_size
    generator = torch.Generator().manual_seed(0)
    data = runtime.to_device(
        {
            "audio_tower_output": torch.randn(batch_size, frames, width, generator=generator),
            "audio_frame_mask": torch.ones(batch_size, frames, dtype=torch.bool),
            "text_tower_output": torch.randn(
                batch_size, tokens, model.config.text_config.hidden_size, generator=generator
            ),
            "attention_mask": torch.ones(batch_size, tokens, dtype=torch.long),
            "labels": torch.randint(0, 4, (batch_size,), generator=generator),
        }
    )
    model.freeze_towers()
    step = train_step_function(model, data, runtime)
    flops = count_flops(step)[0]
    seconds = mean_seconds(step, runtime, calls=3)
    peak = matmul_rate(runtime, peak_matmul_size(runtime))
    return {"train_step_flops": flops, "train_step_seconds": seconds, "share_of_matmul_peak": flops / seconds / peak}


def compile_probe(runtime: Runtime, preset: str) -> dict:
    """A CMT-4 train step eager and under `model.compile()` (inductor), on the mixed-length batch."""
    model = build_classifier(preset, runtime)
    data = runtime.to_device(random_batch(model.config, mixed_lengths(runtime), 24))
    step = train_step_function(model, data, runtime)
    flops = count_flops(step)[0]
    eager = mean_seconds(step, runtime, calls=10)
    start = time.perf_counter()
    model.compile()
    step = train_step_function(model, data, runtime)
    step()
    runtime.sync()
    first = time.perf_counter() - start
    compiled = mean_seconds(step, runtime, calls=10)
    return {
        "train_step_flops": flops,
        "eager_ms": 1e3 * eager,
        "compiled_ms": 1e3 * compiled,
        "speedup": eager / compiled,
        "first_compiled_step_seconds": first,
    }


def parallel_runs(runtime: Runtime, preset: str, rounds: int = 3) -> dict:
    """What `make demo` / `make study` do with their fine-tuning runs (`--jobs`): two `run_finetune.py` runs of
    `preset` (audio tower frozen and cached, 10 epochs on 200 synthetic utterances, seeds 0 and 1) one after the
    other with every core, against both at once with half the cores each; rounds interleaved, after a first run that
    builds the corpus and tower caches both sides reuse. The study's preset is `demo` (`--preset demo`)."""
    import itertools
    import os
    import subprocess
    import sys
    import tempfile

    if runtime.is_cuda:
        raise SystemExit("parallel_runs measures CPU worker processes; run it without --device cuda.")
    cores = len(os.sched_getaffinity(0))
    script = Path(__file__).resolve().parents[1] / "examples" / "run_finetune.py"
    counter = itertools.count()
    with tempfile.TemporaryDirectory() as scratch:

        def command(seed: int, name: str) -> list[str]:
            return [
                sys.executable, str(script), "--task", "synthetic_emotion", "--synthetic_size", "200",
                "--preset", preset, "--test_fold", "1", "--freeze_audio_tower", "true", "--cache_tower_outputs",
                "true", "--num_train_epochs", "10", "--per_device_train_batch_size", "32", "--learning_rate", "2e-3",
                "--seed", str(seed), "--cache_dir", f"{scratch}/cache", "--output_dir",
                f"{scratch}/{name}{next(counter)}", "--disable_tqdm", "true", "--log_level", "error",
            ]  # fmt: skip

        def launch(seed: int, name: str, threads: int) -> subprocess.Popen:
            environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
            return subprocess.Popen(command(seed, name), env=environment, stdout=subprocess.DEVNULL)

        def finish(processes: list[subprocess.Popen]):
            if any(process.wait() != 0 for process in processes):
                raise RuntimeError("a run_finetune.py run of the probe failed")

        def one_after_the_other() -> float:
            start = time.perf_counter()
            for seed in (0, 1):
                finish([launch(seed, f"sequential{seed}", cores)])
            return time.perf_counter() - start

        def both_at_once() -> float:
            start = time.perf_counter()
            finish([launch(seed, f"parallel{seed}", max(1, cores // 2)) for seed in (0, 1)])
            return time.perf_counter() - start

        finish([launch(0, "warmup", cores)])  # the corpus, then each seed's tower caches (random towers)
        finish([launch(1, "warmup", cores)])
        seconds = {"sequential": [], "parallel": []}
        for index in range(rounds):  # interleaved: A B, B A, A B
            order = [("sequential", one_after_the_other), ("parallel", both_at_once)]
            for name, measure in order if index % 2 == 0 else order[::-1]:
                seconds[name].append(measure())
    ratios = [first / second for first, second in zip(seconds["sequential"], seconds["parallel"])]
    return {
        "cores": cores,
        "threads_per_run_at_once": max(1, cores // 2),
        "sequential_seconds": seconds["sequential"],
        "parallel_seconds": seconds["parallel"],
        "speedup_median": statistics.median(ratios),
        "speedup_per_round": ratios,
    }


PROBES = {
    "positional_conv": positional_conv,
    "cross_stack": cross_stack,
    "compile": compile_probe,
    "parallel_runs": parallel_runs,
}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probes", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(PROBES))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast on cuda, fp32 on cpu)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--preset", default="cmt-4", help="model preset (tests use tiny)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of parallel_runs")
    args = parser.parse_args(argv)
    runtime = Runtime(args.device, "bf16" if args.device == "cuda" else "fp32")
    threads = torch.get_num_threads()
    if not runtime.is_cuda:
        torch.set_num_threads(1)  # as the benchmarks measure on CPU
    try:
        options = {"rounds": args.rounds} if args.name == "parallel_runs" else {}
        result = PROBES[args.name](runtime, args.preset, **options)
    finally:
        torch.set_num_threads(threads)
    payload = {
        "probe": args.name,
        "device": args.device,
        "preset": args.preset,
        "result": result,
        "machine": machine_info(runtime),
    }
    path = write_json(args.output_dir / f"probe_{args.name}.json", payload)
    for key, value in result.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
