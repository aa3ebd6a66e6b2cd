"""Logging set-up shared by the training scripts, as transformers' example scripts do it."""

import logging
import sys

import datasets
import transformers


def setup_logging(training_args: transformers.TrainingArguments, *script_loggers: logging.Logger):
    """Logs to stdout at the process's level (warnings only on ranks other than 0), for the scripts' own loggers,
    this package, datasets and transformers."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    for script_logger in (*script_loggers, logging.getLogger("cmt_training")):
        script_logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
