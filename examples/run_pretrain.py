"""Stage-wise self-supervised cross-modal pretraining of CMT, and task-adaptive pretraining (TAPT).

Losses (each with a config weight, each logged separately): masked acoustic unit prediction conditioned on the
transcript (targets from the k-means codebook that `fit_codebook.py` stores in the checkpoint), masked language
modelling on the text tower, and optional audio–text matching.

- Stage 1: both towers frozen; the cross-modal layers and the heads train.
- Stage 2: everything trains, the towers at `--tower_learning_rate` (default: a tenth of `--learning_rate`).
- `--stage both` runs stage 1 then stage 2 (outputs in `stage1/`, `stage2/`, the final model at the top).

    python examples/fit_codebook.py --audio_model_name_or_path facebook/hubert-base-ls960 \
        --text_model_name_or_path FacebookAI/roberta-base --task audio_text_pairs --data_dir my_pairs \
        --output_dir runs/codebook
    accelerate launch examples/run_pretrain.py --model_name_or_path runs/codebook --task audio_text_pairs \
        --data_dir my_pairs --stage both --num_train_epochs 10 --output_dir runs/pretrain
    # streaming a large corpus (no second copy on disk): add --streaming --max_steps 100000

TAPT is the same script pointed at a task's training split (labels unused; the fold's test sessions are never seen):

    accelerate launch examples/run_pretrain.py --model_name_or_path runs/pretrain --task iemocap \
        --data_dir IEMOCAP_full_release --test_fold 1 --stage 2 --output_dir runs/tapt-iemocap-fold1
"""

import os


# OpenMP threads that spin while they wait starve any other CPU-bound process (and are starved by it): a train step
# then runs many times slower. Waiting threads sleep instead; this must be set before torch loads (README, "Threads").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import itertools
import logging
import time
from pathlib import Path

from datasets import IterableDataset
from transformers import set_seed

from cmt_training.arguments import (
    CMTPretrainingArguments,
    DataArguments,
    ModelArguments,
    PretrainingArguments,
    parse_args,
)
from cmt_training.build import build_model, build_processor
from cmt_training.cpu import apply_cpu_allocator_tuning
from cmt_training.data import PretrainingCollator, prepare_split
from cmt_training.distributed import read_stream_on_every_rank
from cmt_training.logging_utils import setup_logging
from cmt_training.results import command_line, environment_card, write_json
from cmt_training.tasks import load_pretraining_corpus
from cmt_training.trainer import (
    CMTTrainer,
    check_output_dir,
    check_resume_arguments,
    parameter_checksum,
    resolve_resume_checkpoint,
    run_arguments,
    write_run_arguments,
)
from modeling_cmt import CMTForPreTraining


logger = logging.getLogger(__name__)

STAGES = {"1": (1,), "2": (2,), "both": (1, 2)}


def main(argv: list[str] | None = None) -> dict:
    # Arguments: command line (or `argv`), or one JSON file
    model_args, data_args, pretraining_args, training_args = parse_args(
        (ModelArguments, DataArguments, PretrainingArguments, CMTPretrainingArguments), argv
    )

    # Logging
    setup_logging(training_args, logger)
    apply_cpu_allocator_tuning(training_args)

    # Protocol checks
    if pretraining_args.stage not in STAGES:
        raise ValueError(f"--stage must be one of {list(STAGES)}, got {pretraining_args.stage!r}.")
    if data_args.streaming and training_args.max_steps <= 0:
        raise ValueError("A streamed corpus has no length: pass --max_steps to say how long to pretrain.")
    if data_args.streaming and training_args.max_batch_seconds is not None:
        raise ValueError("--max_batch_seconds plans batches from every utterance's duration, which a stream lacks.")
    check_output_dir(training_args)
    if training_args.tower_learning_rate is None:
        training_args.tower_learning_rate = training_args.learning_rate * 0.1
    set_seed(training_args.seed)
    output_dir = Path(training_args.output_dir)
    started = time.time()

    # Data
    corpus = load_pretraining_corpus(data_args)
    with training_args.main_process_first(desc="decoding audio"):
        prepared = prepare_split(corpus, None, data_args.max_audio_seconds, data_args.preprocessing_num_workers)
    streamed = isinstance(prepared, IterableDataset)
    sample_texts = [row["text"] for row in itertools.islice(prepared, 2000)] if streamed else prepared["text"]
    if streamed:
        training_args.train_sampling_strategy = "random"  # a stream has no lengths to group by
        prepared = read_stream_on_every_rank(prepared, training_args)  # several processes: each reads its shards

    # Model
    processor = build_processor(model_args, sample_texts, output_dir)
    model = build_model(CMTForPreTraining, model_args, processor, **pretraining_args.loss_weights())
    if model.config.unit_loss_weight > 0 and not model.codebook_is_fitted:
        raise ValueError(
            "This checkpoint has no fitted codebook for masked acoustic unit prediction: run examples/fit_codebook.py "
            "first and pass its output as --model_name_or_path (or set --unit_loss_weight 0)."
        )
    collator = PretrainingCollator(
        processor,
        mlm_probability=pretraining_args.mlm_probability,
        min_audio_samples=model.config.min_input_samples(),
    )

    # Stage-wise training
    stages = STAGES[pretraining_args.stage]
    history = {}
    for stage in stages:
        stage_dir = output_dir / f"stage{stage}" if len(stages) > 1 else output_dir
        training_args.output_dir = str(stage_dir)
        if stage == 1:
            model.freeze_towers()
        else:
            model.unfreeze_towers(include_feature_encoder=not model_args.freeze_feature_encoder)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info(f"stage {stage}: {trainable:,} trainable parameters -> {stage_dir}")
        trainer = CMTTrainer(
            model=model,
            args=training_args,
            train_dataset=prepared,
            data_collator=collator,
            processing_class=processor,
        )
        resume = resolve_resume_checkpoint(training_args.resume_from_checkpoint, stage_dir)
        arguments = run_arguments(model_args, data_args, pretraining_args, training_args)
        if resume:
            check_resume_arguments(resume, arguments)
        elif trainer.is_world_process_zero():
            write_run_arguments(stage_dir, arguments)
        trainer.train(resume_from_checkpoint=resume)
        trainer.save_model(str(stage_dir))
        history[f"stage{stage}"] = trainer.state.log_history

    # Save the final model (with its codebook) and the results card
    if len(stages) > 1:
        trainer.save_model(str(output_dir))
    checksum = parameter_checksum(model)
    logger.warning(f"[rank {training_args.process_index}] parameter checksum: {checksum:.12e}")
    final_losses = {
        stage: {k: v for k, v in log[-2].items() if k.endswith("loss")} if len(log) > 1 else {}
        for stage, log in history.items()
    }
    results = {
        "protocol": {
            "corpus": data_args.task,
            "tapt": data_args.task not in ("audio_text_pairs",),
            "fold": data_args.test_fold,
            "stages": list(stages),
            "loss_weights": {
                name: getattr(model.config, name)
                for name in ("unit_loss_weight", "mlm_loss_weight", "matching_loss_weight")
            },
            "mlm_probability": pretraining_args.mlm_probability,
            "learning_rate": training_args.learning_rate,
            "tower_learning_rate": training_args.tower_learning_rate,
            "seed": training_args.seed,
            "model": {k: v for k, v in vars(model_args).items() if v is not None},
            **environment_card(command_line(__file__, argv)),
        },
        "final_losses": final_losses,
        "log_history": history,
        "parameter_checksum": checksum,
        "wall_time_s": round(time.time() - started, 1),
    }
    if trainer.is_world_process_zero():
        write_json(output_dir / "results.json", results)
        logger.warning(f"pretraining done in {time.time() - started:.0f} s; model and codebook in {output_dir}")
    return results


if __name__ == "__main__":
    main()
