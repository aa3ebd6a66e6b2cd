"""Fine-tune CMT (or one of the paper's baselines) for emotion recognition or sentiment analysis.

The same script runs every row of the paper's Tables 1, 2 and 4:

    # CMT on IEMOCAP, all five leave-one-session-out folds, from a pretrained CMT checkpoint
    accelerate launch examples/run_finetune.py --task iemocap --data_dir IEMOCAP_full_release --test_fold all \
        --model_name_or_path runs/pretrain --output_dir runs/iemocap-cmt
    # baselines through the same code: --modality audio (HuBERT), --modality text (RoBERTa), --num_cross_layers 0
    # (Shallow-Fusion), starting from the towers:
    accelerate launch examples/run_finetune.py --task mosei --data_dir CMU_MOSEI --num_cross_layers 0 \
        --audio_model_name_or_path facebook/hubert-base-ls960 --text_model_name_or_path FacebookAI/roberta-base \
        --output_dir runs/mosei-shallow
    # on the embedded synthetic corpus, tiny random towers, no pretraining, CPU, 3 minutes: test UA 0.34 (seed 0)
    python examples/run_finetune.py --task synthetic_emotion --preset tiny --test_fold 1 --freeze_audio_tower true \
        --cache_tower_outputs true --learning_rate 2e-3 --per_device_train_batch_size 32 --num_train_epochs 10 \
        --output_dir runs/synthetic

Arguments may also come from one JSON file: `python examples/run_finetune.py config.json`. Every run writes
`results.json` with the test metrics and a protocol card (corpus, split, metric variants, checkpoint selection, seed,
versions, commit); a multi-fold run adds the mean ± std over folds.
"""

import os


# OpenMP threads that spin while they wait starve any other CPU-bound process (and are starved by it): a train step
# then runs many times slower. Waiting threads sleep instead; this must be set before torch loads (README, "Threads").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging
import time
from pathlib import Path

import numpy as np
from transformers import set_seed

from cmt_training.arguments import (
    CMTTrainingArguments,
    DataArguments,
    ModelArguments,
    TowerCacheArguments,
    parse_args,
)
from cmt_training.build import build_model, build_processor
from cmt_training.cpu import apply_cpu_allocator_tuning
from cmt_training.data import AudioTextCollator, prepare_split
from cmt_training.logging_utils import setup_logging
from cmt_training.metrics import compute_task_metrics, flat_metrics, make_compute_metrics
from cmt_training.model_card import push_or_explain, write_model_card
from cmt_training.results import aggregate, command_line, environment_card, write_json
from cmt_training.tasks import get_task, resolve_folds
from cmt_training.tower_cache import TowerOutputCollator, build_tower_cache, tower_cache_fingerprint
from cmt_training.trainer import (
    CMTTrainer,
    check_output_dir,
    check_resume_arguments,
    check_resume_per_fold,
    parameter_checksum,
    resolve_resume_checkpoint,
    run_arguments,
    write_run_arguments,
)
from modeling_cmt import CMTForSequenceClassification


logger = logging.getLogger(__name__)


def train_and_test_fold(
    fold, task, corpus, model_args, data_args, cache_args, training_args, output_dir: Path
) -> dict:
    started = time.time()
    training_args.output_dir = str(output_dir)
    set_seed(training_args.seed)

    # Data: the fold's splits, decoded and resampled once
    splits = task.fold(corpus, fold)
    if data_args.train_fraction < 1.0:
        keep = max(1, int(round(len(splits["train"]) * data_args.train_fraction)))
        splits["train"] = splits["train"].shuffle(seed=training_args.seed).select(range(keep))
    names = task.label_names(splits["train"])
    with training_args.main_process_first(desc="decoding audio"):
        prepared = {
            name: prepare_split(
                split, task.label_column, data_args.max_audio_seconds, data_args.preprocessing_num_workers
            )
            for name, split in splits.items()
        }
    logger.info(f"fold {fold}: " + ", ".join(f"{name} {len(split)}" for name, split in prepared.items()))

    # Model and processor
    processor = build_processor(model_args, prepared["train"]["text"], output_dir)
    label_kwargs = {"num_labels": 1, "problem_type": "regression"}
    if names is not None:
        label_kwargs = {
            "num_labels": len(names),
            "id2label": dict(enumerate(names)),
            "label2id": {name: index for index, name in enumerate(names)},
            "problem_type": "single_label_classification",
        }
    model = build_model(CMTForSequenceClassification, model_args, processor, **label_kwargs)
    if model.config.num_labels != label_kwargs["num_labels"]:
        raise ValueError(
            f"The model has {model.config.num_labels} labels but the task has {label_kwargs['num_labels']}; pass "
            "--ignore_mismatched_sizes to replace the head."
        )

    # Frozen towers: run them once and train the rest (cross-modal layers, head, an unfrozen tower) on their outputs
    min_samples = model.config.min_input_samples() if model.base_model.audio_model is not None else None
    collator = AudioTextCollator(processor, regression=task.regression, min_audio_samples=min_samples)
    trained_on = prepared
    frozen = ("audio", "text") if model_args.freeze_towers else ("audio",) if model_args.freeze_audio_tower else ()
    if cache_args.cache_tower_outputs and not frozen:
        raise ValueError(
            "--cache_tower_outputs needs --freeze_towers true or --freeze_audio_tower true: cached outputs cannot "
            "train the towers."
        )
    towers = tuple(name for name in frozen if getattr(model.base_model, f"{name}_model") is not None)
    if cache_args.cache_tower_outputs and towers:
        cache_root = Path(data_args.cache_dir or output_dir) / "tower_cache"
        model.to(training_args.device)  # the towers run on the training device, where the Trainer would put them
        with training_args.main_process_first(desc="caching tower outputs"):
            trained_on = {}
            for name, split in prepared.items():
                # A folder per split, towers and data: runs sharing --cache_dir reuse caches and never overwrite them.
                fingerprint = tower_cache_fingerprint(model, split, processor, towers=towers)
                cache_dir = cache_root / f"{name}-{fingerprint[:16]}"
                trained_on[name] = build_tower_cache(model, split, processor, cache_dir, towers=towers)
        collator = TowerOutputCollator(regression=task.regression, processor=processor)

    # Trainer
    trainer = CMTTrainer(
        model=model,
        args=training_args,
        train_dataset=trained_on["train"],
        eval_dataset=trained_on["validation"],
        data_collator=collator,
        compute_metrics=make_compute_metrics(task, names),
        processing_class=processor,
    )

    # Training (a resumed run continues only with the arguments it was started with)
    resume = resolve_resume_checkpoint(training_args.resume_from_checkpoint, output_dir)
    arguments = run_arguments(model_args, data_args, cache_args, training_args)
    if resume:
        check_resume_arguments(resume, arguments)
    elif trainer.is_world_process_zero():
        write_run_arguments(output_dir, arguments)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(output_dir))
    checksum = parameter_checksum(trainer.model)
    logger.warning(f"[rank {training_args.process_index}] parameter checksum: {checksum:.12e}")

    # Test on the held-out split with the selected checkpoint
    prediction = trainer.predict(trained_on["test"], metric_key_prefix="test")
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    metrics = compute_task_metrics(task, logits, prediction.label_ids, names)
    by_item_type = {}
    if "item_type" in prepared["test"].column_names:
        item_types = np.asarray(prepared["test"]["item_type"])
        for item_type in sorted(set(item_types)):
            selected = item_types == item_type
            by_item_type[item_type] = flat_metrics(
                compute_task_metrics(task, logits[selected], prediction.label_ids[selected], names)
            )
    result = {
        "fold": fold,
        "metrics": metrics,
        "flat_metrics": flat_metrics(metrics),
        "by_item_type": by_item_type,
        "validation": {
            "best_metric": trainer.state.best_metric,
            "best_checkpoint": trainer.state.best_model_checkpoint,
        },
        "data": {
            name: {
                "rows": len(split),
                **{
                    f"{column}s": sorted(map(str, set(split[column])))
                    for column in ("speaker", "session")
                    if column in split.column_names
                },
            }
            for name, split in prepared.items()
        },
        "log_history": trainer.state.log_history,
        "test_logits": np.asarray(logits).tolist(),  # in test-split order, as the trained model gave them
        "parameter_checksum": checksum,
        "cached_tower_outputs": cache_args.cache_tower_outputs,
        "wall_time_s": round(time.time() - started, 1),
    }
    if trainer.is_world_process_zero():
        write_json(output_dir / "results.json", result)
    return result


def main(argv: list[str] | None = None) -> dict:
    # Arguments: command line (or `argv`), or one JSON file
    model_args, data_args, cache_args, training_args = parse_args(
        (ModelArguments, DataArguments, TowerCacheArguments, CMTTrainingArguments), argv
    )

    # Logging
    setup_logging(training_args, logger)
    apply_cpu_allocator_tuning(training_args)

    # Protocol
    task = get_task(data_args)
    folds = resolve_folds(task, data_args.test_fold)
    check_resume_per_fold(training_args.resume_from_checkpoint, folds)
    if cache_args.cache_tower_outputs and training_args.max_batch_seconds is not None:
        raise ValueError(
            "--max_batch_seconds batches waveforms by duration; cached tower outputs are batched by "
            "--per_device_train_batch_size: drop one of the two."
        )
    check_output_dir(training_args)
    if training_args.metric_for_best_model == "task":
        training_args.metric_for_best_model = task.best_metric
        training_args.greater_is_better = task.greater_is_better
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    output_dir = Path(training_args.output_dir)
    eval_strategy = getattr(training_args.eval_strategy, "value", training_args.eval_strategy)
    protocol = {
        "task": data_args.task,
        "corpus": task.corpus,
        "description": task.description,
        "folds": folds,
        "split": task.split,
        "train_fraction": data_args.train_fraction,
        "checkpoint_selection": (
            f"best validation {task.best_metric} ({'max' if task.greater_is_better else 'min'}), evaluated every "
            f"{eval_strategy}"
        ),
        "metric_variants": (
            {
                "acc7": "round(clip(x, -3, 3)) (MulT/MMSA); acc7_sdk also reported",
                "acc2": "has0 and non0 both reported",
            }
            if task.regression
            else {"wa": "overall accuracy", "ua": "mean per-class recall", "binary": "MulT one-vs-rest from 4-class"}
        ),
        "seed": training_args.seed,
        "model": {k: v for k, v in vars(model_args).items() if v is not None},
        "training": {
            "learning_rate": training_args.learning_rate,
            "tower_learning_rate": training_args.tower_learning_rate,
            "cross_learning_rate": training_args.cross_learning_rate,
            "epochs": training_args.num_train_epochs,
            "max_steps": training_args.max_steps,
            "per_device_train_batch_size": training_args.per_device_train_batch_size,
            "max_batch_seconds": training_args.max_batch_seconds,
            "world_size": training_args.world_size,
            "train_sampling_strategy": training_args.train_sampling_strategy,
        },
        **environment_card(command_line(__file__, argv)),
    }

    # Data
    corpus = task.load(data_args)

    # Train and test every fold
    results = []
    for fold in folds:
        fold_dir = output_dir / f"fold_{fold}" if fold is not None else output_dir
        results.append(
            train_and_test_fold(fold, task, corpus, model_args, data_args, cache_args, training_args, fold_dir)
        )

    # Results: per fold and mean ± std
    summary = {
        "protocol": protocol,
        "aggregate": aggregate([result["flat_metrics"] for result in results]),
        "aggregate_by_item_type": {
            item_type: aggregate([result["by_item_type"][item_type] for result in results])
            for item_type in (results[0]["by_item_type"] if results else {})
        },
        "folds": [{k: v for k, v in result.items() if k not in ("log_history", "test_logits")} for result in results],
    }
    if training_args.process_index == 0:
        write_json(output_dir / "results.json", summary)
        headline = task.best_metric
        logger.warning(
            f"{data_args.task}: test {headline} = {summary['aggregate'][headline]['mean']:.4f} ± "
            f"{summary['aggregate'][headline]['std']:.4f} over {len(results)} fold(s); results in {output_dir}/results.json"
        )
        # Model card (and push) for the last fold's model folder
        card_dir = output_dir / f"fold_{folds[-1]}" if folds[-1] is not None else output_dir
        write_model_card(card_dir, summary, hub_model_id=training_args.hub_model_id)
        if push_to_hub:
            push_or_explain(card_dir, training_args.hub_model_id, training_args.hub_token)
    return summary


if __name__ == "__main__":
    main()
