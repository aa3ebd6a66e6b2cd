"""The corpora the benchmarks train and decode: the embedded synthetic corpus, corpora of given utterance durations
(IEMOCAP-like ones above all), and a switch for `datasets`' cache when a first run is timed."""

import contextlib
import math

import datasets
import numpy as np
from datasets import Audio, ClassLabel, Dataset, Features, Value

from cmt_training.data import SAMPLING_RATE

from .settings import Settings


def iemocap_like_seconds(count: int = 5531, seed: int = 0) -> np.ndarray:
    """Utterance durations shaped like IEMOCAP's 4-class set (5531 utterances; mean about 4.5 s, median about 3.5 s,
    0.6 s to 34 s, long right tail): a log-normal matched to that median and mean, clipped to that range."""
    median_seconds, mean_seconds = 3.5, 4.5
    sigma = math.sqrt(2 * math.log(mean_seconds / median_seconds))
    durations = np.random.default_rng(seed).lognormal(math.log(median_seconds), sigma, count)
    return np.clip(durations, 0.6, 34.0)


def synthetic_corpus(settings: Settings, num_utterances: int):
    """The embedded espeak-ng corpus (built once into the benchmark cache)."""
    import hub_datasets

    return hub_datasets.load_synthetic_emotion(
        num_utterances=num_utterances, cache_dir=str(settings.cache_dir / "synthetic_emotion")
    )


def _length_matched_rows(durations: list[float], texts: list[str], sampling_rate: int, seed: int):
    from hub_datasets._utils import pcm16_wav_bytes

    generator = np.random.default_rng(seed)
    for index, seconds in enumerate(durations):
        samples = (generator.standard_normal(int(seconds * sampling_rate)) * 3000).astype(np.int16)
        yield {
            "audio": {"bytes": pcm16_wav_bytes(samples, sampling_rate), "path": None},
            "text": texts[index % len(texts)],
            "label": int(generator.integers(4)),
        }


def length_matched_corpus(
    settings: Settings, durations: np.ndarray, texts: list[str], sampling_rate: int = SAMPLING_RATE, seed: int = 0
):
    """A corpus whose utterances have the given durations (noise audio as 16-bit WAV at `sampling_rate`, the given
    transcripts, random labels): enough to measure anything that depends on lengths and not on content. Cached by
    `datasets` in the benchmark cache, keyed by its arguments."""
    features = Features(
        {"audio": Audio(), "text": Value("string"), "label": ClassLabel(names=["angry", "happy", "neutral", "sad"])}
    )
    return Dataset.from_generator(
        _length_matched_rows,
        features=features,
        cache_dir=str(settings.cache_dir / "length_matched"),
        gen_kwargs={  # tuples: `datasets` would read lists as shards
            "durations": tuple(round(float(d), 4) for d in durations),
            "texts": tuple(texts),
            "sampling_rate": sampling_rate,
            "seed": seed,
        },
    )


@contextlib.contextmanager
def datasets_caching_disabled():
    """`datasets` recomputes `map` results instead of reusing earlier runs' cache files (to time the first run)."""
    was_enabled = datasets.is_caching_enabled()
    datasets.disable_caching()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_caching()
