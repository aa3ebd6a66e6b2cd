"""What every benchmark shares: settings, the device runtime, timing and FLOP counting, models and inputs of known
size, isolated child processes for memory peaks, profiles, and the result format.

Absolute times on a shared machine are noisy, so the benchmarks claim ratios: the two sides of a ratio are measured
back to back in the same process (interleaved rounds where it matters) and the median over rounds is reported.
"""

import contextlib
import json
import math
import multiprocessing
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

from cmt_training.arguments import CMTTrainingArguments
from modeling_cmt import CMTConfig, CMTForSequenceClassification, load_preset


REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_CACHE_DIR = Path(os.environ.get("CMT_BENCHMARK_CACHE", Path.home() / ".cache" / "cmt" / "benchmarks"))
SAMPLING_RATE = 16000
GIB = 1024**3


# ---------------------------------------------------------------------------------------------------------------------
# FLOP counting: torch's counter knows the CUDA attention kernels but not the CPU flash-attention kernel that sdpa
# dispatches to on CPU, so without these formulas attention FLOPs would silently be missing from CPU counts.
# ---------------------------------------------------------------------------------------------------------------------


def _register_cpu_attention_flops():
    aten = torch.ops.aten
    forward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    from torch.utils.flop_counter import flop_registry

    if forward is not None and forward not in flop_registry:

        @register_flop_formula(forward)
        def _cpu_flash_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return sdpa_flop_count(query_shape, key_shape, value_shape)

    if backward is not None and backward not in flop_registry:

        @register_flop_formula(backward)
        def _cpu_flash_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
            return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


_register_cpu_attention_flops()


def _register_grouped_conv_backward_flops():
    """torch's `convolution_backward` formula counts the weight gradient of a grouped convolution as if it were
    ungrouped (`groups` times too many FLOPs: 16x for HuBERT's positional convolution, which inflated a base-size
    train step's count by ~13 %). The weight gradient does exactly the forward's multiplications, so it is counted
    as the forward; the input gradient is torch's (correct) transposed-convolution count."""
    from torch.utils.flop_counter import conv_flop_count, flop_registry, get_shape

    aten = torch.ops.aten
    flop_registry.pop(aten.convolution_backward, None)

    @register_flop_formula(aten.convolution_backward)
    def _conv_backward(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                       _output_padding, _groups, output_mask, out_shape, **kwargs) -> int:  # fmt: skip
        flops = 0
        if output_mask[0]:
            flops += conv_flop_count(grad_out_shape, w_shape, get_shape(out_shape[0]), not transposed)
        if output_mask[1]:
            flops += conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
        return flops


_register_grouped_conv_backward_flops()


def count_flops(function: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """Total FLOPs of one call of `function` (matmuls, convolutions, attention) and the count per operator."""
    with FlopCounterMode(display=False) as counter:
        function()
    by_operator = {str(op).removeprefix("aten."): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return int(counter.get_total_flops()), by_operator


ATTENTION_OPERATORS = ("attention", "bmm", "baddbmm")


def attention_flops(by_operator: dict[str, int]) -> int:
    """FLOPs of the attention products (sdpa kernels, or the batched matmuls of eager attention)."""
    return sum(n for op, n in by_operator.items() if any(key in op for key in ATTENTION_OPERATORS))


# ---------------------------------------------------------------------------------------------------------------------
# Settings and device runtime
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """How a run is configured: `smoke` shrinks every benchmark to tiny models and inputs (seconds, not minutes)."""

    smoke: bool = False
    device: str = "cpu"
    dtype: str = "fp32"
    repeats: int = 3
    threads: int | None = None
    output_dir: Path = RESULTS_DIR
    cache_dir: Path = DEFAULT_CACHE_DIR

    def pick(self, full, smoke, cuda=None):
        """`full` in a real run, `smoke` in a smoke run; `cuda` (when given) instead of `full` in a real run on a GPU,
        where CPU-sized batches would leave most of the device idle."""
        if self.smoke:
            return smoke
        return cuda if cuda is not None and self.device == "cuda" else full

    @property
    def runtime(self) -> "Runtime":
        return Runtime(self.device, self.dtype)

    @property
    def preset(self) -> str:
        """Base-size towers (hubert-base + roberta-base shapes, random weights) with 4 cross-modal layers."""
        return self.pick("cmt-4", "tiny")

    def describe(self) -> dict[str, Any]:
        values = asdict(self)
        return {key: str(value) if isinstance(value, Path) else value for key, value in values.items()}


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Runtime:
    """The device and compute dtype: fp32 weights, with autocast to `dtype` when it is not fp32 (bf16 on GPUs)."""

    def __init__(self, device: str = "cpu", dtype: str = "fp32"):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}.")
        self.device = torch.device(device)
        self.dtype = DTYPES[dtype]
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was given but torch sees no CUDA device.")

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def sync(self):
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value.to(self.device) for key, value in batch.items()}


# ---------------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------------


def timed(function: Callable[[], Any], runtime: Runtime) -> float:
    """Wall-clock seconds of one call, synchronised on GPUs."""
    runtime.sync()
    start = time.perf_counter()
    function()
    runtime.sync()
    return time.perf_counter() - start


def interleaved(
    functions: dict[str, Callable[[], Any]], runtime: Runtime, rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Times each function once per round, alternating them (the order rotates every round) so that load from other
    jobs on a shared machine hits all sides of a ratio alike. Returns the seconds of every round per name."""
    names = list(functions)
    for _ in range(warmup):
        for name in names:
            functions[name]()
    times = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(timed(functions[name], runtime))
    return times


def median(values: Iterable[float]) -> float:
    values = list(values)
    return float(statistics.median(values)) if values else float("nan")


def ratio_per_round(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of the per-round ratio (each round's two numbers were measured seconds apart)."""
    return median(n / d for n, d in zip(numerator, denominator))


def matmul_rate(runtime: Runtime, size: int, calls: int = 3) -> float:
    """Best FLOP/s of `calls` square matmuls of `size` in the run's compute dtype: the peak a model can approach."""
    left = torch.randn(size, size, device=runtime.device)
    right = torch.randn(size, size, device=runtime.device)
    left, right = left.to(runtime.dtype), right.to(runtime.dtype)
    left @ right
    best = min(timed(lambda: left @ right, runtime) for _ in range(calls))
    if runtime.is_cuda:  # one product takes ~1 ms on a GPU: time a run of them, not one launch and sync
        best = min(timed(lambda: [left @ right for _ in range(20)], runtime) / 20 for _ in range(calls))
    return 2 * size**3 / best


def gemm_rate(runtime: Runtime, rows: int, inner: int, columns: int, calls: int = 3) -> float:
    """Best FLOP/s of a `(rows, inner) @ (inner, columns)` linear layer with bias, the shape a model runs."""
    inputs = torch.randn(rows, inner, device=runtime.device)
    weight = torch.randn(columns, inner, device=runtime.device)
    bias = torch.randn(columns, device=runtime.device)
    with runtime.autocast():
        torch.nn.functional.linear(inputs, weight, bias)
        repeat = 50 if runtime.is_cuda else 1  # microseconds on a GPU: time a run of calls, not one launch and sync
        best = min(
            timed(lambda: [torch.nn.functional.linear(inputs, weight, bias) for _ in range(repeat)], runtime) / repeat
            for _ in range(calls)
        )
    return 2 * rows * inner * columns / best


def peak_matmul_size(runtime: Runtime) -> int:
    return 8192 if runtime.is_cuda else 2048


# ---------------------------------------------------------------------------------------------------------------------
# Models and inputs of known size
# ---------------------------------------------------------------------------------------------------------------------


def preset_config(preset: str, *, audio: dict | None = None, text: dict | None = None, **overrides) -> CMTConfig:
    """A preset's config with optional tower overrides (e.g. fewer layers) and top-level overrides."""
    values = load_preset(preset)["config"]
    values = {
        **values,
        "audio_config": {**values["audio_config"], **(audio or {})},
        "text_config": {**values["text_config"], **(text or {})},
    }
    return CMTConfig(**{**values, "num_labels": 4, **overrides})


def build_classifier(
    preset: str,
    runtime: Runtime,
    attn_implementation: str = "sdpa",
    freeze_feature_encoder: bool = True,
    seed: int = 0,
    **overrides,
) -> CMTForSequenceClassification:
    """A random-weight classifier on `runtime`'s device, set up as the package's fine-tuning defaults set it up
    (sdpa attention, frozen convolutional feature encoder) unless told otherwise."""
    torch.manual_seed(seed)
    config = preset_config(preset, attn_implementation=attn_implementation, **overrides)
    model = CMTForSequenceClassification(config).to(runtime.device)
    if freeze_feature_encoder:
        model.freeze_feature_encoder()
    return model


def audio_frames(config: CMTConfig, samples: int) -> int:
    """Frames the audio tower's convolutional front end makes of `samples` samples."""
    for kernel, stride in zip(config.audio_config.conv_kernel, config.audio_config.conv_stride):
        samples = (samples - kernel) // stride + 1
    return max(samples, 0)


def random_batch(
    config: CMTConfig,
    sample_lengths: list[int],
    text_tokens: int = 24,
    num_labels: int = 4,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Model inputs as CMTProcessor pads them: unit-variance audio of the given lengths (zero-padded, with the
    sample-level mask), `text_tokens` random token ids per item and class labels."""
    generator = torch.Generator().manual_seed(seed)
    batch_size, longest = len(sample_lengths), max(sample_lengths)
    input_values = torch.zeros(batch_size, longest)
    audio_attention_mask = torch.zeros(batch_size, longest, dtype=torch.long)
    for row, length in enumerate(sample_lengths):
        input_values[row, :length] = torch.randn(length, generator=generator)
        audio_attention_mask[row, :length] = 1
    vocab_size = config.text_config.vocab_size
    input_ids = torch.randint(5, vocab_size, (batch_size, text_tokens), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = config.text_config.bos_token_id, config.text_config.eos_token_id
    return {
        "input_values": input_values,
        "audio_attention_mask": audio_attention_mask,
        "input_ids": input_ids,
        "attention_mask": torch.ones(batch_size, text_tokens, dtype=torch.long),
        "labels": torch.randint(0, num_labels, (batch_size,), generator=generator),
    }


def forward_function(model: torch.nn.Module, batch: dict[str, torch.Tensor], runtime: Runtime) -> Callable[[], Any]:
    """One inference forward (eval mode, no autograd; `no_grad` rather than `inference_mode`, under which the
    weight-normed positional convolution of HuBERT fails inside FlopCounterMode)."""
    inputs = {key: value for key, value in batch.items() if key != "labels"}

    def forward():
        model.eval()
        with torch.no_grad(), runtime.autocast():
            return model(**inputs).logits

    return forward


def train_step_function(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], runtime: Runtime, learning_rate: float = 1e-5
) -> Callable[[], Any]:
    """One optimisation step (forward with loss, backward, AdamW step) in train mode, with the fused AdamW that
    `Trainer` uses by default (`optim="adamw_torch_fused"`; on CPU 4x faster than the per-tensor loop). The seed is
    fixed per step so stochastic layer drop and dropout draw the same every call: FLOPs counted on one call are the
    FLOPs of every call."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate, fused=True)

    def step():
        model.train()
        torch.manual_seed(0)
        with runtime.autocast():
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def iemocap_like_seconds(count: int = 5531, seed: int = 0) -> np.ndarray:
    """Utterance durations shaped like IEMOCAP's 4-class set (5531 utterances; mean about 4.5 s, median about 3.5 s,
    0.6 s to 34 s, long right tail): a log-normal matched to that median and mean, clipped to that range."""
    median_seconds, mean_seconds = 3.5, 4.5
    sigma = math.sqrt(2 * math.log(mean_seconds / median_seconds))
    durations = np.random.default_rng(seed).lognormal(math.log(median_seconds), sigma, count)
    return np.clip(durations, 0.6, 34.0)


# ---------------------------------------------------------------------------------------------------------------------
# The synthetic corpus and the example scripts' helpers
# ---------------------------------------------------------------------------------------------------------------------


def benchmark_training_arguments(output_dir: str, runtime: Runtime, batch_size: int, **overrides):
    """`CMTTrainingArguments` for a timed Trainer run: no evaluation, saving, logging output or progress bars, and
    bf16 autocast on GPUs (as `run_finetune.py --bf16 true` would run there)."""
    return CMTTrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=batch_size,
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
        metric_for_best_model=None,
        report_to="none",
        disable_tqdm=True,
        logging_steps=10_000,
        seed=0,
        use_cpu=not runtime.is_cuda,
        bf16=runtime.is_cuda and runtime.dtype == torch.bfloat16,
        **overrides,
    )


def synthetic_corpus(settings: Settings, num_utterances: int):
    """The embedded espeak-ng corpus (built once into the benchmark cache)."""
    import hub_datasets

    return hub_datasets.load_synthetic_emotion(
        num_utterances=num_utterances, cache_dir=str(settings.cache_dir / "synthetic_emotion")
    )


def _length_matched_rows(durations: list[float], texts: list[str], sampling_rate: int, seed: int):
    from hub_datasets._utils import pcm16_wav_bytes

    generator = np.random.default_rng(seed)
    for index, seconds in enumerate(durations):
        samples = (generator.standard_normal(int(seconds * sampling_rate)) * 3000).astype(np.int16)
        yield {
            "audio": {"bytes": pcm16_wav_bytes(samples, sampling_rate), "path": None},
            "text": texts[index % len(texts)],
            "label": int(generator.integers(4)),
        }


def length_matched_corpus(
    settings: Settings, durations: np.ndarray, texts: list[str], sampling_rate: int = SAMPLING_RATE, seed: int = 0
):
    """A corpus whose utterances have the given durations (noise audio as 16-bit WAV at `sampling_rate`, the given
    transcripts, random labels): enough to measure anything that depends on lengths and not on content. Cached by
    `datasets` in the benchmark cache, keyed by its arguments."""
    from datasets import Audio, ClassLabel, Dataset, Features, Value

    features = Features(
        {"audio": Audio(), "text": Value("string"), "label": ClassLabel(names=["angry", "happy", "neutral", "sad"])}
    )
    return Dataset.from_generator(
        _length_matched_rows,
        features=features,
        cache_dir=str(settings.cache_dir / "length_matched"),
        gen_kwargs={  # tuples: `datasets` would read lists as shards
            "durations": tuple(round(float(d), 4) for d in durations),
            "texts": tuple(texts),
            "sampling_rate": sampling_rate,
            "seed": seed,
        },
    )


@contextlib.contextmanager
def datasets_caching_disabled():
    """`datasets` recomputes `map` results instead of reusing earlier runs' cache files (to time the first run)."""
    import datasets

    was_enabled = datasets.is_caching_enabled()
    datasets.disable_caching()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_caching()


# ---------------------------------------------------------------------------------------------------------------------
# Memory: peak resident memory of a fresh child process
# ---------------------------------------------------------------------------------------------------------------------


def _status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_memory(runtime: Runtime) -> int:
    """Starts a new peak measurement and returns the current usage in bytes: CUDA allocator statistics on GPUs; the
    process's resident set on CPU (its high-water mark VmHWM is reset through /proc/self/clear_refs)."""
    if runtime.is_cuda:
        torch.cuda.reset_peak_memory_stats(runtime.device)
        return torch.cuda.memory_allocated(runtime.device)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    import psutil

    return psutil.Process().memory_info().rss


def peak_memory(runtime: Runtime) -> int:
    """Peak bytes since `reset_peak_memory`: CUDA allocator peak, or VmHWM (getrusage's max RSS if /proc lacks it)."""
    if runtime.is_cuda:
        return torch.cuda.max_memory_allocated(runtime.device)
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024


_MP_CONTEXT = None
_IN_ISOLATED_CHILD = False


def _forkserver():
    """A forkserver that imports torch, transformers and this package once; every measurement then runs in a fresh
    child forked from it (milliseconds instead of a ~5 s import), whose memory holds nothing from earlier runs."""
    global _MP_CONTEXT
    if _MP_CONTEXT is None:
        _MP_CONTEXT = multiprocessing.get_context("forkserver")
        _MP_CONTEXT.set_forkserver_preload(["benchmarks.common"])
    return _MP_CONTEXT


def _call_isolated(function: Callable, args: tuple, kwargs: dict):
    global _IN_ISOLATED_CHILD
    _IN_ISOLATED_CHILD = True
    return function(*args, **kwargs)


def run_isolated(function: Callable, *args, **kwargs):
    """Runs `function(*args, **kwargs)` in a fresh child process and returns its (picklable) result. A child that
    isolates again (a benchmark measuring memory per configuration) forks itself: it has run no computation yet, so
    it holds no thread pool or CUDA context that a fork could break, and it saves starting a second forkserver."""
    context = multiprocessing.get_context("fork") if _IN_ISOLATED_CHILD else _forkserver()
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:  # one task, then the child exits
        return pool.submit(_call_isolated, function, args, kwargs).result()


def measure_train_step(
    preset: str,
    sample_lengths: list[int],
    device: str,
    dtype: str,
    steps: int,
    threads: int | None = None,
    activation_checkpointing: bool = False,
    text_tokens: int = 24,
    overrides: dict | None = None,
    audio_overrides: dict | None = None,
    profile: bool = False,
) -> dict[str, Any]:
    """Builds a classifier and runs `steps` train steps (the first one warms up): peak memory growth over the
    process before the model existed (weights, gradients, AdamW state and activations), median step time of the
    later steps, the FLOPs of one step and, with `profile`, its top operators. Meant to run in a fresh process
    (`run_isolated`): the peak then holds nothing from earlier measurements."""
    if threads:
        torch.set_num_threads(threads)
    runtime = Runtime(device, dtype)
    baseline = reset_peak_memory(runtime)
    model = build_classifier(preset, runtime, audio=audio_overrides, **(overrides or {}))
    if activation_checkpointing:
        model.activation_checkpointing_enable()
    batch = runtime.to_device(random_batch(model.config, sample_lengths, text_tokens))
    step = train_step_function(model, batch, runtime)
    times = [timed(step, runtime) for _ in range(steps)]
    peak = peak_memory(runtime)
    flops, by_operator = count_flops(step)
    measured = {
        "peak_growth_bytes": peak - baseline,
        "baseline_bytes": baseline,
        "step_seconds": median(times[1:] or times),
        "step_seconds_all": times,
        "flops": flops,
        "attention_flops": attention_flops(by_operator),
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    if profile:
        measured["profile"] = top_operators(step, runtime)
    return measured


# ---------------------------------------------------------------------------------------------------------------------
# Profiles
# ---------------------------------------------------------------------------------------------------------------------


def top_operators(function: Callable[[], Any], runtime: Runtime, limit: int | None = 10) -> list[dict[str, Any]]:
    """The operators that took the most self time in one call of `function` (torch.profiler); all with `limit=None`."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if runtime.is_cuda else [])
    with profile(activities=activities) as profiler:
        function()
        runtime.sync()
    events = profiler.key_averages()
    key = "self_device_time_total" if runtime.is_cuda else "self_cpu_time_total"
    total = sum(getattr(event, key) for event in events) or 1.0
    ranked = sorted(events, key=lambda event: getattr(event, key), reverse=True)[:limit]
    return [
        {
            "operator": event.key,
            "self_ms": round(getattr(event, key) / 1e3, 2),
            "share": round(getattr(event, key) / total, 4),
            "calls": event.count,
        }
        for event in ranked
    ]


# ---------------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table. `met` is None for a measurement that has no target."""

    metric: str
    value: float | str
    unit: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Result:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, *args, **kwargs) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        return row


def machine_info(runtime: Runtime | None = None) -> dict[str, Any]:
    import accelerate
    import datasets
    import psutil
    import transformers

    import modeling_cmt

    cpu_model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    info = {
        "platform": platform.platform(),
        "cpu": cpu_model,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(psutil.virtual_memory().total / GIB, 1),
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "gpu": torch.cuda.get_device_name(runtime.device) if runtime is not None and runtime.is_cuda else None,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "datasets": datasets.__version__,
            "accelerate": accelerate.__version__,
            "numpy": np.__version__,
            "modeling_cmt": modeling_cmt.__version__,
        },
    }
    info.update(git_state())
    return info


def git_state() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True)
        return {"git_commit": commit, "git_dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "git_dirty": None}


def write_result(result: Result, settings: Settings, seconds: float, command: str) -> Path:
    """`<output_dir>/<name>.json`: the rows, the details, the settings, the machine and the command."""
    payload = {
        "name": result.name,
        "title": result.title,
        "command": command,
        "settings": settings.describe(),
        "machine": machine_info(settings.runtime),
        "wall_seconds": round(seconds, 1),
        "rows": [asdict(row) for row in result.rows],
        "notes": result.notes,
        "details": result.details,
    }
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    path = settings.output_dir / f"{result.name}.json"
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    os.replace(temporary, path)
    return path


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def format_value(value: float | str | None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if value != value:
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def markdown_table(results: list[Result]) -> str:
    lines = ["| benchmark | metric | value | target | met | note |", "|---|---|---|---|---|---|"]
    marks = {True: "yes", False: "**no**", None: ""}
    for result in results:
        for row in result.rows:
            value = f"{format_value(row.value)} {row.unit}".strip()
            lines.append(f"| {result.name} | {row.metric} | {value} | {row.target} | {marks[row.met]} | {row.note} |")
    return "\n".join(lines)
