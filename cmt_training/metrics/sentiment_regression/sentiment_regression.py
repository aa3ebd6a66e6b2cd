"""CMU-MOSEI / CMU-MOSI sentiment regression metrics (scores in [-3, 3]) as an `evaluate` metric.

Load it offline from a local path (the folder and this file share a name):

    >>> import evaluate
    >>> metric = evaluate.load("cmt_training/metrics/sentiment_regression")
    >>> metric.compute(predictions=[0.4, -1.2, 2.6], references=[0.0, -1.0, 3.0], acc7_rounding="mult")

Training scripts that do not want `evaluate`'s caching machinery call `compute_sentiment_metrics` directly.
"""

import warnings

import datasets
import evaluate
import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error


ACC7_ROUNDINGS = ("mult", "sdk")

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
@inproceedings{bagher-zadeh-etal-2018-multimodal,
    title = "Multimodal Language Analysis in the Wild: {CMU}-{MOSEI} Dataset and Interpretable Dynamic Fusion Graph",
    author = "Bagher Zadeh, AmirAli and Liang, Paul Pu and Poria, Soujanya and Cambria, Erik and
              Morency, Louis-Philippe",
    booktitle = "Proceedings of the 56th Annual Meeting of the Association for Computational Linguistics",
    year = "2018",
    address = "Melbourne, Australia",
    publisher = "Association for Computational Linguistics",
    url = "https://aclanthology.org/P18-1208",
}
"""

_DESCRIPTION = """\
Metrics for continuous sentiment scores in [-3, 3] (CMU-MOSEI, CMU-MOSI) as reported by CMT (Chu et al., 2022),
computed with scikit-learn and SciPy. Papers disagree on the discretisation, so every variant is returned and named:

- Acc7: 7-class accuracy after mapping both predictions and references to an integer in [-3, 3]. Two roundings:
  - "mult" (MulT / MMSA `eval_mosei_senti`): `np.round(np.clip(x, -3, 3))`; NumPy rounds halves to even, so
    0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> -0, -2.5 -> -2.
  - "sdk" (CMU-MultimodalSDK `cmumosei_round`): (-inf, -2) -> -3, [-2, -1) -> -2, [-1, 0) -> -1, 0 -> 0,
    (0, 1] -> 1, (1, 2] -> 2, (2, inf) -> 3; i.e. negative scores round down, positive scores round up.
  `acc7_mult` and `acc7_sdk` are both returned; `acc7` repeats the one named by `acc7_rounding` (default "mult"),
  and the output key `acc7_rounding` names it.
- Acc5: the same on [-2, 2] (clip to [-2, 2], then the same rounding): `acc5_mult`, `acc5_sdk`, and `acc5` with
  the rounding named by `acc7_rounding`.
- Acc2 and weighted F1 (`f1_score(..., average="weighted")`) of the binary split, in both variants:
  - Has0 (negative / non-negative, papers before 2019): reference >= 0 vs < 0 and prediction >= 0 vs < 0, over all
    samples: `acc2_has0`, `f1_has0`.
  - Non0 (negative / positive, papers after 2019): samples whose reference is exactly 0 are dropped (their
    predictions with them); on the rest, reference > 0 vs < 0 and prediction > 0 vs <= 0, as in MulT and MMSA:
    `acc2_non0`, `f1_non0`. If every reference is 0 both are NaN, with a warning.
- `mae`: mean absolute error between the raw (unclipped) predictions and references.
- `pearson`: Pearson correlation (`scipy.stats.pearsonr`) between raw predictions and references. It is undefined
  when either side is constant or there are fewer than 2 samples: then it is NaN and a `UserWarning` is issued
  instead of an exception.

An undefined precision/recall term inside an F1 (a side never predicted) counts as 0 (`zero_division=0.0`).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `float`): predicted sentiment scores; any finite value (they are clipped where a metric
        needs a class).
    references (`list` of `float`): true sentiment scores in [-3, 3].
    acc7_rounding (`str`, *optional*, defaults to `"mult"`): which rounding `acc7` and `acc5` report, `"mult"`
        (MulT / MMSA, `round(clip(x))`, halves to even) or `"sdk"` (CMU-MultimodalSDK `cmumosei_round`).

Returns:
    `dict` with `acc7`, `acc7_mult`, `acc7_sdk`, `acc5`, `acc5_mult`, `acc5_sdk`, `acc2_has0`, `f1_has0`,
    `acc2_non0`, `f1_non0`, `mae`, `pearson` (floats) and `acc7_rounding` (the rounding `acc7` and `acc5` used).

Examples:
    >>> import evaluate
    >>> metric = evaluate.load("cmt_training/metrics/sentiment_regression")
    >>> results = metric.compute(predictions=[0.5, -1.0, 2.0], references=[1.0, -1.0, 2.0], acc7_rounding="sdk")
    >>> results["acc7"], results["acc7_mult"], results["acc7_rounding"]
    (1.0, 0.6666666666666666, 'sdk')
"""


def round_sentiment_mult(scores: np.ndarray, bound: float = 3.0) -> np.ndarray:
    """MulT / MMSA rounding: clip to `[-bound, bound]`, then round half to even (`np.round`)."""
    return np.round(np.clip(scores, -bound, bound))


def round_sentiment_sdk(scores: np.ndarray, bound: float = 3.0) -> np.ndarray:
    """CMU-MultimodalSDK `cmumosei_round`, vectorised: clip to `[-bound, bound]`, then round negative scores down
    and positive scores up, so [-1, 0) -> -1, 0 -> 0, (0, 1] -> 1, and so on."""
    scores = np.clip(scores, -bound, bound)
    return np.where(scores < 0, np.floor(scores), np.ceil(scores))


_ROUNDINGS = {"mult": round_sentiment_mult, "sdk": round_sentiment_sdk}


def _validate_scores(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"`{name}` must be a flat sequence of scores, got an array of shape {array.shape}.")
    not_finite = np.flatnonzero(~np.isfinite(array))
    if not_finite.size > 0:
        raise ValueError(f"`{name}` contains NaN or infinite values at indices {not_finite.tolist()[:10]}.")
    return array


def _pearson(predictions: np.ndarray, references: np.ndarray) -> float:
    if len(predictions) < 2 or np.ptp(predictions) == 0 or np.ptp(references) == 0:
        warnings.warn(
            "Pearson correlation is undefined for constant predictions or references (or fewer than 2 samples); "
            "returning NaN.",
            UserWarning,
            stacklevel=3,
        )
        return float("nan")
    return float(pearsonr(predictions, references).statistic)


def compute_sentiment_metrics(predictions: ArrayLike, references: ArrayLike, acc7_rounding: str = "mult") -> dict:
    """Compute Acc7 / Acc5 (both roundings), Acc2 and weighted F1 (Has0 and Non0), MAE and Pearson correlation for
    sentiment scores in [-3, 3]. See `_DESCRIPTION` in this module for the exact definitions.

    Args:
        predictions: predicted scores, shape `(num_samples,)`.
        references: true scores in [-3, 3], shape `(num_samples,)`.
        acc7_rounding: `"mult"` or `"sdk"`, the rounding that `acc7` and `acc5` report.

    Raises:
        ValueError: if the inputs are empty, differ in length or contain NaN/inf, if a reference lies outside
            [-3, 3], or if `acc7_rounding` is unknown.
    """
    if acc7_rounding not in ACC7_ROUNDINGS:
        raise ValueError(f"`acc7_rounding` must be one of {ACC7_ROUNDINGS}, got {acc7_rounding!r}.")
    predictions = _validate_scores(predictions, "predictions")
    references = _validate_scores(references, "references")
    if len(predictions) != len(references):
        raise ValueError(
            f"`predictions` and `references` must have the same length, got {len(predictions)} and {len(references)}."
        )
    if len(references) == 0:
        raise ValueError("`predictions` and `references` are empty: there is nothing to evaluate.")
    outside = np.flatnonzero(np.abs(references) > 3)
    if outside.size > 0:
        raise ValueError(
            f"`references` must be sentiment scores in [-3, 3], got {references[outside].tolist()[:10]} "
            f"at indices {outside.tolist()[:10]}."
        )

    results = {}
    for num_classes, bound in ((7, 3.0), (5, 2.0)):
        accuracies = {
            rounding_name: float(accuracy_score(rounding(references, bound), rounding(predictions, bound)))
            for rounding_name, rounding in _ROUNDINGS.items()
        }
        results[f"acc{num_classes}"] = accuracies[acc7_rounding]
        results.update({f"acc{num_classes}_{name}": accuracy for name, accuracy in accuracies.items()})
    results["acc7_rounding"] = acc7_rounding

    has0_references, has0_predictions = references >= 0, predictions >= 0
    results["acc2_has0"] = float(accuracy_score(has0_references, has0_predictions))
    results["f1_has0"] = float(f1_score(has0_references, has0_predictions, average="weighted", zero_division=0.0))

    non_zero = references != 0
    if non_zero.any():
        non0_references, non0_predictions = references[non_zero] > 0, predictions[non_zero] > 0
        results["acc2_non0"] = float(accuracy_score(non0_references, non0_predictions))
        results["f1_non0"] = float(f1_score(non0_references, non0_predictions, average="weighted", zero_division=0.0))
    else:
        warnings.warn(
            "Every reference is 0: Non0 accuracy and F1 are undefined; returning NaN.", UserWarning, stacklevel=2
        )
        results["acc2_non0"] = results["f1_non0"] = float("nan")

    results["mae"] = float(mean_absolute_error(references, predictions))
    results["pearson"] = _pearson(predictions, references)
    return results


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SentimentRegression(evaluate.Metric):
    """Acc7 / Acc5 (MulT and SDK roundings), Acc2 and F1 (Has0 and Non0), MAE and Pearson for sentiment scores."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
            reference_urls=[
                "https://aclanthology.org/2022.findings-emnlp.375",
                "https://github.com/yaohungt/Multimodal-Transformer/blob/master/src/eval_metrics.py",
                "https://github.com/CMU-MultiComp-Lab/CMU-MultimodalSDK",
            ],
        )

    def _compute(self, predictions, references, acc7_rounding="mult"):
        return compute_sentiment_metrics(predictions, references, acc7_rounding=acc7_rounding)
