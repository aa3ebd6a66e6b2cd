"""1. Hardware efficiency: the FLOP/s a CMT forward and a CMT train step achieve, as a share of the matmul peak
measured in the same run.

FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions and attention; elementwise
work, normalisation and the optimizer count zero), so the share is the model-FLOP utilisation. Each round measures
the peak (best of three square matmuls), then the forward, then the train step, and the median over rounds of the
per-round shares is reported. The train step is the package's fine-tuning setup: sdpa attention, frozen
convolutional feature encoder, AdamW, dropout / layer drop / SpecAugment as the preset's towers have them.
"""

import torch

from cmt_training.data import SAMPLING_RATE

from .flops import attention_flops, count_flops
from .models import build_classifier, forward_function, random_batch, train_step_function
from .profiles import top_operators
from .reporting import Result
from .settings import Settings
from .timing import gemm_rate, matmul_rate, median, peak_matmul_size, timed


NAME = "hardware_efficiency"
TITLE = "Achieved FLOP/s of a CMT forward and train step vs the matmul peak"
TRAIN_TARGET = {"cpu": 0.70, "cuda": 0.40}


def run(settings: Settings) -> Result:
    runtime = settings.runtime
    batch_size, seconds, tokens = settings.pick((4, 5.0, 24), (2, 1.0, 12), cuda=(128, 5.0, 24))
    samples = int(seconds * SAMPLING_RATE)
    model = build_classifier(settings.preset, runtime)
    config = model.config
    batch = runtime.to_device(random_batch(config, [samples] * batch_size, tokens))
    forward = forward_function(model, batch, runtime)
    train_step = train_step_function(model, batch, runtime)

    # FLOPs of one call each; these calls also warm up kernels, allocator and optimizer state.
    forward_flops, forward_by_operator = count_flops(forward)
    train_flops, train_by_operator = count_flops(train_step)

    frames = config.audio_frames(samples)
    hidden, intermediate = config.audio_config.hidden_size, config.audio_config.intermediate_size
    rounds = {"peak": [], "gemm": [], "forward": [], "train_step": []}
    for _ in range(settings.repeats):
        rounds["peak"].append(matmul_rate(runtime, peak_matmul_size(runtime)))
        rounds["gemm"].append(gemm_rate(runtime, batch_size * frames, hidden, intermediate))
        rounds["forward"].append(timed(forward, runtime))
        rounds["train_step"].append(timed(train_step, runtime))
    forward_share = median(forward_flops / t / peak for t, peak in zip(rounds["forward"], rounds["peak"]))
    train_share = median(train_flops / t / peak for t, peak in zip(rounds["train_step"], rounds["peak"]))
    gemm_share = median(gemm / peak for gemm, peak in zip(rounds["gemm"], rounds["peak"]))

    result = Result(NAME, TITLE)
    shape = f"{batch_size} x {seconds:g} s, {tokens} tokens, {settings.preset}"
    target = TRAIN_TARGET[runtime.device.type]
    result.add("matmul peak (best of 3, per round)", median(rounds["peak"]) / 1e9, "GFLOP/s")
    result.add(
        f"model-shaped GEMM ({batch_size * frames}x{hidden} @ {hidden}x{intermediate}) / peak", 100 * gemm_share, "%"
    )
    result.add(f"forward ({shape}) / peak", 100 * forward_share, "%", note=f"{forward_flops / 1e9:.1f} GFLOP")
    result.add(
        f"train step ({shape}) / peak",
        100 * train_share,
        "%",
        target=f">= {100 * target:.0f} % ({runtime.device.type} {settings.dtype})",
        met=train_share >= target,
        note=f"{train_flops / 1e9:.1f} GFLOP",
    )
    result.details = {
        "batch": {"batch_size": batch_size, "seconds": seconds, "text_tokens": tokens, "frames": frames},
        "preset": settings.preset,
        "forward_flops": forward_flops,
        "train_step_flops": train_flops,
        "forward_attention_flops": attention_flops(forward_by_operator),
        "forward_flops_by_operator": forward_by_operator,
        "train_step_flops_by_operator": train_by_operator,
        "rounds": rounds,
        "forward_seconds": median(rounds["forward"]),
        "train_step_seconds": median(rounds["train_step"]),
        "threads": torch.get_num_threads(),
        "profile_forward": top_operators(forward, runtime),
        "profile_train_step": top_operators(train_step, runtime),
    }
    result.notes.append(
        "FLOPs count matmuls, convolutions and attention only; layer norms, GELU, adds, bias copies and the AdamW "
        "update take time but no counted FLOPs, which is what keeps a train step below the matmul peak."
    )
    return result
