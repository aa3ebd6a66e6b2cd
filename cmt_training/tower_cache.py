"""Frozen-tower caching: run the frozen audio and text towers once, keep their outputs on disk, and train only the
cross-modal stack and the heads from the cache.

Stage 1 of pretraining (`run_pretrain.py --stage 1`), frozen-tower fine-tuning (`--freeze_towers`) and probing run the
towers at every step although their weights never change, and HuBERT on raw audio is most of a step's cost. With a
cache the towers run once per dataset; every epoch after that costs only the cross-modal layers and the heads:

    cache = build_tower_cache(model, prepared_train_split, processor, "caches/fold1-train")
    model.freeze_towers()
    trainer = CMTTrainer(model=model, args=args, train_dataset=cache, data_collator=TowerOutputCollator(), ...)

`run_finetune.py --freeze_towers true --cache_tower_outputs true` does this for every split, in
`<--cache_dir, else the fold's output folder>/tower_cache/<split>-<fingerprint prefix>`.

What the cached mode changes, compared with running the frozen towers at every step:
- the towers run once, in eval mode: no SpecAugment masking, dropout or layer drop inside the towers (with frozen
  towers these only perturbed the cross stack's inputs; the cross-modal layers and heads keep their own dropout);
- pretraining: frames chosen for masked acoustic unit prediction take the tower's mask embedding in the tower's
  OUTPUT instead of its input (the tower never sees the masked audio); unit targets are assigned from the codebook
  when the cache is built, from unmasked eval-mode features, exactly as the uncached model assigns them;
- no masked language modelling: it needs the text tower to read the masked transcript (`mlm_labels` are refused);
- every item's tower outputs come from one padded batch of the cache build (items sorted by length, so padding is
  small). Towers whose feature encoder uses group norm (hubert-base) are not padding-invariant, so their outputs differ
  slightly from those of any other batching, as they do between batchings without a cache; `batch_size=1` computes
  every item unpadded.
Everything else (cross-modal layers, pooling, heads, losses, optimizer) is unchanged: with dropout off, logits and
losses from the cache equal those of the uncached model. Single-modality models (`modality="audio"` / `"text"`) cache
the one tower they have.

A cache is a folder with `tower_outputs.arrow` (one row per item: `audio_tower_output` (frames, audio hidden) and/or
`text_tower_output` (tokens, text hidden), `length` in frames (in tokens for text-only models) for length-grouped
batching, and `labels` / `unit_labels` when there are any) and `tower_cache.json`, whose `fingerprint` hashes the
towers' weights and configs, the processor, the codebook (pretraining), the dataset's content and how the cache was
built. A cache whose fingerprint does not match is never used: `build_tower_cache` rebuilds it, or raises
`StaleTowerCacheError` with `on_stale="error"`.
"""

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Array2D, Dataset, Features, List, Value
from datasets.arrow_writer import ArrowWriter
from filelock import FileLock
from torch.nn.utils.rnn import pad_sequence

from modeling_cmt import CMTForPreTraining, CMTPreTrainedModel, CMTProcessor

from .data import SAMPLING_RATE


logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
DATA_FILE = "tower_outputs.arrow"
LOCK_FILE = "build.lock"
META_FILE = "tower_cache.json"
STORAGE_DTYPES = ("float32", "float16")
# Items run through the towers per sorted chunk: sorting within a chunk keeps padding small and rows in order.
SORT_CHUNK_BATCHES = 16


class StaleTowerCacheError(ValueError):
    """A tower cache exists but was built from other tower weights, processor, codebook or data."""


# ---------------------------------------------------------------------------------------------------------------------
# Fingerprint
# ---------------------------------------------------------------------------------------------------------------------


def _update_with_tensors(hasher, named_tensors):
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        tensor = tensor.detach().cpu().contiguous()
        hasher.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        hasher.update(tensor.flatten().view(torch.uint8).numpy().tobytes())


TOWERS = ("audio", "text")


def _towers(model: CMTPreTrainedModel, towers: tuple[str, ...] | None = None) -> list[tuple[str, torch.nn.Module]]:
    """The towers to cache: the model's towers that `towers` names (all of them by default)."""
    cmt = model.base_model
    available = (("audio", cmt.audio_model), ("text", cmt.text_model))
    return [(name, tower) for name, tower in available if tower is not None and (towers is None or name in towers)]


def _keeps_text(model: CMTPreTrainedModel, towers: tuple[str, ...]) -> bool:
    """Whether the cached rows keep their transcripts: the model has a text tower that is not cached (it trains).
    Part of the fingerprint, so that an audio-only model's cache (same audio tower) is not reused without them."""
    return model.base_model.text_model is not None and "text" not in towers


def _check_towers(model: CMTPreTrainedModel, towers: tuple[str, ...] | None) -> tuple[str, ...]:
    """`towers` checked against the model: names of towers it has (default: all of them)."""
    if towers is not None:
        unknown = [name for name in towers if name not in TOWERS]
        if unknown:
            raise ValueError(f"towers must name some of {list(TOWERS)}, got {list(towers)}.")
    cached = tuple(name for name, _ in _towers(model, towers))
    if not cached:
        raise ValueError(f"The model has none of the towers {list(towers)} to cache.")
    if _uses_unit_targets(model) and "audio" not in cached:
        raise ValueError("Unit targets come from the audio tower: cache it too (towers include 'audio').")
    return cached


def _uses_unit_targets(model: CMTPreTrainedModel) -> bool:
    return isinstance(model, CMTForPreTraining) and model.config.unit_loss_weight > 0


def tower_cache_fingerprint(
    model: CMTPreTrainedModel,
    dataset: Dataset,
    processor: CMTProcessor,
    batch_size: int = 8,
    storage_dtype: str = "float32",
    towers: tuple[str, ...] | None = None,
) -> str:
    """SHA-256 of everything the cached tower outputs depend on: the cache format, which towers are cached and their
    configs and weights, the codebook (pretraining models with a unit loss), the feature extractor and tokenizer, the
    dataset's waveforms, transcripts and labels, and the build's batch size and storage dtype."""
    cached = _check_towers(model, towers)
    hasher = hashlib.sha256()
    hasher.update(f"format={CACHE_FORMAT_VERSION};batch_size={batch_size};dtype={storage_dtype}".encode())
    hasher.update(f"towers={','.join(cached)};keeps_text={_keeps_text(model, cached)}".encode())
    for name, tower in _towers(model, cached):
        hasher.update(f"{name}:{tower.config.to_json_string(use_diff=False)}".encode())
        _update_with_tensors(hasher, tower.state_dict().items())
    if _uses_unit_targets(model):
        hasher.update(f"codebook_layer={model.config.codebook_layer}".encode())
        _update_with_tensors(hasher, [("codebook", model.codebook)])
    hasher.update(processor.feature_extractor.to_json_string().encode())
    tokenizer = processor.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocabulary = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    hasher.update(f"{type(tokenizer).__name__}:{tokenizer.model_max_length}:{vocabulary}".encode())
    columns = [name for name in ("waveform", "text", "labels") if name in dataset.column_names]
    hasher.update(f"rows={len(dataset)};columns={columns}".encode())
    for batch in dataset.with_format("numpy", columns=columns).iter(batch_size=256):
        for waveform in batch["waveform"]:
            waveform = np.asarray(waveform, dtype=np.float32)
            hasher.update(len(waveform).to_bytes(8, "little") + waveform.tobytes())
        hasher.update(json.dumps([str(text) for text in batch["text"]]).encode())
        if "labels" in batch:
            hasher.update(np.asarray(batch["labels"]).tobytes())
    return hasher.hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# Building and loading
# ---------------------------------------------------------------------------------------------------------------------


def build_tower_cache(
    model: CMTPreTrainedModel,
    dataset: Dataset,
    processor: CMTProcessor,
    cache_dir: str | os.PathLike,
    *,
    batch_size: int = 8,
    storage_dtype: str = "float32",
    on_stale: str = "rebuild",
    towers: tuple[str, ...] | None = None,
) -> Dataset:
    """
    The towers' outputs for every row of `dataset` (as `prepare_split` makes it: `waveform` at 16 kHz, `text`, and
    optionally `labels`), as a torch-formatted `Dataset` that [`TowerOutputCollator`] batches. Reuses the cache in
    `cache_dir` when its fingerprint matches, else builds it there (running the towers once, in eval mode, without
    gradients, on the model's device). For a pretraining model with a unit loss, unit targets are stored too; a
    single-modality model caches its one tower.

    Args:
        batch_size: items per tower forward while building.
        storage_dtype: `"float32"` (exact) or `"float16"` (half the disk).
        on_stale: what to do with a cache in `cache_dir` built from anything else: `"rebuild"` it (with a warning)
            or `"error"` (raise [`StaleTowerCacheError`]).
        towers: which towers to cache, `("audio",)` / `("text",)` / both (default: every tower the model has). A
            tower left out keeps training: for the text tower the rows keep their `text`, which
            [`TowerOutputCollator`] tokenizes.
    """
    if on_stale not in ("rebuild", "error"):
        raise ValueError(f"on_stale must be 'rebuild' or 'error', got {on_stale!r}.")
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage_dtype must be one of {list(STORAGE_DTYPES)}, got {storage_dtype!r}.")
    missing = [name for name in ("waveform", "text") if name not in dataset.column_names]
    if missing:
        raise ValueError(
            f"The dataset lacks {missing}; build the cache from `prepare_split`'s output (columns waveform, text, "
            f"labels), not from {dataset.column_names}."
        )
    if _uses_unit_targets(model) and not model.codebook_is_fitted:
        raise ValueError("The unit codebook is not fitted: run examples/fit_codebook.py before caching unit targets.")

    towers = _check_towers(model, towers)
    cache_dir = Path(cache_dir)
    fingerprint = tower_cache_fingerprint(model, dataset, processor, batch_size, storage_dtype, towers)
    meta_path = cache_dir / META_FILE
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Runs sharing a cache folder may start at once (the study's parallel runs): one builds, the others wait and
    # reuse what it wrote.
    with FileLock(str(cache_dir / LOCK_FILE)):
        if meta_path.is_file():
            built_for = json.loads(meta_path.read_text()).get("fingerprint", "")
            if built_for == fingerprint and (cache_dir / DATA_FILE).is_file():
                logger.info(f"Using the tower cache in {cache_dir} ({fingerprint[:12]}).")
                return load_tower_cache(cache_dir, fingerprint)
            message = (
                f"The tower cache in {cache_dir} was built from other tower weights, processor, codebook or data "
                f"(fingerprint {built_for[:12] or 'missing'}, these give {fingerprint[:12]})"
            )
            if on_stale == "error":
                raise StaleTowerCacheError(f"{message}: delete it, use another cache_dir, or pass on_stale='rebuild'.")
            logger.warning(f"{message}: rebuilding it.")
        _write_tower_cache(model, dataset, processor, cache_dir, fingerprint, batch_size, storage_dtype, towers)
        return load_tower_cache(cache_dir, fingerprint)


def load_tower_cache(cache_dir: str | os.PathLike, fingerprint: str | None = None) -> Dataset:
    """Opens a tower cache (memory-mapped, torch-formatted). With `fingerprint` (from [`tower_cache_fingerprint`]) a
    cache built from anything else raises [`StaleTowerCacheError`]."""
    cache_dir = Path(cache_dir)
    meta_path, data_path = cache_dir / META_FILE, cache_dir / DATA_FILE
    if not (meta_path.is_file() and data_path.is_file()):
        raise FileNotFoundError(f"No complete tower cache in {cache_dir} (needs {META_FILE} and {DATA_FILE}).")
    meta = json.loads(meta_path.read_text())
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        raise StaleTowerCacheError(
            f"The tower cache in {cache_dir} has fingerprint {meta.get('fingerprint', '')[:12]}, expected "
            f"{fingerprint[:12]}: it was built from other tower weights, processor, codebook or data."
        )
    dataset = Dataset.from_file(str(data_path))
    tensors = [name for name in dataset.column_names if name not in ("length", "text")]
    return dataset.with_format("torch", columns=tensors, output_all_columns=True)


def _cache_features(model: CMTPreTrainedModel, dataset: Dataset, storage_dtype: str, towers) -> Features:
    features = {
        f"{name}_tower_output": Array2D(shape=(None, tower.config.hidden_size), dtype=storage_dtype)
        for name, tower in _towers(model, towers)
    }
    if _keeps_text(model, towers):
        features["text"] = Value("string")  # the text tower trains: the collator tokenizes the transcript
    features["length"] = Value("int32")
    if "labels" in dataset.column_names:
        features["labels"] = dataset.features["labels"]
    if _uses_unit_targets(model):
        features["unit_labels"] = List(Value("int32"))
    return Features(features)


@torch.no_grad()
def _tower_outputs(model: CMTPreTrainedModel, processor: CMTProcessor, rows: list[dict], towers) -> list[dict]:
    """Runs the cached towers on one padded batch and returns each item's unpadded outputs."""
    cmt = model.base_model
    device = next(cmt.parameters()).device
    inputs = processor(
        audio=[np.asarray(row["waveform"], dtype=np.float32) for row in rows] if "audio" in towers else None,
        text=[row["text"] for row in rows] if "text" in towers else None,
        sampling_rate=SAMPLING_RATE,
        min_audio_samples=model.config.min_input_samples() if "audio" in towers else None,
        return_tensors="pt",
    )
    inputs = {key: value.to(device) for key, value in inputs.items()}
    outputs = [{} for _ in rows]
    if cmt.text_model is not None and "text" not in towers:
        for row, item in zip(rows, outputs):
            item["text"] = str(row["text"])
    if "text" in towers:
        text = cmt.get_text_features(inputs["input_ids"], inputs["attention_mask"]).last_hidden_state
        tokens = inputs["attention_mask"].sum(-1).tolist()
        for index, item in enumerate(outputs):
            item["text_tower_output"] = text[index, : tokens[index]].float().cpu().numpy()
            item["length"] = int(tokens[index])
    if "audio" in towers:
        with_units = _uses_unit_targets(model)
        audio = cmt.get_audio_features(
            inputs["input_values"],
            inputs["audio_attention_mask"],
            output_hidden_states=[model.config.codebook_layer] if with_units else None,
        )
        frames = audio.frame_mask.sum(-1).tolist()
        units = model.assign_units(audio.hidden_states[model.config.codebook_layer]) if with_units else None
        for index, item in enumerate(outputs):
            item["audio_tower_output"] = audio.last_hidden_state[index, : frames[index]].float().cpu().numpy()
            item["length"] = int(frames[index])  # length-grouped batching counts frames when there is audio
            if units is not None:
                item["unit_labels"] = units[index, : frames[index]].cpu().numpy().astype(np.int32)
    for row, item in zip(rows, outputs):
        if "labels" in row:
            item["labels"] = row["labels"]
    return outputs


def _write_tower_cache(model, dataset, processor, cache_dir: Path, fingerprint, batch_size, storage_dtype, towers):
    started = time.perf_counter()
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / META_FILE).unlink(missing_ok=True)  # the metadata is written last: without it a cache is incomplete
    temporary = cache_dir / f"{DATA_FILE}.tmp"
    columns = [name for name in ("waveform", "text", "labels") if name in dataset.column_names]
    rows = dataset.select_columns(columns).with_format("numpy")
    lengths = list(dataset["length"]) if "length" in dataset.column_names else None
    chunk = batch_size * SORT_CHUNK_BATCHES
    was_training = model.training
    model.eval()
    writer = ArrowWriter(features=_cache_features(model, dataset, storage_dtype, towers), path=str(temporary))
    try:
        for start in range(0, len(dataset), chunk):
            indices = list(range(start, min(start + chunk, len(dataset))))
            chunk_rows = {index: rows[index] for index in indices}
            by_length = sorted(
                indices,
                key=lambda index: lengths[index] if lengths is not None else len(chunk_rows[index]["waveform"]),
                reverse=True,
            )
            outputs = {}
            for offset in range(0, len(by_length), batch_size):
                batch_indices = by_length[offset : offset + batch_size]
                items = _tower_outputs(model, processor, [chunk_rows[index] for index in batch_indices], towers)
                outputs.update(zip(batch_indices, items))
            for index in indices:
                writer.write(outputs[index])
        writer.finalize()
    finally:
        writer.close()
        model.train(was_training)
    os.replace(temporary, cache_dir / DATA_FILE)
    meta = {
        "fingerprint": fingerprint,
        "format_version": CACHE_FORMAT_VERSION,
        "rows": len(dataset),
        "batch_size": batch_size,
        "storage_dtype": storage_dtype,
        "unit_labels": _uses_unit_targets(model),
        "towers": list(towers),
        **{f"{name}_tower": tower.config.model_type for name, tower in _towers(model, towers)},
        "build_seconds": round(time.perf_counter() - started, 2),
    }
    (cache_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    logger.info(f"Built the tower cache in {cache_dir}: {len(dataset)} rows in {meta['build_seconds']} s.")


# ---------------------------------------------------------------------------------------------------------------------
# Collator
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class TowerOutputCollator:
    """Pads cached rows into what `forward` takes when the towers are skipped: `audio_tower_output` (batch, frames,
    hidden) with the boolean `audio_frame_mask`, `text_tower_output` (batch, tokens, text hidden) with the token
    `attention_mask` (each when the cache has that tower), and `labels` (float for regression, else long) /
    `unit_labels` when the rows have them. Rows of a cache without the text tower carry their `text`, which
    `processor` tokenizes into `input_ids` and `attention_mask` for the text tower that trains."""

    regression: bool = False
    feature_dtype: torch.dtype = torch.float32
    processor: CMTProcessor | None = None

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = {}
        if "audio_tower_output" in rows[0]:
            audio = [torch.as_tensor(row["audio_tower_output"], dtype=self.feature_dtype) for row in rows]
            frames = torch.tensor([len(states) for states in audio])
            batch["audio_tower_output"] = pad_sequence(audio, batch_first=True)  # (batch, frames, hidden)
            batch["audio_frame_mask"] = torch.arange(int(frames.max()))[None, :] < frames[:, None]  # (batch, frames)
        if "text_tower_output" in rows[0]:
            text = [torch.as_tensor(row["text_tower_output"], dtype=self.feature_dtype) for row in rows]
            tokens = torch.tensor([len(states) for states in text])
            batch["text_tower_output"] = pad_sequence(text, batch_first=True)  # (batch, tokens, hidden)
            batch["attention_mask"] = (torch.arange(int(tokens.max()))[None, :] < tokens[:, None]).long()
        if "text" in rows[0] and "text_tower_output" not in rows[0]:
            if self.processor is None:
                raise ValueError("These cached rows need their transcripts tokenized: pass `processor=`.")
            encoded = self.processor(text=[row["text"] for row in rows], return_tensors="pt")
            batch["input_ids"], batch["attention_mask"] = encoded["input_ids"], encoded["attention_mask"]
        if "labels" in rows[0]:
            dtype = torch.float32 if self.regression else torch.long
            batch["labels"] = torch.stack([torch.as_tensor(row["labels"]) for row in rows]).to(dtype)
        if "unit_labels" in rows[0]:
            units = [torch.as_tensor(row["unit_labels"], dtype=torch.long) for row in rows]
            batch["unit_labels"] = pad_sequence(units, batch_first=True)  # (batch, frames)
        return batch
