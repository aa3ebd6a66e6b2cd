"""Categorical speech emotion recognition metrics (IEMOCAP 4-class protocol) as an `evaluate` metric.

Load it offline from a local path (the folder and this file share a name):

    >>> import evaluate
    >>> metric = evaluate.load("cmt_training/metrics/emotion_recognition")
    >>> metric.compute(predictions=[0, 1, 2, 2], references=[0, 1, 2, 3], label_names=["ang", "hap", "neu", "sad"])

Training scripts that do not want `evaluate`'s caching machinery call `compute_emotion_metrics` directly.
"""

from collections.abc import Sequence

import datasets
import evaluate
import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score


_CITATION = """\
@inproceedings{chu-etal-2022-self,
    title = "Self-supervised Cross-modal Pretraining for Speech Emotion Recognition and Sentiment Analysis",
    author = "Chu, Iek-Heng and Chen, Ziyi and Yu, Xinlu and Han, Mei and Xiao, Jing and Chang, Peng",
    booktitle = "Findings of the Association for Computational Linguistics: EMNLP 2022",
    year = "2022",
    address = "Abu Dhabi, United Arab Emirates",
    publisher = "Association for Computational Linguistics",
    url = "https://aclanthology.org/2022.findings-emnlp.375",
}
@inproceedings{tsai-etal-2019-multimodal,
    title = "Multimodal Transformer for Unaligned Multimodal Language Sequences",
    author = "Tsai, Yao-Hung Hubert and Bai, Shaojie and Liang, Paul Pu and Kolter, J. Zico and
              Morency, Louis-Philippe and Salakhutdinov, Ruslan",
    booktitle = "Proceedings of the 57th Annual Meeting of the Association for Computational Linguistics",
    year = "2019",
    address = "Florence, Italy",
    publisher = "Association for Computational Linguistics",
    url = "https://aclanthology.org/P19-1656",
}
"""

_DESCRIPTION = """\
Metrics for single-label emotion classification as reported for IEMOCAP (4 classes: angry, happy = happy + excited,
neutral, sad) by CMT (Chu et al., 2022), computed with scikit-learn:

- `wa` (weighted accuracy): overall accuracy, correct predictions / all samples.
- `ua` (unweighted accuracy): the mean of the per-class recalls over the classes that occur in `references`
  (balanced accuracy). A class that occurs in `references` but is never predicted has recall 0 and counts in the
  mean. A class absent from `references` has no defined recall: it is excluded from the mean and from
  `per_class_recall` (predicting it still costs the recall of the true classes of those samples).
- `per_class_recall`: recall of each class in `references`, keyed by label name; `ua` is the mean of its values.
- `confusion_matrix`: counts over all `num_labels` classes, rows = true class, columns = predicted class, in label
  order (`label_names` gives the order).
- `binary_accuracy` / `binary_f1`: the MulT per-emotion protocol (Tsai et al., 2019), one-vs-rest from the
  multi-class predictions: for emotion e, target = (reference == e), prediction = (prediction == e). The F1 is the
  support-weighted F1 of that binary problem (`f1_score(..., average="weighted")`), as in MulT's `eval_iemocap`
  (`src/eval_metrics.py`); it is not the F1 of the positive class alone. Reported for every class, also those absent
  from `references`. MulT trains one binary head per emotion; here the binary decisions come from one 4-way argmax,
  which is the protocol CMT's per-emotion columns report.
- `macro_f1` / `weighted_f1`: multi-class F1 averaged over the classes present in `references` or `predictions`
  (scikit-learn's default label set), unweighted or weighted by reference support.

Undefined precision/recall terms inside an F1 (a class never predicted, or never true) count as 0
(`zero_division=0.0`) instead of raising a warning.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids, in `[0, num_labels)`.
    references (`list` of `int`): true class ids, in `[0, num_labels)`.
    label_names (`list` of `str`, *optional*): a name for each class id, used as the keys of the per-class outputs
        and as the order of `confusion_matrix`. Defaults to `["0", "1", ...]`.
    num_labels (`int`, *optional*): the number of classes. Defaults to `len(label_names)` if given, else to the
        largest id seen plus one. Ids outside `[0, num_labels)` raise a `ValueError`.

Returns:
    `dict` with `wa`, `ua`, `macro_f1`, `weighted_f1` (floats in [0, 1]), `per_class_recall`, `binary_accuracy`,
    `binary_f1` (dicts keyed by label name), `confusion_matrix` (list of lists of ints, rows = true class) and
    `label_names` (the names, in class-id order).

Examples:
    >>> import evaluate
    >>> metric = evaluate.load("cmt_training/metrics/emotion_recognition")
    >>> results = metric.compute(predictions=[0, 0, 1, 2], references=[0, 1, 1, 2], label_names=["ang", "hap", "neu"])
    >>> results["wa"], results["ua"]
    (0.75, 0.8333333333333334)
"""


def _validate_class_ids(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"`{name}` must be a flat sequence of class ids, got an array of shape {array.shape}.")
    if array.dtype.kind == "f":
        if np.isnan(array).any():
            raise ValueError(f"`{name}` contains NaN at indices {np.flatnonzero(np.isnan(array)).tolist()[:10]}.")
        if not np.array_equal(array, np.round(array)):
            raise ValueError(f"`{name}` must hold integer class ids, got non-integer values.")
    elif array.dtype.kind not in "iub" and array.size > 0:
        raise ValueError(f"`{name}` must hold integer class ids, got dtype {array.dtype}.")
    return array.astype(np.int64)


def compute_emotion_metrics(
    predictions: ArrayLike,
    references: ArrayLike,
    label_names: Sequence[str] | None = None,
    num_labels: int | None = None,
) -> dict:
    """Compute WA, UA, per-class recall, the confusion matrix, MulT per-emotion binary accuracy/F1 and macro/weighted
    F1 for single-label classification. See `_DESCRIPTION` in this module for the exact definitions.

    Args:
        predictions: predicted class ids, shape `(num_samples,)`.
        references: true class ids, shape `(num_samples,)`.
        label_names: one name per class id; defaults to `["0", "1", ...]`.
        num_labels: number of classes; defaults to `len(label_names)`, else the largest id seen plus one.

    Raises:
        ValueError: if the inputs are empty, differ in length, contain NaN or non-integer values, or hold ids outside
            `[0, num_labels)`, or if `label_names` repeat a name or disagree with `num_labels`.
    """
    predictions = _validate_class_ids(predictions, "predictions")
    references = _validate_class_ids(references, "references")
    if len(predictions) != len(references):
        raise ValueError(
            f"`predictions` and `references` must have the same length, got {len(predictions)} and {len(references)}."
        )
    if len(references) == 0:
        raise ValueError("`predictions` and `references` are empty: there is nothing to evaluate.")

    if label_names is not None:
        label_names = [str(name) for name in label_names]
        if len(set(label_names)) != len(label_names):
            raise ValueError(f"`label_names` must be unique, got {label_names}.")
        if num_labels is not None and num_labels != len(label_names):
            raise ValueError(
                f"`num_labels={num_labels}` but {len(label_names)} `label_names` were given: {label_names}."
            )
        num_labels = len(label_names)
    elif num_labels is None:
        num_labels = int(max(predictions.max(), references.max())) + 1
    for name, array in (("predictions", predictions), ("references", references)):
        out_of_range = np.unique(array[(array < 0) | (array >= num_labels)])
        if out_of_range.size > 0:
            raise ValueError(
                f"`{name}` holds class ids {out_of_range.tolist()} outside [0, {num_labels}); num_labels={num_labels}."
            )
    if label_names is None:
        label_names = [str(label) for label in range(num_labels)]

    labels = np.arange(num_labels)
    classes_in_references = np.unique(references)
    recalls = recall_score(references, predictions, labels=classes_in_references, average=None, zero_division=0.0)

    binary_accuracy, binary_f1 = {}, {}
    for label, label_name in zip(labels, label_names):
        binary_references = references == label
        binary_predictions = predictions == label
        binary_accuracy[label_name] = float(accuracy_score(binary_references, binary_predictions))
        binary_f1[label_name] = float(
            f1_score(binary_references, binary_predictions, average="weighted", zero_division=0.0)
        )

    return {
        "wa": float(accuracy_score(references, predictions)),
        "ua": float(np.mean(recalls)),
        "macro_f1": float(f1_score(references, predictions, average="macro", zero_division=0.0)),
        "weighted_f1": float(f1_score(references, predictions, average="weighted", zero_division=0.0)),
        "per_class_recall": {
            label_names[label]: float(recall) for label, recall in zip(classes_in_references, recalls)
        },
        "binary_accuracy": binary_accuracy,
        "binary_f1": binary_f1,
        "confusion_matrix": confusion_matrix(references, predictions, labels=labels).tolist(),
        "label_names": label_names,
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class EmotionRecognition(evaluate.Metric):
    """WA, UA, per-class recall, confusion matrix and MulT per-emotion binary metrics for emotion classification."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            reference_urls=[
                "https://aclanthology.org/2022.findings-emnlp.375",
                "https://github.com/yaohungt/Multimodal-Transformer/blob/master/src/eval_metrics.py",
                "https://scikit-learn.org/stable/modules/model_evaluation.html#balanced-accuracy-score",
            ],
        )

    def _compute(self, predictions, references, label_names=None, num_labels=None):
        return compute_emotion_metrics(predictions, references, label_names=label_names, num_labels=num_labels)
