"""What a multi-process run needs besides the launcher: engines refused where accelerate cannot set them up, FSDP's
wrap classes checked against the model, DDP runs whose parameters could go unused, and streamed corpora read shard
by shard on every rank."""

import logging
import os

import torch
from datasets import IterableDataset
from transformers.modeling_layers import GradientCheckpointingLayer


logger = logging.getLogger(__name__)

# accelerate's launcher exports these for an FSDP or DeepSpeed configuration.
SHARDED_ENGINES = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed"}
EPOCH_STRATEGIES = ("save_strategy", "eval_strategy", "logging_strategy")


def requested_sharded_engine() -> str | None:
    """The engine (`"FSDP"`, `"DeepSpeed"`) that `accelerate launch` was configured with, if any."""
    for variable, engine in SHARDED_ENGINES.items():
        if os.environ.get(variable, "false").lower() == "true":
            return engine
    return None


def refuse_sharded_engine_without_gpus() -> None:
    """
    Refuses an FSDP or DeepSpeed launch on a machine without GPUs. accelerate 1.15 switches to FSDP only on GPU-type
    backends and ignores DeepSpeed on CPU (`AcceleratorState`), and a multi-process CPU launch becomes gloo DDP
    (`cmt_training.cpu.use_gloo_without_gpus`): the run would train as plain DDP, or as one lone process, under a
    configuration that says otherwise.
    """
    engine = requested_sharded_engine()
    if engine is not None and not torch.cuda.is_available():
        raise RuntimeError(
            f"This launch is configured for {engine}, but torch sees no GPU: accelerate sets up {engine} only on "
            "GPUs, and here the processes would train as plain DDP instead. On CPUs launch with "
            "--config_file examples/accelerate_configs/cpu_ddp.yaml."
        )


def check_fsdp_wrap_classes(model: torch.nn.Module, class_names: list[str]) -> None:
    """
    Refuses, before any training, an FSDP wrap policy that names layer classes the model does not have: accelerate
    would stop at its first missing class once training starts. CMT models with hubert-base towers have
    `HubertEncoderLayer`, hubert-large ones `HubertEncoderLayerStableLayerNorm`; baselines lack the cross-modal
    layers or a tower.
    """
    present = {type(module).__name__ for module in model.modules()}
    missing = [name for name in class_names if name not in present]
    if missing:
        layers = sorted(
            {type(module).__name__ for module in model.modules() if isinstance(module, GradientCheckpointingLayer)}
        )
        raise ValueError(
            f"The FSDP wrap policy names {', '.join(missing)}, which this model does not have (its layer classes: "
            f"{', '.join(layers)}). Use examples/accelerate_configs/fsdp_base.yaml for hubert-base towers, fsdp.yaml "
            "for hubert-large towers (CMT LARGE), or set fsdp_transformer_layer_cls_to_wrap to the classes above."
        )


def layers_that_may_be_skipped(model: torch.nn.Module) -> list[str]:
    """Trainable tower layers that LayerDrop may skip in a training step (their parameters then get no gradient)."""
    audio_model = getattr(getattr(model, "base_model", None), "audio_model", None)
    if audio_model is None or not getattr(audio_model.config, "layerdrop", 0.0):
        return []
    layers = audio_model.encoder.layers
    return [
        f"audio_model.encoder.layers.{index}"
        for index, layer in enumerate(layers)
        if any(parameter.requires_grad for parameter in layer.parameters())
    ]


def check_no_unused_parameters(model: torch.nn.Module, find_unused_parameters: bool) -> None:
    """
    Refuses DDP without `find_unused_parameters` for a model whose trainable audio layers LayerDrop skips at random
    (hubert-base and hubert-large checkpoints have `layerdrop=0.1`): DDP would fail at the step after the first skip,
    waiting for gradients that never come. CMT itself computes every loss term's head only when the term is on, so
    nothing else goes unused.
    """
    skipped = layers_that_may_be_skipped(model)
    if skipped and not find_unused_parameters:
        raise ValueError(
            f"The audio tower drops whole layers at random in training (layerdrop="
            f"{model.base_model.audio_model.config.layerdrop}), so in some steps {len(skipped)} trainable layers get "
            "no gradient, and DDP without find_unused_parameters then stops. Pass --ddp_find_unused_parameters true, "
            "or load the model with layerdrop 0.0 in its audio_config."
        )


def read_stream_on_every_rank(dataset: IterableDataset, training_args) -> IterableDataset:
    """
    A streamed corpus for a run on several processes: every rank reads its own shards instead of rank 0 reading and
    sending every batch (accelerate's default for iterable datasets, `dispatch_batches`, which also needs batches of
    one shape), and the stream repeats without end so that no rank runs out before the others: `--max_steps` says
    how long training lasts, and every rank takes the same number of steps.

    accelerate then shards a `datasets.IterableDataset` with the dataset's own `shard` (whole shards per rank,
    disjoint, each example once per pass) when it has at least as many shards as processes; with fewer, every rank
    reads the whole stream and keeps its part (`IterableDatasetShard`), decoding what it throws away.

    Because each rank's pass over its shards ends at another step, epoch-based saving, evaluation or logging is
    refused: their collectives would run on one rank only.
    """
    if training_args.world_size <= 1:
        return dataset
    by_epoch = [name for name in EPOCH_STRATEGIES if getattr(getattr(training_args, name), "value", None) == "epoch"]
    if by_epoch:
        flags = ", ".join(f"--{name}" for name in by_epoch)
        raise ValueError(
            f"A streamed corpus on {training_args.world_size} processes has no common epoch (each rank's pass over its "
            f"shards ends at another step): {flags} must be 'steps' or 'no', e.g. --save_strategy steps --save_steps "
            "1000."
        )
    training_args.accelerator_config.dispatch_batches = False
    if dataset.num_shards < training_args.world_size:
        logger.warning(
            f"The streamed corpus has {dataset.num_shards} shard(s) for {training_args.world_size} processes: every "
            "process reads and decodes the whole stream and keeps 1 batch in "
            f"{training_args.world_size}. Store it in at least as many shards as processes (e.g. Parquet files)."
        )
    return dataset.repeat(None)
