"""Data preparation and collators: audio decoded and resampled once into Arrow, with a `length` column for the
Trainer's length-grouped batches, and collators that pad through `CMTProcessor`."""

from dataclasses import dataclass

import numpy as np
import torch
from datasets import Audio, Dataset, IterableDataset
from transformers import DataCollatorForLanguageModeling

from modeling_cmt import SAMPLING_RATE, CMTProcessor


# Columns a prepared split keeps besides the decoded audio (the rest of a corpus's columns are dropped).
KEPT_COLUMNS = ("text", "waveform", "length", "labels", "id", "speaker", "session", "item_type")


def prepare_split(dataset: Dataset, label_column: str | None, max_audio_seconds: float, num_proc: int | None = None):
    """Decodes and resamples once (the result is cached as Arrow): `waveform` (float32, 16 kHz), `length` (samples,
    for length-grouped batching), `text`, and `labels`. A streamed dataset is decoded lazily instead."""
    max_samples = int(max_audio_seconds * SAMPLING_RATE)
    dataset = dataset.cast_column("audio", Audio(sampling_rate=SAMPLING_RATE))
    drop = [name for name in (dataset.column_names or []) if name not in KEPT_COLUMNS]

    def decode(row):
        waveform = np.asarray(row["audio"]["array"], dtype=np.float32)[:max_samples]
        prepared = {"waveform": waveform, "length": len(waveform)}
        if label_column is not None:
            prepared["labels"] = row[label_column]
        return prepared

    if isinstance(dataset, IterableDataset):
        return dataset.map(decode, remove_columns=drop)
    prepared = dataset.map(decode, num_proc=num_proc, desc="decoding audio", remove_columns=drop)
    # Rows come back with the waveform as a NumPy array (a zero-copy Arrow view), not a list of Python floats.
    return prepared.with_format("numpy", columns=["waveform"], output_all_columns=True)


def utterance_seconds(dataset: Dataset) -> np.ndarray:
    """Every utterance's duration in seconds, from the `length` column (samples at 16 kHz) of `prepare_split`."""
    if not isinstance(dataset, Dataset) or not {"length", "waveform"} <= set(dataset.column_names):
        raise ValueError(
            "Batching by audio duration (--max_batch_seconds) needs the waveforms and their `length` column that "
            "prepare_split writes (samples at 16 kHz); a streamed corpus and cached tower outputs have neither."
        )
    return np.asarray(dataset["length"], dtype=np.float64) / SAMPLING_RATE


@dataclass
class AudioTextCollator:
    """Pads audio (sample-level mask) and text (token mask) with the processor, which checks every item's values
    (`min_audio_samples`: the model's `config.min_input_samples()`, the shortest audio its front end takes), and
    attaches `labels` if present."""

    processor: CMTProcessor
    regression: bool = False
    min_audio_samples: int | None = None

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.processor(
            audio=[np.asarray(row["waveform"], dtype=np.float32) for row in rows],
            text=[row["text"] for row in rows],
            sampling_rate=SAMPLING_RATE,
            min_audio_samples=self.min_audio_samples,
            return_tensors="pt",
        )
        batch = dict(batch)
        if "labels" in rows[0]:
            dtype = torch.float32 if self.regression else torch.long
            batch["labels"] = torch.tensor([row["labels"] for row in rows], dtype=dtype)
        return batch


@dataclass
class PretrainingCollator:
    """Audio-text pairs for `CMTForPreTraining`: padded audio, and text with MLM masking (`mlm_labels`)."""

    processor: CMTProcessor
    mlm_probability: float = 0.15
    min_audio_samples: int | None = None

    def __post_init__(self):
        self.pairs = AudioTextCollator(self.processor, min_audio_samples=self.min_audio_samples)
        self.masker = DataCollatorForLanguageModeling(self.processor.tokenizer, mlm_probability=self.mlm_probability)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.pairs([{key: value for key, value in row.items() if key != "labels"} for row in rows])
        batch["input_ids"], batch["mlm_labels"] = self.masker.torch_mask_tokens(batch["input_ids"].clone())
        return batch
