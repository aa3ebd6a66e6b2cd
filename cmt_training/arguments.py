"""Argument groups of the training scripts (dataclasses for `HfArgumentParser`, from the command line or one JSON
file), as transformers' example scripts define them."""

import json
import sys
from dataclasses import dataclass, field
from typing import Any

from transformers import HfArgumentParser, TrainingArguments

import modeling_cmt

from .cpu import check_world_size, use_gloo_without_gpus
from .distributed import refuse_sharded_engine_without_gpus
from .tasks import TASKS


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
    freeze_audio_tower: bool = field(
        default=False,
        metadata={"help": "Freeze the audio tower only: the text tower, cross-modal layers and head train."},
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Allow a checkpoint whose head has another number of labels."}
    )
    allow_pickle: bool = field(
        default=False,
        metadata={
            "help": "Also load checkpoints (CMT or towers) whose weights are a pickle (pytorch_model.bin), which can "
            "run code hidden in the file: only for checkpoints you trust. By default only safetensors weights load."
        },
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
    task: str = field(default="synthetic_emotion", metadata={"help": f"One of: {', '.join(TASKS)}, dataset."})
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
    rebuild_dataset: bool = field(
        default=False,
        metadata={
            "help": "Prepare the corpus again instead of reading its cache (a changed corpus is rebuilt anyway)."
        },
    )
    audio_column: str = field(default="audio", metadata={"help": "Audio column of an audio_text_pairs dataset."})
    text_column: str = field(default="text", metadata={"help": "Transcript column of an audio_text_pairs dataset."})
    streaming: bool = field(default=False, metadata={"help": "Stream an audio_text_pairs corpus (needs --max_steps)."})


@dataclass
class TowerCacheArguments:
    cache_tower_outputs: bool = field(
        default=False,
        metadata={
            "help": "With --freeze_towers (or --freeze_audio_tower): run the frozen towers once, cache their outputs "
            "and train the rest from the cache."
        },
    )


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
        default=False,
        metadata={"help": "Start afresh in an output directory that holds results: earlier checkpoints are removed."},
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Continue an interrupted run: `true` / `auto` (or the flag alone) = its last complete checkpoint "
            "in --output_dir (each fold its own), or a checkpoint folder (single-fold runs).",
            "nargs": "?",
            "const": "true",
        },
    )
    max_batch_seconds: float | None = field(
        default=None,
        metadata={
            "help": "Dynamic batching: each training batch holds as many utterances as fit in this many seconds of "
            "padded audio (batch size x its longest utterance), per process, instead of "
            "--per_device_train_batch_size utterances; replaces --train_sampling_strategy "
            "(cmt_training.sampling.DurationBatchSampler). Evaluation keeps --per_device_eval_batch_size."
        },
    )
    cpu_allocator_tuning: bool = field(
        default=True,
        metadata={
            "help": "On CPU with glibc, keep freed activation memory for reuse instead of returning it to the OS and "
            "page-faulting it back every step (tune_cpu_allocator; ~10 %% faster CMT-4 train steps). Off: glibc's "
            "defaults."
        },
    )


@dataclass
class PretrainingArguments:
    stage: str = field(default="both", metadata={"help": "1 (towers frozen), 2 (all unfrozen) or both (1 then 2)."})
    mlm_probability: float = field(default=0.15, metadata={"help": "Share of tokens masked for MLM."})
    unit_loss_weight: float | None = field(default=None, metadata={"help": "Masked acoustic unit prediction weight."})
    mlm_loss_weight: float | None = field(default=None, metadata={"help": "Masked language modelling weight."})
    matching_loss_weight: float | None = field(default=None, metadata={"help": "Audio–text matching weight."})

    def loss_weights(self) -> dict[str, float]:
        """The loss weights this run sets explicitly (the others keep the checkpoint's)."""
        names = ("unit_loss_weight", "mlm_loss_weight", "matching_loss_weight")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


@dataclass
class CMTPretrainingArguments(CMTTrainingArguments):
    """Pretraining has no validation split: no evaluation, the final model is the result."""

    eval_strategy: str = field(default="no", metadata={"help": "When to evaluate (pretraining has no metric)."})
    load_best_model_at_end: bool = field(default=False, metadata={"help": "Keep the last model."})
    metric_for_best_model: str | None = field(default=None, metadata={"help": "Unused in pretraining."})


@dataclass
class CodebookArguments:
    output_dir: str = field(metadata={"help": "Where the pretraining checkpoint with its codebook is written."})
    codebook_size: int = field(default=100, metadata={"help": "Number of acoustic units (k-means clusters)."})
    codebook_layer: int | None = field(default=None, metadata={"help": "Audio tower hidden state to cluster."})
    max_utterances: int = field(default=2000, metadata={"help": "Utterances sampled from the corpus."})
    batch_size: int = field(default=8, metadata={"help": "Utterances per feature-extraction batch."})
    seed: int = field(default=0, metadata={"help": "Sampling and k-means seed."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Write over an existing checkpoint."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bar for the feature pass."})


def parse_args(groups: tuple, argv: list[str] | None = None) -> tuple:
    """The argument groups from `argv` (default: the command line), or from one JSON file given as its only item.
    Training arguments parsed in a multi-process launch on a machine without GPUs set up gloo DDP
    (`use_gloo_without_gpus`); an FSDP or DeepSpeed launch there, and a launch whose processes would not form one
    job, are refused."""
    if any(issubclass(group, TrainingArguments) for group in groups):
        refuse_sharded_engine_without_gpus()
        use_gloo_without_gpus()
    parser = HfArgumentParser(groups)
    argv = sys.argv[1:] if argv is None else [str(argument) for argument in argv]
    if len(argv) == 1 and argv[0].endswith(".json"):
        parsed = parser.parse_json_file(json_file=argv[0])
    else:
        parsed = parser.parse_args_into_dataclasses(args=argv)
    for group in parsed:
        if isinstance(group, TrainingArguments):
            check_world_size(group)
    return parsed


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
