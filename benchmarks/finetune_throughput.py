"""3. End-to-end fine-tuning throughput through run_finetune.py's code path (`prepare_split`, `AudioTextCollator`,
`build_model`, `CMTTrainer`): the package defaults against a naive setup, and batches by duration.

- defaults: audio decoded and resampled once into Arrow (`prepare_split`, with the `length` column), length-grouped
  batches (`CMTTrainingArguments`' `group_by_length`), sdpa attention, frozen convolutional feature encoder;
- naive: random batches, eager attention, trainable feature encoder, audio decoded again at every access;
- by duration: the defaults with `--max_batch_seconds` = batch size x the split's mean duration (`DurationBatchSampler`:
  as much audio per step on average as the fixed batches, at almost no padding).

Each setup trains `steps` steps on a fold's full training split, so the Trainer's samplers see the real dataset size
(HF's length grouping sorts within mega-batches of up to 50 batches; a small subset would barely group). Short runs
see different utterances under the two samplers (the grouped one starts with the longest), so throughput is compared
per second of real audio, and converted to utterances/s at the split's mean duration. Timing covers data loading,
forward, backward and optimizer for every step after a warm-up forward/backward. Two corpora: the embedded synthetic
one (real speech, 1.2-4.3 s, batches of 8) and an IEMOCAP-length-matched one (noise audio with IEMOCAP-like
durations, batches of 4 cut at 10 s so that the naive setup fits in 24 GiB).
"""

import gc
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Audio
from transformers import PrinterCallback, TrainerCallback, set_seed

from cmt_training.arguments import ModelArguments
from cmt_training.build import build_model, build_processor
from cmt_training.data import SAMPLING_RATE, AudioTextCollator, prepare_split
from cmt_training.trainer import CMTTrainer
from modeling_cmt import CMTForSequenceClassification

from .corpora import datasets_caching_disabled, iemocap_like_seconds, length_matched_corpus, synthetic_corpus
from .models import benchmark_training_arguments, warm_up
from .reporting import Result
from .settings import Settings


NAME = "finetune_throughput"
TITLE = "End-to-end fine-tuning throughput: package defaults vs a naive setup, and batches by duration"
TARGET = 2.5
SETUPS = {
    "defaults": {"sampling": "group_by_length", "attn_implementation": "sdpa", "freeze_feature_encoder": True},
    "naive": {"sampling": "random", "attn_implementation": "eager", "freeze_feature_encoder": False},
    "by_duration": {"sampling": "group_by_length", "attn_implementation": "sdpa", "freeze_feature_encoder": True},
}


@dataclass
class CountingCollator:
    """Wraps a collator and records utterances, real and padded audio samples per batch."""

    collator: Any
    utterances: list[int] = field(default_factory=list)
    real_samples: list[int] = field(default_factory=list)
    padded_samples: list[int] = field(default_factory=list)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.collator(rows)
        mask = batch["audio_attention_mask"]
        self.utterances.append(len(rows))
        self.real_samples.append(int(mask.sum()))
        self.padded_samples.append(mask.numel())
        return batch


class StepClock(TrainerCallback):
    def __init__(self):
        self.start = None
        self.step_ends = []

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.start is None:
            self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_ends.append(time.perf_counter())


def decoded_on_the_fly(split, label_column: str, max_audio_seconds: float):
    """The naive data path: every access decodes (and resamples) the audio again."""
    max_samples = int(max_audio_seconds * SAMPLING_RATE)

    def decode(batch):
        return {
            "waveform": [np.asarray(audio["array"], dtype=np.float32)[:max_samples] for audio in batch["audio"]],
            "text": batch["text"],
            "labels": batch[label_column],
        }

    split = split.cast_column("audio", Audio(sampling_rate=SAMPLING_RATE))
    return split.with_transform(decode, columns=["audio", "text", label_column])


def train_throughput(
    settings: Settings,
    setup: str,
    dataset,
    processor,
    steps: int,
    batch_size: int,
    max_batch_seconds: float | None = None,
):
    options = SETUPS[setup]
    runtime = settings.runtime
    set_seed(0)
    model_args = ModelArguments(
        preset=settings.preset,
        attn_implementation=options["attn_implementation"],
        freeze_feature_encoder=options["freeze_feature_encoder"],
    )
    model = build_model(
        CMTForSequenceClassification, model_args, processor, num_labels=4, problem_type="single_label_classification"
    )
    collator = CountingCollator(AudioTextCollator(processor))
    clock = StepClock()
    with tempfile.TemporaryDirectory() as output_dir:
        args = benchmark_training_arguments(
            output_dir,
            runtime,
            batch_size,
            max_steps=steps,
            train_sampling_strategy=options["sampling"],
            max_batch_seconds=max_batch_seconds,
        )
        trainer = CMTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=collator,
            processing_class=processor,
            callbacks=[clock],
        )
        trainer.remove_callback(PrinterCallback)
        warm_up(trainer, collator.collator, [dataset[index] for index in range(2)], runtime)
        trainer.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    del trainer, model
    gc.collect()  # the Trainer holds reference cycles: free this model before the next one is built
    # Accelerate's data loader fetches one batch ahead: only the first `steps` batches were trained on.
    real = sum(collator.real_samples[:steps])
    padded = sum(collator.padded_samples[:steps])
    seconds = clock.step_ends[-1] - clock.start
    return {
        "seconds": seconds,
        "steps": len(clock.step_ends),
        "utterances": sum(collator.utterances[:steps]),
        "audio_seconds": real / SAMPLING_RATE,
        "audio_seconds_per_second": real / SAMPLING_RATE / seconds,
        "padding_fraction": 1 - real / padded,
        "trainable_parameters": trainable,
    }


def corpora(settings: Settings):
    """(name, train split, label column, batch size, max_audio_seconds) of the two corpora. IEMOCAP-like batches
    are 4 utterances cut at 10 s: the naive setup's random batches of 8 up to 20 s (trainable feature encoder,
    eager attention) need more than this machine's 24 GiB."""
    import hub_datasets

    synthetic = synthetic_corpus(settings, settings.pick(2000, 40))
    synthetic_train = hub_datasets.synthetic_emotion_loso_fold(synthetic, test_session=1)["train"]
    count = settings.pick(1000, 24)
    durations = iemocap_like_seconds(count, seed=1)
    if settings.smoke:
        durations = np.clip(durations / 4, 0.5, 2.0)
    iemocap_like = length_matched_corpus(settings, durations, synthetic_train["text"])
    return [
        ("synthetic", synthetic_train, "label", settings.pick(8, 4), 20.0),
        ("iemocap_like", iemocap_like, "label", 4, 10.0),
    ]


def run(settings: Settings) -> Result:
    result = Result(NAME, TITLE)
    details = {"preset": settings.preset}
    for corpus_name, split, label_column, batch_size, max_audio_seconds in corpora(settings):
        steps = settings.pick(8, 2)
        with datasets_caching_disabled():
            started = time.perf_counter()
            prepared = prepare_split(split, label_column, max_audio_seconds)
            prepare_seconds = time.perf_counter() - started
        mean_seconds = float(np.mean(prepared["length"])) / SAMPLING_RATE
        with tempfile.TemporaryDirectory() as scratch:
            processor = build_processor(ModelArguments(preset=settings.preset), prepared["text"], Path(scratch))
        max_batch_seconds = round(batch_size * mean_seconds, 1)
        runs = {
            "defaults": train_throughput(settings, "defaults", prepared, processor, steps, batch_size),
            "naive": train_throughput(
                settings,
                "naive",
                decoded_on_the_fly(split, label_column, max_audio_seconds),
                processor,
                steps,
                batch_size,
            ),
            "by_duration": train_throughput(
                settings, "by_duration", prepared, processor, steps, batch_size, max_batch_seconds
            ),
        }
        rate = {setup: measured["audio_seconds_per_second"] for setup, measured in runs.items()}
        speedup = rate["defaults"] / rate["naive"]
        for setup, measured in runs.items():
            measured["utterances_per_second_at_mean_length"] = measured["audio_seconds_per_second"] / mean_seconds
            batching = f"max_batch_seconds {max_batch_seconds:g}" if setup == "by_duration" else f"of {batch_size}"
            result.add(
                f"{corpus_name}: {setup.replace('_', ' ')} ({steps} steps {batching}, {settings.preset})",
                measured["utterances_per_second_at_mean_length"],
                "utt/s",
                note=f"{measured['audio_seconds_per_second']:.2f} audio s/s, padding "
                f"{100 * measured['padding_fraction']:.1f} %, {measured['utterances'] / steps:.1f} utt. per batch",
            )
        result.add(
            f"{corpus_name}: defaults / naive (batch {batch_size}, cut at {max_audio_seconds:g} s)",
            speedup,
            "x",
            target=f">= {TARGET:g}x",
            met=speedup >= TARGET,
            note=f"one-time prepare_split: {1000 * prepare_seconds / len(split):.1f} s per 1000 utterances",
        )
        result.add(
            f"{corpus_name}: by duration / length-grouped batches of {batch_size}",
            rate["by_duration"] / rate["defaults"],
            "x",
        )
        result.add(
            f"{corpus_name}: by duration / naive",
            rate["by_duration"] / rate["naive"],
            "x",
            target=f">= {TARGET:g}x",
            met=rate["by_duration"] / rate["naive"] >= TARGET,
        )
        details[corpus_name] = {
            "batch_size": batch_size,
            "max_audio_seconds": max_audio_seconds,
            "rows": len(split),
            "mean_seconds": mean_seconds,
            "prepare_split_seconds": prepare_seconds,
            "max_batch_seconds": max_batch_seconds,
            "runs": runs,
            "speedup": speedup,
            "by_duration_speedup": rate["by_duration"] / rate["naive"],
        }
    result.details = details
    result.notes.append(
        "Random weights; the text tower's vocabulary is the BPE tokenizer run_finetune.py trains for --preset runs. "
        "The defaults' timed steps hold the longest utterances (the grouped sampler starts with the longest batch), "
        "which costs more per audio second (attention is quadratic), so the speedup is if anything understated. "
        "Batches by duration start with their most padded audio too (DurationBatchSampler), then come shuffled."
    )
    return result
