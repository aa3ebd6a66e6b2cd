"""6. Data pipeline: how fast decoding, resampling and collating run compared with how fast the model consumes
utterances in training, and how much of each batch is padding under each batching policy.

Throughput (utterances/s, one process, the default `dataloader_num_workers` of `CMTTrainingArguments`):
- first epoch of the defaults: `prepare_split` decodes (and resamples a 44.1 kHz source) once into Arrow, then
  `AudioTextCollator` pads and normalises each batch;
- later epochs of the defaults: reading the Arrow rows and collating;
- the naive path: decoding (and resampling) again at every access, then collating.
Each is compared with the utterances/s of a train step with the package defaults on the same utterances.

Padding: the share of audio frames in a batch that are padding, for random batches of 8, HF's length-grouped sampler
(`train_sampling_strategy="group_by_length"`, the package default), a full sort (the lower bound of fixed batches of
8) and batches by duration (`--max_batch_seconds` = 8 x the mean duration: as much audio per batch on average), on
IEMOCAP-like durations (5531 utterances, cut at `max_audio_seconds=20`) and on the synthetic corpus.
"""

import io
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import torch
from datasets import Audio
from torch.utils.data import DataLoader
from transformers.trainer_pt_utils import get_length_grouped_indices

from cmt_training.arguments import CMTTrainingArguments, ModelArguments
from cmt_training.build import build_processor
from cmt_training.data import SAMPLING_RATE, AudioTextCollator, prepare_split
from cmt_training.sampling import DurationBatchSampler
from modeling_cmt import CMTConfig

from .corpora import datasets_caching_disabled, iemocap_like_seconds, length_matched_corpus, synthetic_corpus
from .finetune_throughput import decoded_on_the_fly
from .models import build_classifier, train_step_function
from .reporting import Result
from .settings import Settings
from .timing import interleaved, median


NAME = "data_pipeline"
TITLE = "Data pipeline throughput vs model consumption; padding waste per batching policy"
TARGET = 5.0
BATCH_SIZE = 8
MAX_AUDIO_SECONDS = 20.0


def padding_fraction(frames: np.ndarray, batches: list[list[int]]) -> float:
    real = padded = 0
    for batch in batches:
        lengths = frames[batch]
        real += int(lengths.sum())
        padded += len(batch) * int(lengths.max())
    return 1 - real / padded


def fixed_size_batches(order: list[int], batch_size: int) -> list[list[int]]:
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def batches_by_duration(seconds: np.ndarray, max_batch_seconds: float, epoch: int) -> list[list[int]]:
    sampler = DurationBatchSampler(seconds, max_batch_seconds)
    sampler.set_epoch(epoch)
    return list(sampler)


def padding_by_policy(frames: np.ndarray, seconds: np.ndarray, batch_size: int, epochs: int = 5) -> dict[str, float]:
    """Mean padding share over `epochs` shuffles for each batching policy."""
    lengths = frames.tolist()
    budget = batch_size * float(seconds.mean())
    policies = {
        "random": lambda seed: fixed_size_batches(
            torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist(), batch_size
        ),
        "length-grouped": lambda seed: fixed_size_batches(
            get_length_grouped_indices(lengths, batch_size, generator=torch.Generator().manual_seed(seed)), batch_size
        ),
        "sorted": lambda seed: fixed_size_batches(np.argsort(frames, kind="stable").tolist(), batch_size),
        f"by duration (max_batch_seconds {budget:.1f})": lambda seed: batches_by_duration(seconds, budget, seed),
    }
    return {
        name: float(np.mean([padding_fraction(frames, batches(seed)) for seed in range(epochs)]))
        for name, batches in policies.items()
    }


def wav_seconds(dataset) -> np.ndarray:
    """Durations read from the WAV headers, without decoding."""
    seconds = []
    for audio in dataset.cast_column("audio", Audio(decode=False))["audio"]:
        with wave.open(io.BytesIO(audio["bytes"])) as file:
            seconds.append(file.getnframes() / file.getframerate())
    return np.array(seconds)


def loader_throughput(dataset, collator, num_workers: int, limit: int | None = None) -> float:
    """Utterances/s of iterating a DataLoader over `dataset` (first batch included: nothing is warm in epoch 1)."""
    loader = DataLoader(dataset, batch_size=BATCH_SIZE, collate_fn=collator, num_workers=num_workers)
    started, items = time.perf_counter(), 0
    for batch in loader:
        items += len(batch["input_ids"])
        if limit is not None and items >= limit:
            break
    return items / (time.perf_counter() - started)


def run(settings: Settings) -> Result:
    import hub_datasets

    result = Result(NAME, TITLE)
    details = {"batch_size": BATCH_SIZE}
    frames_config = CMTConfig.from_preset("cmt-4")
    max_samples = int(MAX_AUDIO_SECONDS * SAMPLING_RATE)

    # Padding per batching policy
    corpus = synthetic_corpus(settings, settings.pick(2000, 40))
    synthetic_seconds = np.concatenate([wav_seconds(corpus[name]) for name in corpus])
    for corpus_name, durations in (
        ("IEMOCAP-like", iemocap_like_seconds(settings.pick(5531, 200))),
        ("synthetic", synthetic_seconds),
    ):
        samples = np.minimum((durations * SAMPLING_RATE).astype(int), max_samples)
        frames = np.array([frames_config.audio_frames(int(n)) for n in samples])
        padding = padding_by_policy(frames, samples / SAMPLING_RATE, BATCH_SIZE)
        for policy, share in padding.items():
            batching = policy if policy.startswith("by duration") else f"batch {BATCH_SIZE}: {policy}"
            result.add(f"padding, {corpus_name} ({len(frames)} utt.), {batching}", 100 * share, "%")
        details[f"padding_{corpus_name}"] = padding
        details[f"durations_{corpus_name}"] = {
            "mean": float(durations.mean()),
            "median": float(np.median(durations)),
            "max": float(durations.max()),
        }

    # Throughput of the data paths
    count = settings.pick(200, 16)
    split = hub_datasets.synthetic_emotion_loso_fold(corpus, test_session=1)["train"].select(range(count))
    resampled = length_matched_corpus(settings, wav_seconds(split), split["text"], sampling_rate=44100)
    with tempfile.TemporaryDirectory() as scratch:
        num_workers = CMTTrainingArguments(output_dir=scratch).dataloader_num_workers
        with datasets_caching_disabled():
            rates = {}
            for name, source in (("16 kHz", split), ("44.1 kHz", resampled)):
                started = time.perf_counter()
                prepared = prepare_split(source, "label", MAX_AUDIO_SECONDS)
                rates[f"prepare_split ({name}: decode{' + resample' if name != '16 kHz' else ''})"] = count / (
                    time.perf_counter() - started
                )
        processor = build_processor(ModelArguments(preset=settings.preset), prepared["text"], Path(scratch))
    collator = AudioTextCollator(processor)
    rates["collate from Arrow (later epochs of the defaults)"] = loader_throughput(prepared, collator, num_workers)
    for name, source in (("16 kHz", split), ("44.1 kHz", resampled)):
        naive = decoded_on_the_fly(source, "label", MAX_AUDIO_SECONDS)
        rates[f"decode{' + resample' if name != '16 kHz' else ''} + collate at every access ({name}, naive)"] = (
            loader_throughput(naive, collator, num_workers)
        )

    # What the model consumes: train steps with the package defaults on a length-grouped batch of median length
    runtime = settings.runtime
    model = build_classifier(settings.preset, runtime)
    step = train_step_function(model, runtime.to_device(median_batch(collator, prepared, model.config)), runtime)
    step_seconds = median(interleaved({"step": step}, runtime, rounds=settings.repeats)["step"])
    model_rate = BATCH_SIZE / step_seconds

    result.add(f"model consumption (train step, batch {BATCH_SIZE}, {settings.preset})", model_rate, "utt/s")
    collate_rate = rates["collate from Arrow (later epochs of the defaults)"]
    first_epoch_rate = 1 / (1 / rates["prepare_split (44.1 kHz: decode + resample)"] + 1 / collate_rate)
    for name, rate in rates.items():
        result.add(f"{name}", rate, "utt/s", note=f"{rate / model_rate:.0f}x the model")
    for name, rate in (
        ("first epoch of the defaults (decode + resample + collate) / model", first_epoch_rate),
        ("later epochs of the defaults (collate) / model", collate_rate),
    ):
        result.add(name, rate / model_rate, "x", target=f">= {TARGET:g}x", met=rate / model_rate >= TARGET)
    result.details = {
        **details,
        "rates_utterances_per_second": rates,
        "model_utterances_per_second": model_rate,
        "num_workers": num_workers,
        "throughput_utterances": count,
    }
    result.notes.append(
        f"Data rates use {num_workers} DataLoader workers (the default): decoding and collating run in the training "
        "process between steps, so on CPU they add their time to each step rather than overlap with it."
    )
    return result


def median_batch(collator, prepared, config) -> dict[str, torch.Tensor]:
    """The batch that length grouping makes around the median length, collated, labels in the model's range."""
    by_length = np.argsort(prepared["length"])
    middle = max(0, len(by_length) // 2 - BATCH_SIZE // 2)
    batch = dict(collator([prepared[int(index)] for index in by_length[middle : middle + BATCH_SIZE]]))
    batch["labels"] = batch["labels"] % config.num_labels
    return batch
