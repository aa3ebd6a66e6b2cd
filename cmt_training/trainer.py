"""`CMTTrainer` (per-part learning rates, separately logged loss terms, a stop on NaN/Inf loss, no half-written
checkpoints) and the checkpoint bookkeeping around it: output folders, resuming, rank checksums."""

import errno
import logging
import os
import shutil
from pathlib import Path

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR


logger = logging.getLogger(__name__)

TRAINER_STATE_NAME = "trainer_state.json"  # the last file Trainer writes into a checkpoint folder
LOSS_TERMS = ("task_loss", "ortho_loss", "unit_loss", "mlm_loss", "matching_loss")


class NonFiniteLossError(RuntimeError):
    pass


def parameter_part(name: str) -> str:
    """Which learning-rate group a parameter belongs to: `tower`, `cross` (cross-modal stack) or `head`."""
    if ".audio_model." in f".{name}" or ".text_model." in f".{name}":
        return "tower"
    if any(key in name for key in ("encoder.layers", "text_projection", "layer_pooler")):
        return "cross"
    return "head"


class CMTTrainer(Trainer):
    """Trainer with per-part learning rates (`--tower_learning_rate`, `--cross_learning_rate`), each loss term the
    model returns logged separately, a stop on a NaN/Inf loss that names the step and the last good checkpoint, and
    checkpoints that are never left half-written when a save fails."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._loss_terms: dict[str, list[float]] = {}

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


def resolve_resume_checkpoint(resume_from_checkpoint, output_dir: str | os.PathLike) -> str | None:
    """`--resume_from_checkpoint` as `Trainer.train` takes it: `true` / `auto` = the last complete checkpoint in
    `output_dir` (None when there is none yet), a path as given, and nothing (or `false`) = start afresh."""
    if resume_from_checkpoint in (None, False, "", "false", "False"):
        return None
    if resume_from_checkpoint in (True, "true", "True", "auto"):
        return last_complete_checkpoint(output_dir)
    return str(resume_from_checkpoint)


def check_output_dir(args):
    """Refuse to write into a folder holding earlier results, unless told to overwrite or to resume."""
    output_dir = Path(args.output_dir)
    if not output_dir.is_dir() or getattr(args, "resume_from_checkpoint", None):
        return
    existing = sorted(
        path.name
        for path in output_dir.iterdir()
        if path.name.startswith((PREFIX_CHECKPOINT_DIR, "fold_", "stage"))
        or path.name in ("results.json", "model.safetensors", "config.json")
    )
    if existing and not args.overwrite_output_dir:
        raise ValueError(
            f"Output directory {output_dir} already holds results ({', '.join(existing[:5])}). Pass "
            "--overwrite_output_dir to write over them, --resume_from_checkpoint to continue, or another --output_dir."
        )
    if existing:
        logger.warning(f"--overwrite_output_dir: files in {output_dir} may be replaced: {', '.join(existing)}.")


def parameter_checksum(model: torch.nn.Module) -> float:
    """A cheap fingerprint of all parameters (identical across DDP ranks when they are in sync)."""
    with torch.no_grad():
        return float(sum(p.double().sum() + (p.double() ** 2).sum() for p in model.parameters()))
