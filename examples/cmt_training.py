"""Helpers shared by the example scripts: tasks and their protocols, argument groups, model and processor building,
collators, the Trainer subclass, metrics glue and the results card.

The model package (`modeling_cmt`) never imports this module; the scripts beside it do.
"""

import errno
import importlib.util
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Audio, ClassLabel, Dataset, DatasetDict, IterableDataset, load_dataset, load_from_disk
from transformers import (
    AutoConfig,
    DataCollatorForLanguageModeling,
    HfArgumentParser,
    RobertaTokenizerFast,
    Trainer,
    TrainingArguments,
    Wav2Vec2FeatureExtractor,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

import modeling_cmt
from modeling_cmt import CMTConfig, CMTProcessor, load_preset


logger = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent
SAMPLING_RATE = 16000


def _load_metric_function(module_name: str, function_name: str):
    path = EXAMPLES_DIR / "metrics" / module_name / f"{module_name}.py"
    spec = importlib.util.spec_from_file_location(f"cmt_metrics_{module_name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, function_name)


compute_emotion_metrics = _load_metric_function("emotion_recognition", "compute_emotion_metrics")
compute_sentiment_metrics = _load_metric_function("sentiment_regression", "compute_sentiment_metrics")


# ---------------------------------------------------------------------------------------------------------------------
# Tasks: corpus, label column, split protocol, checkpoint-selection metric
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    corpus: str
    label_column: str
    problem: str  # "classification" or "regression"
    folds: tuple[int, ...]  # held-out session per fold; () for fixed train/validation/test splits
    best_metric: str
    greater_is_better: bool
    needs_data_dir: bool
    description: str


TASKS = {
    "synthetic_emotion": TaskSpec(
        "synthetic_emotion", "label", "classification", (1, 2, 3, 4, 5), "ua", True, False,
        "embedded espeak-ng corpus, 4 classes, leave-one-session-out (2 voices per session)",
    ),
    "synthetic_sentiment": TaskSpec(
        "synthetic_emotion", "sentiment", "regression", (), "mae", False, False,
        "embedded espeak-ng corpus, sentiment score in [-3, 3], speaker-disjoint train/validation/test",
    ),
    "iemocap": TaskSpec(
        "iemocap", "label", "classification", (1, 2, 3, 4, 5), "ua", True, True,
        "IEMOCAP 4 classes (hap+exc merged), leave-one-session-out, validation = the next session",
    ),
    "mosei": TaskSpec(
        "cmu_mosei", "sentiment", "regression", (), "mae", False, True,
        "CMU-MOSEI sentiment regression in [-3, 3], standard folds",
    ),
}  # fmt: skip


def get_task(data_args) -> TaskSpec:
    """The task named by `--task`; `dataset` describes the user's own DatasetDict from its label column's type."""
    if data_args.task == "dataset":
        corpus = load_user_dataset(data_args.dataset_path)
        column = data_args.label_column
        feature = corpus["train"].features.get(column)
        if feature is None:
            raise ValueError(
                f"--label_column {column!r} is not a column of {data_args.dataset_path}; columns: "
                f"{', '.join(corpus['train'].column_names)}."
            )
        if isinstance(feature, ClassLabel):
            return TaskSpec("dataset", column, "classification", (), "ua", True, False, f"{data_args.dataset_path}")
        if getattr(feature, "dtype", "").startswith("float"):
            return TaskSpec("dataset", column, "regression", (), "mae", False, False, f"{data_args.dataset_path}")
        raise ValueError(f"--label_column {column!r} must be a ClassLabel (classification) or a float (regression).")
    if data_args.task not in TASKS:
        raise ValueError(f"Unknown task {data_args.task!r}. Available tasks: {', '.join(TASKS)}, dataset.")
    return TASKS[data_args.task]


def load_user_dataset(path: str | None) -> DatasetDict:
    """A DatasetDict saved with `save_to_disk`, or anything `load_dataset` reads, with train/validation/test splits
    and `audio` and `text` columns."""
    if not path:
        raise ValueError("--task dataset needs --dataset_path (a DatasetDict folder or a dataset name).")
    corpus = load_from_disk(path) if (Path(path) / "dataset_dict.json").is_file() else load_dataset(path)
    missing = [name for name in ("train", "validation", "test") if name not in corpus]
    if missing:
        raise ValueError(f"{path} lacks the split(s) {missing}; it has {list(corpus)}. Provide train/validation/test.")
    absent = [name for name in ("audio", "text") if name not in corpus["train"].column_names]
    if absent:
        raise ValueError(f"{path} lacks the column(s) {absent}; columns: {', '.join(corpus['train'].column_names)}.")
    return corpus


def resolve_folds(task: TaskSpec, test_fold: str | None) -> list[int | None]:
    """`test_fold` as the list of held-out sessions to run: one (`3`), several (`1,3,5`) or all of them (`all`)."""
    if not task.folds:
        if test_fold not in (None, "", "none"):
            raise ValueError(
                f"This task has fixed train/validation/test splits; drop --test_fold (got {test_fold!r})."
            )
        return [None]
    if test_fold in (None, ""):
        raise ValueError(f"Pass --test_fold with one of {list(task.folds)} or 'all' (leave-one-session-out).")
    if test_fold == "all":
        return list(task.folds)
    folds = test_fold.split(",")
    if not all(fold.strip().isdigit() and int(fold) in task.folds for fold in folds) or len(set(folds)) != len(folds):
        raise ValueError(
            f"--test_fold must be one of {list(task.folds)}, a comma-separated list of them, or 'all'; got {test_fold!r}."
        )
    return [int(fold) for fold in folds]


def load_corpus(task: TaskSpec, data_args) -> DatasetDict:
    """The corpus of a task as the builders in `hub_datasets/` return it."""
    import hub_datasets

    if task.corpus == "dataset":
        return load_user_dataset(data_args.dataset_path)
    if task.needs_data_dir and not data_args.data_dir:
        raise ValueError(f"Task on {task.corpus} needs --data_dir pointing at your local copy of the corpus.")
    if task.corpus == "synthetic_emotion":
        config = "sentiment" if task.label_column == "sentiment" else "emotion"
        return hub_datasets.load_synthetic_emotion(
            config, num_utterances=data_args.synthetic_size, cache_dir=data_args.cache_dir
        )
    if task.corpus == "iemocap":
        return hub_datasets.load_iemocap(data_args.data_dir, "4class", cache_dir=data_args.cache_dir)
    return hub_datasets.load_cmu_mosei(data_args.data_dir, cache_dir=data_args.cache_dir)


def task_splits(task: TaskSpec, corpus: DatasetDict, fold: int | None) -> DatasetDict:
    """train / validation / test of one fold (speaker-disjoint by construction and checked by the fold helpers)."""
    import hub_datasets

    if fold is None:
        return DatasetDict({name: corpus[name] for name in ("train", "validation", "test")})
    if task.corpus == "iemocap":
        return hub_datasets.iemocap_loso_fold(corpus, test_session=fold)
    return hub_datasets.synthetic_emotion_loso_fold(corpus, test_session=fold)


def load_pretraining_corpus(data_args):
    """Audio-transcript pairs for pretraining: an `audio_text_pairs` source (`--data_dir`: a folder with a metadata
    file, a dataset folder or a Hub dataset name; streaming with `--streaming`), or, for task-adaptive pretraining
    (TAPT), the training split of a task's fold (labels unused, the fold's test speakers never included)."""
    import hub_datasets

    if data_args.task == "audio_text_pairs":
        if not data_args.data_dir:
            raise ValueError(
                "--task audio_text_pairs needs --data_dir (a folder with metadata.csv/.jsonl, or a dataset)."
            )
        return hub_datasets.load_audio_text_pairs(
            data_args.data_dir,
            audio_column=data_args.audio_column,
            text_column=data_args.text_column,
            split="train",
            streaming=data_args.streaming,
            cache_dir=data_args.cache_dir,
        )
    task = get_task(data_args)
    folds = resolve_folds(task, data_args.test_fold)
    if len(folds) != 1:
        raise ValueError(
            "Pretraining on a task (TAPT) uses one fold's training split: pass --test_fold with one session."
        )
    return task_splits(task, load_corpus(task, data_args), folds[0])["train"]


def label_names(task: TaskSpec, dataset: Dataset) -> list[str] | None:
    if task.problem == "regression":
        return None
    return dataset.features[task.label_column].names


# ---------------------------------------------------------------------------------------------------------------------
# Argument groups
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ModelArguments:
    """Where the model comes from, and the CMT options a run may change."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A CMT checkpoint (folder or Hub id), e.g. the output of run_pretrain.py."}
    )
    audio_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Audio tower checkpoint (with --text_model_name_or_path), e.g. facebook/hubert-base-ls960."},
    )
    text_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Text tower checkpoint, e.g. FacebookAI/roberta-base."}
    )
    preset: str | None = field(
        default=None, metadata={"help": f"A preset ({', '.join(modeling_cmt.list_presets())}) with random weights."}
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer for --preset runs; by default a byte-level BPE is trained on the training texts."
        },
    )
    modality: str | None = field(default=None, metadata={"help": "both | audio (HuBERT only) | text (RoBERTa only)."})
    num_cross_layers: int | None = field(default=None, metadata={"help": "0 = Shallow-Fusion."})
    pooling: str | None = field(default=None, metadata={"help": "mean | layer_pooler."})
    ortho_weight: float | None = field(default=None, metadata={"help": "α of the orthogonality loss."})
    cross_hidden_state_index: int | None = field(
        default=None, metadata={"help": "Which cross-modal hidden state is pooled (paper Figure 2); -1 = last."}
    )
    cross_layer_init: str | None = field(default=None, metadata={"help": "random | audio_top_layers (tower runs)."})
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Extra CMTConfig values, e.g. 'classifier_dropout=0.2,cross_attention_dropout=0.0'."},
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "eager | sdpa (| flash_attention_2 on GPUs)."})
    freeze_feature_encoder: bool = field(default=True, metadata={"help": "Keep the conv feature encoder frozen."})
    freeze_towers: bool = field(default=False, metadata={"help": "Train only the cross-modal layers and the head."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Allow a checkpoint whose head has another number of labels."}
    )
    cache_tower_outputs: bool = field(
        default=False,
        metadata={"help": "With --freeze_towers: run the towers once, cache their outputs, train only the rest."},
    )

    def config_kwargs(self) -> dict[str, Any]:
        """CMTConfig values this run sets explicitly."""
        names = (
            "modality",
            "num_cross_layers",
            "pooling",
            "ortho_weight",
            "cross_hidden_state_index",
            "cross_layer_init",
        )
        kwargs = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        kwargs.update(parse_overrides(self.config_overrides))
        return kwargs


@dataclass
class DataArguments:
    task: str = field(default="synthetic_emotion", metadata={"help": f"One of: {', '.join(TASKS)}."})
    data_dir: str | None = field(default=None, metadata={"help": "Local copy of the corpus (IEMOCAP, CMU-MOSEI)."})
    test_fold: str | None = field(
        default=None,
        metadata={"help": "Held-out session (leave-one-session-out tasks): 1-5, or 'all' to run every fold.",
                  "aliases": ["--test_session"]},
    )  # fmt: skip
    dataset_path: str | None = field(
        default=None, metadata={"help": "--task dataset: your DatasetDict (save_to_disk folder or dataset name)."}
    )
    label_column: str = field(default="label", metadata={"help": "--task dataset: the label column."})
    train_fraction: float = field(default=1.0, metadata={"help": "Share of the training split used (paper Figure 3)."})
    max_audio_seconds: float = field(default=20.0, metadata={"help": "Longer utterances are cut to this length."})
    synthetic_size: int = field(default=2000, metadata={"help": "Utterances in the synthetic corpus."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for decoding."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where prepared corpora are cached."})
    audio_column: str = field(default="audio", metadata={"help": "Audio column of an audio_text_pairs dataset."})
    text_column: str = field(default="text", metadata={"help": "Transcript column of an audio_text_pairs dataset."})
    streaming: bool = field(default=False, metadata={"help": "Stream an audio_text_pairs corpus (needs --max_steps)."})


@dataclass
class CMTTrainingArguments(TrainingArguments):
    """TrainingArguments with this package's defaults: evaluate and save every epoch, keep the best checkpoint by the
    task's metric ('task' = UA for emotion, MAE for sentiment), length-grouped batches, no external loggers."""

    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate on the validation split."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to save a checkpoint."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Test with the best validation checkpoint."})
    metric_for_best_model: str = field(default="task", metadata={"help": "'task' = the task's selection metric."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept (the best is always kept)."})
    train_sampling_strategy: str = field(default="group_by_length", metadata={"help": "Batch similar lengths."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "The collators need the raw columns."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    tower_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the towers (default: --learning_rate)."}
    )
    cross_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the cross-modal layers (default: --learning_rate)."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Write into an output directory that already holds results."}
    )
    cpu_allocator_tuning: bool = field(
        default=True,
        metadata={
            "help": "On CPU with glibc, keep freed activation memory for reuse instead of returning it to the OS and "
            "page-faulting it back every step (tune_cpu_allocator; ~10 %% faster CMT-4 train steps). Off: glibc's "
            "defaults."
        },
    )


# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD_MAX = 32 * 1024**2  # glibc's largest allowed value on 64-bit systems


def tune_cpu_allocator() -> bool:
    """
    Makes glibc's malloc keep freed memory for reuse: blocks up to 32 MiB come from the heap instead of fresh
    mmaps, and the heap is not trimmed back to the OS after every large free. PyTorch's CPU allocator has no cache
    of its own, so with glibc's adaptive defaults a training step's activation buffers (a CMT-4 step at 4 x 5 s
    allocates ~12 MiB attention and feed-forward tensors by the hundred) are unmapped when freed and page-faulted
    back on their next use: elementwise ops then run several times slower (benchmarks/README.md, "Cost of the
    cross-modal stack"). The price is that the process keeps its peak heap instead of shrinking between steps.
    Returns whether the settings were applied (False off Linux/glibc).
    """
    if sys.platform != "linux":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        applied = (
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
            and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
            and libc.mallopt(M_TOP_PAD, 64 * 1024**2)
        )
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    return bool(applied)


def apply_cpu_allocator_tuning(training_args: "CMTTrainingArguments"):
    """Calls `tune_cpu_allocator` for a CPU run that asked for it (the default), and logs what happened."""
    if getattr(training_args, "cpu_allocator_tuning", False) and training_args.device.type == "cpu":
        if tune_cpu_allocator():
            logger.info("CPU run: glibc malloc keeps freed activation memory (--cpu_allocator_tuning false: off).")


def parse_arguments(groups: tuple) -> tuple:
    """The argument groups from the command line, or from one JSON file given as the only argument."""
    parser = HfArgumentParser(groups)
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        return parser.parse_json_file(json_file=sys.argv[1])
    return parser.parse_args_into_dataclasses()


def setup_logging(training_args: TrainingArguments, *script_loggers: logging.Logger):
    """Logs to stdout at the process's level (warnings only on ranks other than 0, as in transformers' scripts)."""
    import datasets
    import transformers

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    for script_logger in (*script_loggers, logger):
        script_logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)


def parse_overrides(text: str | None) -> dict[str, Any]:
    """'a=1,b=0.5,c=mean' -> {'a': 1, 'b': 0.5, 'c': 'mean'} (values parsed as JSON where possible)."""
    overrides = {}
    for item in filter(None, (text or "").split(",")):
        if "=" not in item:
            raise ValueError(f"--config_overrides items look like name=value, got {item!r}.")
        name, value = item.split("=", 1)
        try:
            overrides[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[name.strip()] = value
    return overrides


def check_output_dir(training_args: CMTTrainingArguments):
    """Refuse to write into a folder holding earlier results, unless told to overwrite or to resume."""
    output_dir = Path(training_args.output_dir)
    if not output_dir.is_dir() or training_args.resume_from_checkpoint:
        return
    existing = sorted(
        path.name
        for path in output_dir.iterdir()
        if path.name.startswith((PREFIX_CHECKPOINT_DIR, "fold_", "stage"))
        or path.name in ("results.json", "model.safetensors", "config.json")
    )
    if existing and not training_args.overwrite_output_dir:
        raise ValueError(
            f"Output directory {output_dir} already holds results ({', '.join(existing[:5])}). Pass "
            "--overwrite_output_dir to write over them, --resume_from_checkpoint to continue, or another --output_dir."
        )
    if existing:
        logger.warning(f"--overwrite_output_dir: files in {output_dir} may be replaced: {', '.join(existing)}.")


# ---------------------------------------------------------------------------------------------------------------------
# Data preparation and collators
# ---------------------------------------------------------------------------------------------------------------------


def prepare_split(dataset: Dataset, label_column: str | None, max_audio_seconds: float, num_proc: int | None = None):
    """Decodes and resamples once (the result is cached as Arrow): `waveform` (float32, 16 kHz), `length` (samples,
    for length-grouped batching), `text`, and `labels`. A streamed dataset is decoded lazily instead."""
    max_samples = int(max_audio_seconds * SAMPLING_RATE)
    dataset = dataset.cast_column("audio", Audio(sampling_rate=SAMPLING_RATE))
    keep = {"text", "waveform", "length", "labels", "id", "speaker", "session", "item_type"}
    drop = [name for name in (dataset.column_names or []) if name not in keep]

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


@dataclass
class AudioTextCollator:
    """Pads audio (sample-level mask) and text (token mask) with the processor; attaches `labels` if present."""

    processor: CMTProcessor
    regression: bool = False

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.processor(
            audio=[np.asarray(row["waveform"], dtype=np.float32) for row in rows],
            text=[row["text"] for row in rows],
            sampling_rate=SAMPLING_RATE,
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

    def __post_init__(self):
        self.masker = DataCollatorForLanguageModeling(self.processor.tokenizer, mlm_probability=self.mlm_probability)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = dict(AudioTextCollator(self.processor)([{k: v for k, v in r.items() if k != "labels"} for r in rows]))
        batch["input_ids"], batch["mlm_labels"] = self.masker.torch_mask_tokens(batch["input_ids"].clone())
        return batch


# ---------------------------------------------------------------------------------------------------------------------
# Model and processor
# ---------------------------------------------------------------------------------------------------------------------


def build_bpe_tokenizer(
    texts: list[str], directory: str | os.PathLike, vocab_size: int = 2000
) -> RobertaTokenizerFast:
    """A byte-level BPE tokenizer in RoBERTa's layout (<s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4) trained on `texts`."""
    from tokenizers import ByteLevelBPETokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(directory))
    tokenizer = RobertaTokenizerFast.from_pretrained(str(directory), model_max_length=128)
    sample = texts[0]
    if tokenizer.decode(tokenizer(sample)["input_ids"], skip_special_tokens=True) != sample:
        raise RuntimeError(f"The tokenizer trained in {directory} does not round-trip {sample!r}.")
    return tokenizer


def ensure_cmt_checkpoint(path: str):
    """Raise a clear error unless `path` holds a CMT checkpoint (not a tower or another model)."""
    try:
        model_type = AutoConfig.from_pretrained(path).model_type
    except (OSError, ValueError) as error:
        raise ValueError(f"--model_name_or_path {path!r} is not a loadable checkpoint: {error}") from error
    if model_type != "cmt":
        raise ValueError(
            f"--model_name_or_path {path!r} is a {model_type!r} checkpoint, not CMT. Pass a tower checkpoint as "
            "--audio_model_name_or_path / --text_model_name_or_path instead."
        )


def build_processor(model_args: ModelArguments, train_texts: list[str], scratch_dir: Path) -> CMTProcessor:
    if model_args.model_name_or_path:
        ensure_cmt_checkpoint(model_args.model_name_or_path)
        return CMTProcessor.from_pretrained(model_args.model_name_or_path)
    if model_args.audio_model_name_or_path:
        return CMTProcessor.from_audio_text_pretrained(
            model_args.audio_model_name_or_path, model_args.text_model_name_or_path
        )
    if model_args.tokenizer_name_or_path:
        tokenizer = RobertaTokenizerFast.from_pretrained(model_args.tokenizer_name_or_path)
    else:
        tokenizer = build_bpe_tokenizer(train_texts, scratch_dir / "tokenizer")
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=SAMPLING_RATE, do_normalize=True, return_attention_mask=True)
    return CMTProcessor(feature_extractor=extractor, tokenizer=tokenizer)


def build_model(model_class, model_args: ModelArguments, processor: CMTProcessor, **config_kwargs):
    """A CMT model from a CMT checkpoint, from two tower checkpoints or from a random-weight preset."""
    config_kwargs = {
        **model_args.config_kwargs(),
        **config_kwargs,
        "attn_implementation": model_args.attn_implementation,
    }
    sources = [model_args.model_name_or_path, model_args.audio_model_name_or_path, model_args.preset]
    if sum(source is not None for source in sources) != 1:
        raise ValueError(
            "Give exactly one model source: --model_name_or_path (a CMT checkpoint), --audio_model_name_or_path with "
            "--text_model_name_or_path (two towers), or --preset (random weights)."
        )
    if model_args.model_name_or_path:
        path = model_args.model_name_or_path
        ensure_cmt_checkpoint(path)
        model = model_class.from_pretrained(
            path, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, **config_kwargs
        )
    elif model_args.audio_model_name_or_path:
        if not model_args.text_model_name_or_path:
            raise ValueError("--audio_model_name_or_path needs --text_model_name_or_path too.")
        model = model_class.from_audio_text_pretrained(
            model_args.audio_model_name_or_path, model_args.text_model_name_or_path, **config_kwargs
        )
    else:
        preset = load_preset(model_args.preset)["config"]
        text_config = {**preset["text_config"], "vocab_size": len(processor.tokenizer)}
        model = model_class(CMTConfig(**{**preset, "text_config": text_config, **config_kwargs}))
    if model_args.freeze_feature_encoder:
        model.freeze_feature_encoder()
    if model_args.freeze_towers:
        model.freeze_towers()
    return model


def parameter_checksum(model: torch.nn.Module) -> float:
    """A cheap fingerprint of all parameters (identical across DDP ranks when they are in sync)."""
    with torch.no_grad():
        return float(sum(p.double().sum() + (p.double() ** 2).sum() for p in model.parameters()))


# ---------------------------------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------------------------------


class NonFiniteLossError(RuntimeError):
    pass


class CMTTrainer(Trainer):
    """Trainer with per-part learning rates, separately logged loss terms, a stop on NaN/Inf loss, and checkpoints
    that are never left half-written."""

    LOSS_TERMS = ("task_loss", "ortho_loss", "unit_loss", "mlm_loss", "matching_loss")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._loss_terms: dict[str, list[float]] = {}

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        model = self.model
        args = self.args
        rates = {
            "tower": args.tower_learning_rate or args.learning_rate,
            "cross": args.cross_learning_rate or args.learning_rate,
            "head": args.learning_rate,
        }
        groups: dict[tuple[str, bool], list] = {}
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                continue
            if ".audio_model." in f".{name}" or ".text_model." in f".{name}":
                part = "tower"
            elif any(key in name for key in ("encoder.layers", "text_projection", "layer_pooler")):
                part = "cross"
            else:
                part = "head"
            decay = parameter.ndim >= 2 and "layer_norm" not in name.lower()
            groups.setdefault((part, decay), []).append(parameter)
        parameter_groups = [
            {"params": params, "lr": rates[part], "weight_decay": args.weight_decay if decay else 0.0}
            for (part, decay), params in groups.items()
        ]
        optimizer_class, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_class(parameter_groups, lr=args.learning_rate, **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        for name in self.LOSS_TERMS:
            value = outputs.get(name) if hasattr(outputs, "get") else None
            if value is not None and model.training:
                self._loss_terms.setdefault(name, []).append(float(value.detach()))
        loss = outputs["loss"]
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        finite = torch.isfinite(loss.detach()).float().reshape(1)
        if self.accelerator.num_processes > 1:
            finite = self.accelerator.reduce(finite, reduction="sum") / self.accelerator.num_processes
        if finite.item() < 1.0:
            last = last_complete_checkpoint(self.args.output_dir)
            raise NonFiniteLossError(
                f"Loss became NaN/Inf at step {self.state.global_step + 1}; training stopped before the optimizer "
                f"step. Last good checkpoint: {last or 'none saved yet'}. Lower the learning rate or check the data."
            )
        return loss

    def log(self, logs: dict[str, float], *args, **kwargs):
        if "loss" in logs and self._loss_terms:
            for name, values in self._loss_terms.items():
                logs[name] = round(sum(values) / len(values), 4)
            self._loss_terms = {}
        super().log(logs, *args, **kwargs)

    def _save_checkpoint(self, model, trial):
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        try:
            super()._save_checkpoint(model, trial)
        except OSError as error:
            if self.args.should_save and folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
            reason = "the disk is full" if error.errno == errno.ENOSPC else str(error)
            raise OSError(
                error.errno,
                f"Saving {folder.name} failed ({reason}); the partial folder was removed so it cannot be mistaken for "
                f"a checkpoint. Last complete checkpoint: {last_complete_checkpoint(self.args.output_dir) or 'none'}.",
            ) from error


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest `checkpoint-N` folder whose trainer state (written last) exists."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    complete = [
        path
        for path in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if path.name.split("-")[-1].isdigit() and (path / "trainer_state.json").is_file()
    ]
    return str(max(complete, key=lambda path: int(path.name.split("-")[-1]))) if complete else None


# ---------------------------------------------------------------------------------------------------------------------
# Metrics and results
# ---------------------------------------------------------------------------------------------------------------------


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Numeric metrics only, nested per-class dicts flattened (`recall_angry`), for logs and checkpoint selection."""
    flat = {}
    for name, value in metrics.items():
        if isinstance(value, dict):
            for key, inner in value.items():
                if isinstance(inner, (int, float)):
                    flat[f"{name}_{key}"] = float(inner)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def compute_task_metrics(task: TaskSpec, predictions: np.ndarray, references: np.ndarray, names=None) -> dict:
    if task.problem == "regression":
        return compute_sentiment_metrics(np.asarray(predictions).reshape(-1), np.asarray(references).reshape(-1))
    return compute_emotion_metrics(np.asarray(predictions).argmax(-1), np.asarray(references), label_names=names)


def make_compute_metrics(task: TaskSpec, names: list[str] | None):
    def compute_metrics(evaluation) -> dict[str, float]:
        logits = evaluation.predictions[0] if isinstance(evaluation.predictions, tuple) else evaluation.predictions
        return flat_metrics(compute_task_metrics(task, logits, evaluation.label_ids, names))

    return compute_metrics


def environment_card() -> dict[str, Any]:
    import accelerate
    import datasets
    import transformers

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=EXAMPLES_DIR, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(["git", "status", "--porcelain"], cwd=EXAMPLES_DIR, capture_output=True, text=True).stdout
        )
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {
        "versions": {
            "modeling_cmt": modeling_cmt.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "datasets": datasets.__version__,
            "accelerate": accelerate.__version__,
            "python": platform.python_version(),
        },
        "git_commit": commit,
        "git_dirty": dirty,
        "command": " ".join(sys.argv),
        "machine": platform.platform(),
    }


def aggregate(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """mean and sample standard deviation of every numeric metric over folds or seeds."""
    names = sorted(set.intersection(*(set(run) for run in runs))) if runs else []
    summary = {}
    for name in names:
        values = np.array([run[name] for run in runs], dtype=float)
        summary[name] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "n": len(values),
        }
    return summary


def write_json(path: str | os.PathLike, payload: dict):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    os.replace(temporary, path)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dataclass_card(*groups) -> dict[str, Any]:
    card = {}
    for group in groups:
        values = asdict(group)
        card.update(
            {key: value for key, value in values.items() if isinstance(value, (str, int, float, bool, type(None)))}
        )
    return card
