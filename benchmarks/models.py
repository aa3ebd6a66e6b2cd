"""What the benchmarks measure: random-weight classifiers of a preset, inputs of known size, the forward and train
step functions that are timed and counted, and the arguments and warm-up of the timed Trainer runs."""

from collections.abc import Callable
from typing import Any

import torch

from cmt_training.arguments import CMTTrainingArguments
from modeling_cmt import CMTConfig, CMTForSequenceClassification

from .flops import attention_flops, count_flops
from .isolation import peak_memory, reset_peak_memory
from .profiles import top_operators
from .settings import Runtime
from .timing import median, timed


def build_classifier(
    preset: str,
    runtime: Runtime,
    attn_implementation: str = "sdpa",
    freeze_feature_encoder: bool = True,
    seed: int = 0,
    **overrides,
) -> CMTForSequenceClassification:
    """A random-weight 4-class classifier of `preset` on `runtime`'s device, set up as the package's fine-tuning
    defaults set it up (sdpa attention, frozen convolutional feature encoder) unless told otherwise. `overrides` go to
    `CMTConfig.from_preset` (an `audio_config` dict changes single values of the audio tower)."""
    torch.manual_seed(seed)
    config = CMTConfig.from_preset(preset, num_labels=4, attn_implementation=attn_implementation, **overrides)
    model = CMTForSequenceClassification(config).to(runtime.device)
    if freeze_feature_encoder:
        model.freeze_feature_encoder()
    return model


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
    model = build_classifier(preset, runtime, audio_config=audio_overrides or {}, **(overrides or {}))
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


def warm_up(trainer, collator, rows: list[dict], runtime: Runtime):
    """One forward/backward of the Trainer's model on `rows`, outside the timed steps (kernel selection, allocator,
    thread pools)."""
    model = trainer.model
    model.train()
    batch = {key: value.to(trainer.args.device) for key, value in collator(rows).items()}
    with runtime.autocast():
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
