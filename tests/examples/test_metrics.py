"""Tests for the `evaluate` metric modules in `cmt_training/metrics/`.

Expected values are derived by hand in the comments (counts of true/false positives per class), never by calling
scikit-learn again.
"""

import math

import evaluate
import numpy as np
import pytest

from cmt_training.metrics import METRICS_DIR, load_metric
from cmt_training.metrics.emotion_recognition import emotion_recognition
from cmt_training.metrics.sentiment_regression import sentiment_regression


EMOTIONS = ["ang", "hap", "neu", "sad"]

# Ten utterances; "sad" (3) occurs twice in the references but is never predicted.
EMOTION_REFERENCES = [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
EMOTION_PREDICTIONS = [0, 0, 1, 1, 2, 2, 2, 0, 2, 1]

# Eight segments; two references are exactly 0, and one prediction is exactly 0.0 (index 1).
SENTIMENT_REFERENCES = [2.5, -1.0, 0.0, 0.0, 1.0, -2.0, -3.0, 2.0]
SENTIMENT_PREDICTIONS = [2.2, 0.0, 0.3, -0.2, 1.5, -2.5, -2.0, -0.4]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    return tmp_path


def _assert_close_nested(actual, expected):
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, dict):
            _assert_close_nested(actual[key], value)
        elif isinstance(value, float):
            assert actual[key] == pytest.approx(value, nan_ok=True), key
        else:
            assert actual[key] == value, key


# Emotion recognition


def test_emotion_metrics_match_hand_computed_values():
    results = emotion_recognition.compute_emotion_metrics(
        EMOTION_PREDICTIONS, EMOTION_REFERENCES, label_names=EMOTIONS
    )

    # Rows = true class: ang -> (0, 0, 1); hap -> (1, 2); neu -> (2, 2, 0); sad -> (2, 1).
    assert results["confusion_matrix"] == [[2, 1, 0, 0], [0, 1, 1, 0], [1, 0, 2, 0], [0, 1, 1, 0]]
    assert results["label_names"] == EMOTIONS
    # WA: diagonal 2 + 1 + 2 + 0 = 5 of 10.
    assert results["wa"] == pytest.approx(0.5)
    # Recalls 2/3, 1/2, 2/3 and 0 for the never-predicted "sad", which still counts: UA = (11/6) / 4 = 11/24.
    assert results["per_class_recall"] == pytest.approx({"ang": 2 / 3, "hap": 1 / 2, "neu": 2 / 3, "sad": 0.0})
    assert results["ua"] == pytest.approx(11 / 24)
    # Per-class F1 = 2TP / (2TP + FP + FN): ang 4/6, hap 2/5, neu 4/7, sad 0 (supports 3, 2, 3, 2).
    assert results["macro_f1"] == pytest.approx((2 / 3 + 2 / 5 + 4 / 7 + 0) / 4)
    assert results["weighted_f1"] == pytest.approx((3 * 2 / 3 + 2 * 2 / 5 + 3 * 4 / 7 + 2 * 0) / 10)


def test_emotion_mult_binary_accuracy_and_weighted_f1():
    results = emotion_recognition.compute_emotion_metrics(
        EMOTION_PREDICTIONS, EMOTION_REFERENCES, label_names=EMOTIONS
    )

    # One-vs-rest (TP, FN, FP, TN): ang (2, 1, 1, 6), hap (1, 1, 2, 6), neu (2, 1, 2, 5), sad (0, 2, 0, 8).
    assert results["binary_accuracy"] == pytest.approx({"ang": 0.8, "hap": 0.7, "neu": 0.7, "sad": 0.8})
    # Weighted F1 of each binary problem: positive-class F1 weighted by its support plus negative-class F1
    # (2TN / (2TN + FP + FN)) weighted by the negatives' support.
    assert results["binary_f1"] == pytest.approx(
        {
            "ang": (3 * 4 / 6 + 7 * 12 / 14) / 10,
            "hap": (2 * 2 / 5 + 8 * 12 / 15) / 10,
            "neu": (3 * 4 / 7 + 7 * 10 / 13) / 10,
            "sad": (2 * 0 + 8 * 16 / 18) / 10,
        }
    )


def test_emotion_class_absent_from_references_is_excluded_from_ua():
    references = [0, 0, 1, 1, 2, 2]
    predictions = [0, 3, 1, 1, 2, 0]

    results = emotion_recognition.compute_emotion_metrics(predictions, references, label_names=EMOTIONS)

    # "sad" never occurs in the references: UA averages ang 1/2, hap 2/2, neu 1/2 only.
    assert results["ua"] == pytest.approx(2 / 3)
    assert results["per_class_recall"] == pytest.approx({"ang": 0.5, "hap": 1.0, "neu": 0.5})
    assert results["wa"] == pytest.approx(4 / 6)
    assert results["confusion_matrix"] == [[1, 0, 0, 1], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    # sad one-vs-rest: one false positive, five true negatives; only the negative class has support (F1 10/11).
    assert results["binary_accuracy"]["sad"] == pytest.approx(5 / 6)
    assert results["binary_f1"]["sad"] == pytest.approx(10 / 11)


def test_emotion_default_label_names_and_num_labels():
    results = emotion_recognition.compute_emotion_metrics(np.array([0, 1]), np.array([0, 2]))

    assert results["label_names"] == ["0", "1", "2"]
    assert results["confusion_matrix"] == [[1, 0, 0], [0, 0, 0], [0, 1, 0]]
    assert results["per_class_recall"] == {"0": 1.0, "2": 0.0}

    padded = emotion_recognition.compute_emotion_metrics([0, 1], [0, 2], num_labels=4)
    assert padded["label_names"] == ["0", "1", "2", "3"]
    assert padded["confusion_matrix"][3] == [0, 0, 0, 0]


@pytest.mark.parametrize(
    "predictions, references, kwargs, match",
    [
        ([0, 1], [0], {}, "same length"),
        ([], [], {}, "empty"),
        ([0.0, float("nan")], [0, 1], {}, "NaN"),
        ([0.5, 1.0], [0, 1], {}, "integer"),
        ([0, 4], [0, 1], {"num_labels": 4}, r"outside \[0, 4\)"),
        ([0, 1], [0, 4], {"label_names": EMOTIONS}, r"outside \[0, 4\)"),
        ([0, -1], [0, 1], {}, "outside"),
        ([0, 1], [0, 1], {"label_names": EMOTIONS, "num_labels": 3}, "num_labels=3"),
        ([0, 1], [0, 1], {"label_names": ["ang", "ang"]}, "unique"),
    ],
)
def test_emotion_bad_inputs_raise(predictions, references, kwargs, match):
    with pytest.raises(ValueError, match=match):
        emotion_recognition.compute_emotion_metrics(predictions, references, **kwargs)


# Sentiment regression


def test_mult_rounding_rounds_halves_to_even():
    scores = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49, 3.7, -3.2])
    assert sentiment_regression.round_sentiment_mult(scores).tolist() == [0, 2, 2, 0, -2, -2, 0, 3, -3]
    assert sentiment_regression.round_sentiment_mult(scores, bound=2.0).tolist() == [0, 2, 2, 0, -2, -2, 0, 2, -2]


def test_sdk_rounding_bins_and_edges():
    scores = np.array([-2.0, -1.0, 0.0, 1.0, 2.0, -2.5, -1.9999, -0.5, 0.0001, 0.5, 1.5, 2.5, -3.7, 3.7])
    # (-inf,-2) -> -3, [-2,-1) -> -2, [-1,0) -> -1, 0 -> 0, (0,1] -> 1, (1,2] -> 2, (2,inf) -> 3.
    expected_7 = [-2, -1, 0, 1, 2, -3, -2, -1, 1, 1, 2, 3, -3, 3]
    assert sentiment_regression.round_sentiment_sdk(scores).tolist() == expected_7
    # Acc5: clipped to [-2, 2] first, so everything below -2 lands on -2 and everything above 2 on 2.
    expected_5 = [-2, -1, 0, 1, 2, -2, -2, -1, 1, 1, 2, 2, -2, 2]
    assert sentiment_regression.round_sentiment_sdk(scores, bound=2.0).tolist() == expected_5


def _cmumosei_round(a):
    """CMU-MultimodalSDK's scalar `cmumosei_round`, transcribed as the reference implementation."""
    if a < -2:
        return -3
    if a < -1:
        return -2
    if a < 0:
        return -1
    if a == 0:
        return 0
    if a <= 1:
        return 1
    if a <= 2:
        return 2
    return 3


def test_sdk_rounding_equals_the_sdk_reference_on_mosei_label_grid():
    # MOSEI references are means of three annotator scores: multiples of 1/3 in [-3, 3].
    scores = np.arange(-9, 10) / 3
    assert sentiment_regression.round_sentiment_sdk(scores).tolist() == [_cmumosei_round(s) for s in scores]


def test_sentiment_metrics_match_hand_computed_values():
    results = sentiment_regression.compute_sentiment_metrics(SENTIMENT_PREDICTIONS, SENTIMENT_REFERENCES)

    # mult, 7 classes: refs -> 2, -1, 0, 0, 1, -2, -3, 2; preds -> 2, 0, 0, -0, 2, -2 (half to even), -2, -0.
    # Matches at indices 0, 2, 3, 5.
    assert results["acc7_mult"] == pytest.approx(4 / 8)
    # mult, 5 classes: index 6 now matches too (-3 -> -2 and -2.0 -> -2).
    assert results["acc5_mult"] == pytest.approx(5 / 8)
    # sdk, 7 classes: refs -> 3, -1, 0, 0, 1, -2, -3, 2; preds -> 3, 0, 1, -1, 2, -3, -2, -1. Only index 0.
    assert results["acc7_sdk"] == pytest.approx(1 / 8)
    # sdk, 5 classes: refs -> 2, -1, 0, 0, 1, -2, -2, 2; preds -> 2, 0, 1, -1, 2, -2, -2, -1. Indices 0, 5, 6.
    assert results["acc5_sdk"] == pytest.approx(3 / 8)
    assert results["acc7"] == results["acc7_mult"]
    assert results["acc5"] == results["acc5_mult"]
    assert results["acc7_rounding"] == "mult"

    # Has0 (>= 0): refs T F T T T F F T, preds T T T F T F F F (0.0 counts as non-negative): wrong at 1, 3, 7.
    assert results["acc2_has0"] == pytest.approx(5 / 8)
    # Non-negative: TP 3, FP 1, FN 2 -> F1 6/9, support 5. Negative: TP 2, FP 2, FN 1 -> F1 4/7, support 3.
    assert results["f1_has0"] == pytest.approx((5 * 6 / 9 + 3 * 4 / 7) / 8)

    # Non0: indices 2 and 3 (reference 0) and their predictions are dropped. Remaining refs > 0: T F T F F T,
    # preds > 0: T F T F F F (0.0 counts as not positive): wrong at index 7 only.
    assert results["acc2_non0"] == pytest.approx(5 / 6)
    # Positive: TP 2, FP 0, FN 1 -> F1 4/5, support 3. Negative: TP 3, FP 1, FN 0 -> F1 6/7, support 3.
    assert results["f1_non0"] == pytest.approx((3 * 4 / 5 + 3 * 6 / 7) / 6)

    # |errors| = 0.3, 1, 0.3, 0.2, 0.5, 0.5, 1, 2.4 -> sum 6.2.
    assert results["mae"] == pytest.approx(6.2 / 8)


def test_sentiment_acc7_rounding_selects_the_reported_variant():
    results = sentiment_regression.compute_sentiment_metrics(
        SENTIMENT_PREDICTIONS, SENTIMENT_REFERENCES, acc7_rounding="sdk"
    )

    assert results["acc7"] == pytest.approx(1 / 8)
    assert results["acc5"] == pytest.approx(3 / 8)
    assert results["acc7_mult"] == pytest.approx(4 / 8)
    assert results["acc7_rounding"] == "sdk"


def test_sentiment_pearson_on_known_cases():
    # x - mean = (-1, 0, 1), y - mean = (-1, 1, 0): covariance sum 1, variance sums 2 and 2 -> r = 1 / 2.
    assert sentiment_regression.compute_sentiment_metrics([1.0, 2.0, 3.0], [1.0, 3.0, 2.0])["pearson"] == (
        pytest.approx(0.5)
    )
    # An exact negative linear relation.
    assert sentiment_regression.compute_sentiment_metrics([-1.0, 0.0, 1.0], [1.5, 1.0, 0.5])["pearson"] == (
        pytest.approx(-1.0)
    )


def test_sentiment_constant_predictions_give_nan_pearson_with_a_warning():
    with pytest.warns(UserWarning, match="Pearson correlation is undefined"):
        results = sentiment_regression.compute_sentiment_metrics([0.5, 0.5, 0.5], [1.0, 0.0, 2.0])

    assert math.isnan(results["pearson"])
    # The other metrics are still defined: sdk rounds 0.5 up to 1 (one match), mult rounds it to 0 (one match).
    assert results["acc7_sdk"] == pytest.approx(1 / 3)
    assert results["acc7_mult"] == pytest.approx(1 / 3)


def test_sentiment_all_zero_references_give_nan_non0():
    # Constant references also make Pearson undefined, hence two warnings.
    with pytest.warns(UserWarning) as warned:
        results = sentiment_regression.compute_sentiment_metrics([0.5, -0.5], [0.0, 0.0])

    assert any("Non0" in str(warning.message) for warning in warned)
    assert math.isnan(results["pearson"])

    assert math.isnan(results["acc2_non0"])
    assert math.isnan(results["f1_non0"])
    # Has0: both references non-negative, predictions T F.
    assert results["acc2_has0"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "predictions, references, kwargs, match",
    [
        ([0.1, 0.2], [0.0], {}, "same length"),
        ([], [], {}, "empty"),
        ([0.1, float("nan")], [0.0, 1.0], {}, "predictions.*NaN"),
        ([0.1, float("inf")], [0.0, 1.0], {}, "predictions.*infinite"),
        ([0.1, 0.2], [0.0, float("nan")], {}, "references.*NaN"),
        ([0.1, 0.2], [0.0, 3.5], {}, r"\[-3, 3\]"),
        ([0.1, 0.2], [0.0, 1.0], {"acc7_rounding": "floor"}, "acc7_rounding"),
    ],
)
def test_sentiment_bad_inputs_raise(predictions, references, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sentiment_regression.compute_sentiment_metrics(predictions, references, **kwargs)


# Loading through `evaluate.load`


def test_emotion_metric_loads_offline_from_relative_path(offline, monkeypatch):
    monkeypatch.chdir(METRICS_DIR.parents[1])  # the repository root
    metric = evaluate.load("cmt_training/metrics/emotion_recognition", keep_in_memory=True, cache_dir=str(offline))

    results = metric.compute(predictions=EMOTION_PREDICTIONS, references=EMOTION_REFERENCES, label_names=EMOTIONS)

    expected = emotion_recognition.compute_emotion_metrics(
        EMOTION_PREDICTIONS, EMOTION_REFERENCES, label_names=EMOTIONS
    )
    _assert_close_nested(results, expected)
    assert "Chu" in metric.citation and "Tsai" in metric.citation
    assert "UA" in metric.description or "ua" in metric.description


def test_sentiment_metric_loads_offline_from_absolute_path(offline):
    metric = evaluate.load(str(METRICS_DIR / "sentiment_regression"), keep_in_memory=True, cache_dir=str(offline))

    for rounding in ("mult", "sdk"):
        results = metric.compute(
            predictions=SENTIMENT_PREDICTIONS, references=SENTIMENT_REFERENCES, acc7_rounding=rounding
        )
        expected = sentiment_regression.compute_sentiment_metrics(
            SENTIMENT_PREDICTIONS, SENTIMENT_REFERENCES, acc7_rounding=rounding
        )
        _assert_close_nested(results, expected)
    assert "cmumosei_round" in metric.description


def test_loaded_metrics_reject_bad_inputs(offline):
    emotion = load_metric("emotion_recognition", keep_in_memory=True, cache_dir=str(offline))
    sentiment = load_metric("sentiment_regression", keep_in_memory=True, cache_dir=str(offline))
    with pytest.raises(ValueError, match="Unknown metric 'accuracy'"):
        load_metric("accuracy")

    with pytest.raises(ValueError, match="outside"):
        emotion.compute(predictions=[0, 5], references=[0, 1], num_labels=4)
    with pytest.raises(ValueError, match="NaN"):
        sentiment.compute(predictions=[0.1, float("nan")], references=[0.0, 1.0])
    with pytest.raises(ValueError, match="empty"):
        sentiment.compute(predictions=[], references=[])
    with pytest.raises(ValueError):
        sentiment.compute(predictions=[0.1, 0.2], references=[0.0])
