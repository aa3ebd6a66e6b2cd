"""The task metrics: emotion recognition (WA, UA, per-class recall, MulT one-vs-rest binary accuracy / F1) and
sentiment regression (Acc7 / Acc5 in both roundings, Acc2 / F1 Has0 and Non0, MAE, Pearson r).

Each lives in an `evaluate` metric module of its own folder (`emotion_recognition/`, `sentiment_regression/`):
`load_metric(name)` opens it offline with `evaluate.load`, and the training scripts call the plain functions.
"""

from pathlib import Path

import numpy as np

from .emotion_recognition.emotion_recognition import compute_emotion_metrics
from .sentiment_regression.sentiment_regression import compute_sentiment_metrics


METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("emotion_recognition", "sentiment_regression")


def load_metric(name: str, **kwargs):
    """`evaluate.load` of one of this package's metric modules (a local folder: works offline); `kwargs` go to
    `evaluate.load` (e.g. `keep_in_memory=True`)."""
    import evaluate

    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; this package has {', '.join(METRIC_NAMES)}.")
    return evaluate.load(str(METRICS_DIR / name), **kwargs)


def flat_metrics(metrics: dict) -> dict[str, float]:
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


def compute_task_metrics(task, predictions: np.ndarray, references: np.ndarray, names=None) -> dict:
    """The task's metrics from model outputs: regression scores, or class logits (arg-maxed)."""
    if task.regression:
        return compute_sentiment_metrics(np.asarray(predictions).reshape(-1), np.asarray(references).reshape(-1))
    return compute_emotion_metrics(np.asarray(predictions).argmax(-1), np.asarray(references), label_names=names)


def make_compute_metrics(task, names: list[str] | None):
    """`compute_metrics` for `Trainer`: the task's flat metrics of an evaluation."""

    def compute_metrics(evaluation) -> dict[str, float]:
        logits = evaluation.predictions[0] if isinstance(evaluation.predictions, tuple) else evaluation.predictions
        return flat_metrics(compute_task_metrics(task, logits, evaluation.label_ids, names))

    return compute_metrics


__all__ = [
    "compute_emotion_metrics",
    "compute_sentiment_metrics",
    "compute_task_metrics",
    "flat_metrics",
    "load_metric",
    "make_compute_metrics",
]
