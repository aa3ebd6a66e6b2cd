"""8. Scaling: how train-step time, FLOPs and peak memory grow with the audio length (self-attention is quadratic in
frames) and with the number of cross-modal layers. One utterance per step; every point runs in a fresh child process
(as in the memory benchmark). Curves go to `scaling_audio_length.png` and `scaling_cross_layers.png`.

Layer drop is off here (`layerdrop=0`), so that every point runs every layer and the curves are smooth. Fitting the
attention products as `b·s²` and everything else (convolutions, projections, feed-forward, the text tower) as
`c + a·s` gives the length at which attention would cost as much as the rest: an architecture property that carries
over to GPUs, where time follows FLOPs more closely than on CPU once the batch fills the device.
"""

import numpy as np

from cmt_training.data import SAMPLING_RATE

from .isolation import run_isolated
from .models import measure_train_step
from .reporting import GIB, Result
from .settings import Settings


NAME = "scaling"
TITLE = "Step time, FLOPs and peak memory vs audio length and number of cross-modal layers"


def measure(settings: Settings, seconds: float, cross_layers: int | None = None) -> dict:
    overrides = {"num_cross_layers": cross_layers} if cross_layers is not None else None
    return run_isolated(
        measure_train_step,
        settings.preset,
        [int(seconds * SAMPLING_RATE)],
        settings.device,
        settings.dtype,
        settings.pick(3, 2),
        settings.threads,
        overrides=overrides,
        audio_overrides={"layerdrop": 0.0},
    )


def plot(path, x, points: list[dict], xlabel: str, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    step_seconds = [point["step_seconds"] for point in points]
    flops = np.array([point["flops"] for point in points]) / 1e9
    attention = np.array([point["attention_flops"] for point in points]) / 1e9
    axes[0].plot(x, step_seconds, "o-")
    axes[0].set_ylabel("train step (s)")
    axes[1].plot(x, flops, "o-", label="all")
    axes[1].plot(x, attention, "s--", label="attention products")
    axes[1].set_ylabel("GFLOP per step")
    axes[1].legend()
    axes[2].plot(x, [point["peak_growth_bytes"] / GIB for point in points], "o-")
    axes[2].set_ylabel("peak memory growth (GiB)")
    for axis in axes:
        axis.set_xlabel(xlabel)
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run(settings: Settings) -> Result:
    lengths = settings.pick([1.0, 2.0, 4.0, 8.0, 16.0], [0.5, 1.0, 2.0], cuda=[2.0, 4.0, 8.0, 16.0, 32.0, 64.0])
    layer_counts = settings.pick([0, 2, 4, 8], [0, 1, 2])
    layers_seconds = settings.pick(5.0, 1.0)
    by_length = [measure(settings, seconds) for seconds in lengths]
    by_layers = [measure(settings, layers_seconds, layers) for layers in layer_counts]

    settings.output_dir.mkdir(parents=True, exist_ok=True)
    device = f"{settings.device} {settings.dtype}"
    plot(
        settings.output_dir / "scaling_audio_length.png",
        lengths,
        by_length,
        "utterance length (s), batch 1",
        f"{settings.preset} train step vs audio length ({device})",
    )
    plot(
        settings.output_dir / "scaling_cross_layers.png",
        layer_counts,
        by_layers,
        f"cross-modal layers ({layers_seconds:g} s utterance)",
        f"{settings.preset} train step vs cross-modal layers ({device})",
    )

    # attention ≈ b·s², the rest ≈ c + a·s (s in seconds of audio): attention equals the rest's slope part at s = a / b.
    seconds = np.array(lengths)
    attention = np.array([point["attention_flops"] for point in by_length], dtype=float)
    rest = np.array([point["flops"] for point in by_length], dtype=float) - attention
    quadratic = float(np.sum(attention * seconds**2) / np.sum(seconds**4))
    linear, constant = np.polyfit(seconds, rest, 1)
    crossover = linear / quadratic if quadratic > 0 else float("inf")
    time_ratio = by_length[-1]["step_seconds"] / by_length[-2]["step_seconds"]
    memory_ratio = by_length[-1]["peak_growth_bytes"] / max(by_length[-2]["peak_growth_bytes"], 1)
    layer_time = np.polyfit(layer_counts, [point["step_seconds"] for point in by_layers], 1)[0]
    layer_memory = np.polyfit(layer_counts, [point["peak_growth_bytes"] for point in by_layers], 1)[0]

    result = Result(NAME, TITLE)
    longest = by_length[-1]
    result.add(
        f"attention share of step FLOPs at {lengths[-1]:g} s",
        100 * longest["attention_flops"] / longest["flops"],
        "%",
        note=f"{longest['flops'] / 1e9:.0f} GFLOP, {longest['step_seconds']:.1f} s",
    )
    result.add(
        "utterance length at which attention FLOPs would equal the rest (fit)",
        crossover,
        "s",
        note=f"rest {linear / 1e9:.1f} GFLOP per s + {constant / 1e9:.1f}; attention {quadratic / 1e9:.3f} GFLOP per s²",
    )
    result.add(
        f"step time x{lengths[-1] / lengths[-2]:g} length ({lengths[-2]:g} -> {lengths[-1]:g} s)", time_ratio, "x"
    )
    result.add(f"peak memory x{lengths[-1] / lengths[-2]:g} length", memory_ratio, "x")
    result.add(f"step time per cross-modal layer ({layers_seconds:g} s)", layer_time, "s/layer")
    result.add(f"peak memory per cross-modal layer ({layers_seconds:g} s)", layer_memory / GIB, "GiB/layer")
    result.details = {
        "lengths_seconds": lengths,
        "by_length": by_length,
        "cross_layers": layer_counts,
        "cross_layers_seconds": layers_seconds,
        "by_cross_layers": by_layers,
        "flop_fit": {"constant": constant, "linear_per_second": linear, "attention_per_second_squared": quadratic},
        "plots": ["scaling_audio_length.png", "scaling_cross_layers.png"],
    }
    return result
