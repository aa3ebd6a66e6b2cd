"""5. Memory: peak memory of a train step with and without activation checkpointing (towers and cross stack:
`model.activation_checkpointing_enable()`), and the largest batch of 10 s utterances that fits.

Every configuration runs in a fresh child process (forked from a server that has only imported the libraries). On
CPU the peak is the growth of the child's resident set (VmHWM, reset at its start) over its size before the model was
built: weights, gradients, AdamW state, activations and allocator slack. On CUDA it is the allocator's peak. Two batch
sizes give the memory per utterance (the slope) and the fixed part; the largest batch is extrapolated from them.
"""

import numpy as np

from cmt_training.data import SAMPLING_RATE

from .isolation import run_isolated
from .models import measure_train_step
from .reporting import GIB, Result
from .settings import Settings


NAME = "memory"
TITLE = "Peak train-step memory with and without activation checkpointing; largest batch of 10 s utterances"
MEMORY_TARGET, TIME_TARGET = 0.40, 0.35
CPU_MEMORY_GIB, GPU_MEMORY_GB = 24, 80
# Paper estimate for an 80 GB GPU: bf16 autocast keeps bf16 copies of most saved activations (about 0.6 of fp32 bytes,
# an assumption), CUDA context and allocator fragmentation take ~10 %, weights, gradients and AdamW state stay fp32.
GPU_ACTIVATION_SCALE, GPU_USABLE = 0.6, 0.9


def run(settings: Settings) -> Result:
    seconds = settings.pick(10.0, 1.0)
    batch_sizes = settings.pick((1, 4, 8), (1, 2), cuda=(1, 8, 32))
    steps = settings.pick(3, 2)
    samples = int(seconds * SAMPLING_RATE)
    measured = {}
    for batch_size in batch_sizes:
        for checkpointing in (False, True):
            measured[(batch_size, checkpointing)] = run_isolated(
                measure_train_step,
                settings.preset,
                [samples] * batch_size,
                settings.device,
                settings.dtype,
                steps,
                settings.threads,
                activation_checkpointing=checkpointing,
                profile=checkpointing and batch_size == batch_sizes[1],
            )

    result = Result(NAME, TITLE)
    kind = "CUDA allocator peak" if settings.runtime.is_cuda else "peak RSS growth"
    for batch_size in batch_sizes:
        off, on = measured[(batch_size, False)], measured[(batch_size, True)]
        saving = 1 - on["peak_growth_bytes"] / off["peak_growth_bytes"]
        overhead = on["step_seconds"] / off["step_seconds"] - 1
        judged = batch_size > 1  # one utterance per step is not a training batch that matters
        result.add(
            f"{batch_size} x {seconds:g} s: {kind} without / with checkpointing",
            f"{off['peak_growth_bytes'] / GIB:.2f} / {on['peak_growth_bytes'] / GIB:.2f}",
            "GiB",
        )
        result.add(
            f"{batch_size} x {seconds:g} s: peak memory saved by checkpointing",
            100 * saving,
            "%",
            target=f">= {100 * MEMORY_TARGET:.0f} %" if judged else "",
            met=saving >= MEMORY_TARGET if judged else None,
        )
        result.add(
            f"{batch_size} x {seconds:g} s: step time added by checkpointing",
            100 * overhead,
            "%",
            target=f"<= {100 * TIME_TARGET:.0f} %" if judged else "",
            met=overhead <= TIME_TARGET if judged else None,
            note=f"{off['step_seconds']:.1f} s -> {on['step_seconds']:.1f} s",
        )

    on_gpu = settings.runtime.is_cuda
    fits = {}
    for checkpointing in (False, True):
        peaks = [measured[(batch_size, checkpointing)]["peak_growth_bytes"] for batch_size in batch_sizes]
        per_item, fixed = np.polyfit(batch_sizes, peaks, 1)  # least squares over the measured batch sizes
        baseline = measured[(batch_sizes[0], checkpointing)]["baseline_bytes"]
        cpu_budget = CPU_MEMORY_GIB * GIB - baseline - fixed
        gpu_budget = GPU_USABLE * GPU_MEMORY_GB * 1e9 - fixed
        fits[checkpointing] = {
            "per_item_bytes": float(per_item),
            "fixed_bytes": float(fixed),
            "cpu_largest_batch": int(cpu_budget // per_item) if per_item > 0 else None,
            # On a GPU the slope is the GPU's own (bf16 activations, CUDA kernels); on CPU it is scaled on paper.
            "gpu_largest_batch": int(gpu_budget // (per_item if on_gpu else GPU_ACTIVATION_SCALE * per_item))
            if per_item > 0
            else None,
        }
        label = "with" if checkpointing else "without"
        result.add(
            f"memory per {seconds:g} s utterance {label} checkpointing (fit over batch {', '.join(map(str, batch_sizes))})",
            per_item / GIB,
            "GiB",
            note=f"fixed part {fixed / GIB:.2f} GiB",
        )
        if not on_gpu:
            result.add(
                f"largest batch of {seconds:g} s utterances in {CPU_MEMORY_GIB} GiB CPU, {label} checkpointing",
                fits[checkpointing]["cpu_largest_batch"],
                "",
                note="extrapolated from the measured slope",
            )
        result.add(
            f"largest batch of {seconds:g} s utterances on an {GPU_MEMORY_GB} GB GPU, {label} checkpointing",
            fits[checkpointing]["gpu_largest_batch"],
            "",
            note="extrapolated from the slope measured on this GPU"
            if on_gpu
            else f"on paper: fp32 fixed part, bf16 activations ~{GPU_ACTIVATION_SCALE:g}x of the CPU slope",
        )
    result.details = {
        "seconds": seconds,
        "batch_sizes": batch_sizes,
        "measured": {f"batch{b}_{'checkpointing' if c else 'plain'}": m for (b, c), m in measured.items()},
        "fits": {"checkpointing" if c else "plain": f for c, f in fits.items()},
    }
    result.notes.append(
        "CPU peaks are resident-set growth, so they include allocator slack; on CPU, sdpa in train mode with "
        "attention dropout falls back to the math kernel, which stores (heads x frames x frames) probabilities per "
        "layer; CUDA flash attention does not, so GPU activations per utterance are smaller than the CPU slope."
    )
    return result
