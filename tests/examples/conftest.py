"""Fixtures for the example scripts: a loader that runs a script's `main(argv)`, the trainers a run builds, a tiny
synthetic corpus and a toy dataset."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from datasets import Audio, ClassLabel, Dataset, DatasetDict, Features, Value

from cmt_training.trainer import CMTTrainer


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SYNTHETIC_SIZE = 80


def load_script(name: str):
    """`examples/<name>.py` as a module (the scripts are files, not an installed package)."""
    spec = importlib.util.spec_from_file_location(f"cmt_examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory):
    """A tiny synthetic corpus built once for the session (espeak-ng), in a private cache folder."""
    import hub_datasets

    cache = tmp_path_factory.mktemp("synthetic_cache")
    hub_datasets.load_synthetic_emotion("emotion", num_utterances=SYNTHETIC_SIZE, cache_dir=str(cache))
    return cache


@pytest.fixture(scope="session")
def word_dataset(tmp_path_factory):
    """A known-answer task: the label is the sentiment word of the transcript (the audio is noise)."""
    generator = np.random.default_rng(0)
    positive, negative = ["good", "great", "lovely"], ["bad", "awful", "poor"]
    nouns = ["day", "film", "meal", "trip", "song"]

    def split(size):
        rows = {"audio": [], "text": [], "label": []}
        for _ in range(size):
            label = int(generator.integers(2))
            word = generator.choice(positive if label else negative)
            rows["text"].append(f"The {generator.choice(nouns)} was {word}.")
            rows["label"].append(label)
            length = int(generator.integers(4000, 8000))
            rows["audio"].append(
                {"array": generator.standard_normal(length).astype(np.float32) * 0.1, "sampling_rate": 16000}
            )
        features = Features(
            {
                "audio": Audio(sampling_rate=16000),
                "text": Value("string"),
                "label": ClassLabel(names=["negative", "positive"]),
            }
        )
        return Dataset.from_dict(rows, features=features)

    path = tmp_path_factory.mktemp("word_dataset") / "data"
    DatasetDict({"train": split(96), "validation": split(32), "test": split(40)}).save_to_disk(str(path))
    return path


@pytest.fixture(scope="session")
def example_script():
    """`example_script(name)`: `examples/<name>.py` as a module."""
    return load_script


@pytest.fixture(scope="session")
def run_script():
    """Runs an example script's `main(argv)` in this process with the given command-line arguments."""

    def run(name: str, *args):
        return load_script(name).main([str(argument) for argument in args])

    return run


@pytest.fixture
def trainers(monkeypatch):
    """Every CMTTrainer the script builds, to look at its datasets and collator after the run."""
    built = []
    original = CMTTrainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(CMTTrainer, "__init__", init)
    return built
