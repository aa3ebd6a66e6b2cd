"""`CMTTrainer` (per-part learning rates, separately logged loss terms, a stop on NaN/Inf loss, no half-written
checkpoints) and the checkpoint bookkeeping around it: output folders, resuming, rank checksums."""

import enum
import errno
import json
import logging
import os
import shutil
from dataclasses import fields
from functools import partial
from pathlib import Path

import datasets
import torch
from accelerate.utils import DistributedType
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, SequentialSampler
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, has_length, seed_worker

from .data import utterance_seconds
from .distributed import check_fsdp_wrap_classes, check_no_unused_parameters
from .sampling import DurationBatchSampler


logger = logging.getLogger(__name__)

TRAINER_STATE_NAME = "trainer_state.json"  # the last file Trainer writes into a checkpoint folder
LOSS_TERMS = ("task_loss", "ortho_loss", "unit_loss", "mlm_loss", "matching_loss")
# What a run was started with, in its output folder: a resumed run must have been started with the same.
RUN_ARGUMENTS_NAME = "run_arguments.json"
# Fields that say where and how a run reports or loads data, not what it trains: they may change on resume.
BOOKKEEPING_FIELDS = frozenset(
    {
        "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "logging_dir", "logging_steps",
        "logging_first_step", "logging_strategy", "disable_tqdm", "log_level", "log_level_replica", "report_to",
        "run_name", "push_to_hub", "hub_model_id", "hub_token", "hub_strategy", "hub_private_repo",
        "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
        "dataloader_prefetch_factor", "preprocessing_num_workers", "cache_dir", "save_total_limit", "local_rank",
    }
)  # fmt: skip
# What earlier runs leave in an output folder; --overwrite_output_dir removes these before training.
RUN_OUTPUTS = ("results.json", RUN_ARGUMENTS_NAME, "model.safetensors", "config.json")
RUN_OUTPUT_FOLDERS = (PREFIX_CHECKPOINT_DIR, "fold_", "stage")


class NonFiniteLossError(RuntimeError):
    pass


def parameter_part(name: str) -> str:
    """Which learning-rate group a parameter belongs to: `tower`, `cross` (cross-modal stack) or `head`."""
    if ".audio_model." in f".{name}" or ".text_model." in f".{name}":
        return "tower"
    if any(key in name for key in ("encoder.layers", "text_projection", "layer_pooler")):
        return "cross"
    return "head"


class SamplerEpochCallback(TrainerCallback):
    """Sets a batch sampler's epoch when an epoch begins, a resumed one too: Trainer reaches a batch sampler's
    `set_epoch` through accelerate's `BatchSamplerShard`, but not once `skip_first_batches` has wrapped it again for
    a run resumed mid-epoch. `state.epoch` is exact at epoch ends (`epoch + steps / steps_in_epoch`)."""

    def __init__(self, sampler):
        self.sampler = sampler

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.sampler.set_epoch(int(state.epoch or 0))


class CMTTrainer(Trainer):
    """Trainer with per-part learning rates (`--tower_learning_rate`, `--cross_learning_rate`), dynamic batches by
    audio duration (`--max_batch_seconds`), each loss term the model returns logged separately, a stop on a NaN/Inf
    loss that names the step and the last good checkpoint, checkpoints that are never left half-written when a save
    fails, and distributed set-ups checked before training (FSDP's wrap classes, DDP's unused parameters)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._loss_terms: dict[str, list[float]] = {}
        wrap_classes = self.is_fsdp_enabled and self.accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap
        if wrap_classes:
            check_fsdp_wrap_classes(self.model, wrap_classes)
        ddp = self.accelerator.distributed_type in (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU)
        if ddp and self.accelerator.num_processes > 1:
            handler = self.accelerator.ddp_handler
            check_no_unused_parameters(self.model, handler is not None and handler.find_unused_parameters)

    def get_train_dataloader(self) -> DataLoader:
        max_batch_seconds = getattr(self.args, "max_batch_seconds", None)
        if max_batch_seconds is None:
            return super().get_train_dataloader()
        # Trainer's dataloader builder passes a batch sampler on only for its own BatchRebalanceSampler (which it
        # then exempts from accelerate's sharding), so the loader is built here; accelerate shards its batches.
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        sampler = DurationBatchSampler(utterance_seconds(self.train_dataset), max_batch_seconds, seed=seed)
        self.callback_handler.remove_callback(SamplerEpochCallback)
        self.add_callback(SamplerEpochCallback(sampler))
        args = self.args
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers,
            prefetch_factor=args.dataloader_prefetch_factor,
            worker_init_fn=partial(seed_worker, num_workers=args.dataloader_num_workers, rank=args.process_index),
        )
        return self.accelerator.prepare(loader)

    def _get_train_sampler(self, train_dataset=None):
        # datasets 4 returns a lazy `Column` for `dataset["length"]`, which Trainer hands to LengthGroupedSampler:
        # the sampler then reads one whole row (waveform or cached tower output) per length, every epoch (about 14 %
        # of a cached-tower fine-tuning run on the demo preset). The same lengths as a list give the same batches.
        train_dataset = self.train_dataset if train_dataset is None else train_dataset
        column = self.args.length_column_name
        if (
            self.args.train_sampling_strategy == "group_by_length"
            and isinstance(train_dataset, datasets.Dataset)
            and column in train_dataset.column_names
        ):
            return LengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps,
                dataset=train_dataset,
                lengths=list(train_dataset.with_format(None)[column]),
            )
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        # transformers 5.24 also batches evaluation and prediction by length when training does (`group_by_length`,
        # this package's default): predictions then come back sorted by length, while the scripts pair them with the
        # dataset's rows (per-item-type metrics, `test_logits`). Trainer has no public hook for the evaluation
        # sampler alone, so this keeps the dataset's order as Trainer does for the other strategies.
        if eval_dataset is None or not has_length(eval_dataset):
            return None
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        args = self.args
        rates = {
            "tower": args.tower_learning_rate or args.learning_rate,
            "cross": args.cross_learning_rate or args.learning_rate,
            "head": args.learning_rate,
        }
        groups: dict[tuple[str, bool], list] = {}
        for name, parameter in self.model.named_parameters():
            if parameter.requires_grad:
                decay = parameter.ndim >= 2 and "layer_norm" not in name.lower()
                groups.setdefault((parameter_part(name), decay), []).append(parameter)
        parameter_groups = [
            {"params": params, "lr": rates[part], "weight_decay": args.weight_decay if decay else 0.0}
            for (part, decay), params in groups.items()
        ]
        optimizer_class, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, self.model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_class(parameter_groups, lr=args.learning_rate, **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        if model.training:
            for name in LOSS_TERMS:
                value = outputs.get(name)
                if value is not None:
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

    def train(self, *args, **kwargs):
        # Trainer has no hook for a save that fails half-way (`on_save` runs only after a complete checkpoint), so
        # the failure is caught around the public `train` and the incomplete folder is removed here.
        try:
            return super().train(*args, **kwargs)
        except OSError as error:
            folder = Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            if not (folder.is_dir() and not (folder / TRAINER_STATE_NAME).is_file()):
                raise
            if self.args.should_save:
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
        if path.name.split("-")[-1].isdigit() and (path / TRAINER_STATE_NAME).is_file()
    ]
    return str(max(complete, key=lambda path: int(path.name.split("-")[-1]))) if complete else None


RESUME_NONE = (None, False, "", "false", "False")
RESUME_LAST = (True, "true", "True", "auto")


def resolve_resume_checkpoint(resume_from_checkpoint, output_dir: str | os.PathLike) -> str | None:
    """`--resume_from_checkpoint` as `Trainer.train` takes it: `true` / `auto` = the last complete checkpoint in
    `output_dir` (None when there is none yet), a path as given, and nothing (or `false`) = start afresh."""
    if resume_from_checkpoint in RESUME_NONE:
        return None
    if resume_from_checkpoint in RESUME_LAST:
        return last_complete_checkpoint(output_dir)
    return str(resume_from_checkpoint)


def check_resume_per_fold(resume_from_checkpoint, folds: list) -> None:
    """A run over several folds resumes each fold from its own checkpoints: one named checkpoint cannot serve them
    all (every fold would continue from one fold's model, leaking its validation data)."""
    if len(folds) > 1 and resume_from_checkpoint not in RESUME_NONE + RESUME_LAST:
        raise ValueError(
            f"--resume_from_checkpoint {resume_from_checkpoint!r} names one checkpoint, but this run trains "
            f"{len(folds)} folds: pass --resume_from_checkpoint true so that each fold resumes from its own last "
            "checkpoint (or run that fold alone with --test_fold)."
        )


def check_writable(output_dir: Path) -> None:
    """Creates `output_dir` if needed and checks that files can be written there, before any model is loaded."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ValueError(
            f"--output_dir {output_dir} cannot be written to ({error.strerror or error}): pass a folder you can write."
        ) from error


def check_output_dir(args):
    """Refuse to write into a folder holding earlier results unless told to resume or to overwrite; overwriting
    first removes (and names) what earlier runs left there, so no old checkpoint can be resumed by mistake."""
    output_dir = Path(args.output_dir)
    check_writable(output_dir)
    if getattr(args, "resume_from_checkpoint", None):
        return
    existing = sorted(
        path for path in output_dir.iterdir() if path.name.startswith(RUN_OUTPUT_FOLDERS) or path.name in RUN_OUTPUTS
    )
    if existing and not args.overwrite_output_dir:
        raise ValueError(
            f"Output directory {output_dir} already holds results ({', '.join(path.name for path in existing[:5])}). "
            "Pass --overwrite_output_dir to replace them, --resume_from_checkpoint to continue, or another --output_dir."
        )
    if existing and getattr(args, "process_index", 0) == 0:
        logger.warning(
            f"--overwrite_output_dir: removing what earlier runs left in {output_dir}: "
            f"{', '.join(path.name for path in existing)}."
        )
        for path in existing:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _plain(value):
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(inner) for inner in value]
    if isinstance(value, dict):
        return {str(key): _plain(inner) for key, inner in value.items()}
    return str(value)


def run_arguments(*groups) -> dict:
    """What defines a run's training, from its argument dataclasses (bookkeeping fields left out)."""
    return {
        type(group).__name__: {
            field.name: _plain(getattr(group, field.name))
            for field in fields(group)
            if field.init and field.name not in BOOKKEEPING_FIELDS
        }
        for group in groups
    }


def write_run_arguments(output_dir: str | os.PathLike, arguments: dict) -> None:
    path = Path(output_dir) / RUN_ARGUMENTS_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(arguments, indent=2, sort_keys=True) + "\n")


def check_resume_arguments(checkpoint: str | os.PathLike, arguments: dict) -> None:
    """Refuses to resume `checkpoint` with arguments other than those its run was started with (naming each
    difference): the resumed model would be trained with the old ones and reported with the new ones."""
    path = Path(checkpoint).parent / RUN_ARGUMENTS_NAME
    if not path.is_file():
        logger.warning(f"{checkpoint} has no {RUN_ARGUMENTS_NAME} beside it: cannot check that it was trained alike.")
        return
    started_with = json.loads(path.read_text())
    differences = [
        f"--{name} {started_with[group].get(name)!r} -> {value!r}"
        for group, values in arguments.items()
        for name, value in values.items()
        if group in started_with and started_with[group].get(name) != value
    ]
    if differences:
        raise ValueError(
            f"Cannot resume {checkpoint}: its run was started with other arguments ({'; '.join(differences)}). "
            "Resume with the original arguments, or start afresh with --overwrite_output_dir or another --output_dir."
        )


def parameter_checksum(model: torch.nn.Module) -> float:
    """A cheap fingerprint of all parameters (identical across DDP ranks when they are in sync). FSDP's sharded
    parameters are gathered first, so every rank must call it; ZeRO-3's partitions are not (they count as empty)."""
    with torch.no_grad():
        full = (p.full_tensor() if isinstance(p, DTensor) else p for p in model.parameters())
        return float(sum(p.double().sum() + (p.double() ** 2).sum() for p in full))
