"""Training code for CMT: what the scripts in `examples/` are made of (installed with `pip install -e ".[train]"`).

One concern a module, as in parler-tts' `training/`:

- `arguments`: the argument dataclasses of the scripts and their parsing (command line or one JSON file);
- `tasks`: the task registry (`TASKS`, `register_task`): corpus loading and fold cutting per task;
- `data`: decoding once into Arrow, and the collators;
- `build`: the run's model and processor (checkpoint, two towers, or a preset with a trained BPE tokenizer);
- `sampling`: batches by audio duration (`--max_batch_seconds`);
- `trainer`: `CMTTrainer` and checkpoint bookkeeping (output folders, resuming);
- `distributed`: what multi-process runs need besides the launcher (engine, FSDP wrap and unused-parameter checks,
  streamed corpora read rank by rank);
- `tower_cache`: frozen-tower outputs computed once and reused;
- `metrics`: the task metrics (`evaluate` modules and plain functions);
- `results`: valid, atomically written JSON, the environment card, mean ± std (shared with `benchmarks/`);
- `model_card`: model cards with the run's measured results, and pushing to the Hub;
- `cpu`: CPU runtime tuning; `logging_utils`: the scripts' logging set-up.

The model package `modeling_cmt` never imports this one.
"""
