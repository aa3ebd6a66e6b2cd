import shutil

import datasets
import numpy as np
import pytest
from datasets import Audio

from hub_datasets import load_synthetic_emotion, synthetic_emotion_ceilings, synthetic_emotion_loso_fold
from hub_datasets import synthetic_emotion as synthetic
from hub_datasets.synthetic_emotion import NEGATIVE_WORDS, POSITIVE_WORDS


TINY = 40
SESSION_SPLITS = [f"session{session}" for session in range(1, 6)]


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic_cache")


@pytest.fixture(scope="module")
def tiny_corpus(tiny_cache):
    return load_synthetic_emotion(num_utterances=TINY, cache_dir=tiny_cache)


def audio_bytes(dataset_dict) -> list[bytes]:
    return [
        row["audio"]["bytes"]
        for split in dataset_dict.values()
        for row in split.cast_column("audio", Audio(decode=False))
    ]


def test_structure_and_audio(tiny_corpus):
    assert list(tiny_corpus) == SESSION_SPLITS
    assert [tiny_corpus[split].num_rows for split in SESSION_SPLITS] == [TINY // 5] * 5
    assert tiny_corpus["session1"].features["label"].names == ["angry", "happy", "neutral", "sad"]
    for session, split in enumerate(SESSION_SPLITS, start=1):
        assert set(tiny_corpus[split]["session"]) == {session}
        assert len(set(tiny_corpus[split]["speaker"])) == 2
    row = tiny_corpus["session2"][0]
    assert row["audio"]["sampling_rate"] == 16000
    array = row["audio"]["array"]
    assert array.dtype == np.float32 and 0.5 * 16000 < len(array) < 6 * 16000 and 0.01 < np.abs(array).max() <= 1
    assert row["text"] and row["speaker"] == "en+f3"


def test_labels_follow_the_generative_rule(tiny_corpus):
    label_names = tiny_corpus["session1"].features["label"].names
    rule = {(-1, 1): "angry", (1, 1): "happy", (1, 0): "neutral", (-1, 0): "sad"}
    polarity = {**{word: 1 for word in POSITIVE_WORDS}, **{word: -1 for word in NEGATIVE_WORDS}}
    item_types = set()
    for split in tiny_corpus.values():
        for row in split.remove_columns("audio"):
            item_types.add(row["item_type"])
            assert label_names[row["label"]] == rule[(row["valence"], row["arousal"])]
            tokens = [token.strip(".,") for token in row["text"].split()]
            sentiment_words = [(index, polarity[token]) for index, token in enumerate(tokens) if token in polarity]
            if row["item_type"] == "global":
                ((_, word_polarity),) = sentiment_words
                assert row["text_valence"] == row["valence"] == word_polarity * (-1 if row["negated"] else 1)
                assert ("not" in tokens) == row["negated"] and row["stressed_word_index"] == -1
            else:
                assert sorted(word_polarity for _, word_polarity in sentiment_words) == [-1, 1]
                assert row["text_valence"] == 0
                assert tokens[row["stressed_word_index"]] == row["stressed_word"]
                assert polarity[row["stressed_word"]] == row["valence"]
    assert item_types == {"global", "aligned"}


def test_same_seed_same_bytes_and_different_seed_different_bytes(tiny_corpus, tmp_path):
    again = load_synthetic_emotion(num_utterances=TINY, cache_dir=tmp_path / "again")
    other_seed = load_synthetic_emotion(num_utterances=TINY, seed=1, cache_dir=tmp_path / "other")

    assert audio_bytes(again) == audio_bytes(tiny_corpus)
    assert again["session3"]["text"] == tiny_corpus["session3"]["text"]
    assert set(audio_bytes(other_seed)).isdisjoint(audio_bytes(tiny_corpus))
    assert other_seed["session3"]["text"] != tiny_corpus["session3"]["text"]


def test_second_load_reads_the_cache(tiny_corpus, tiny_cache, monkeypatch):
    def no_rendering(*args):
        raise AssertionError("the cached corpus was rendered again")

    monkeypatch.setattr(synthetic, "_render", no_rendering)
    cached = load_synthetic_emotion(num_utterances=TINY, cache_dir=tiny_cache)

    assert cached["session1"]["id"] == tiny_corpus["session1"]["id"]
    assert "seed 0, 40 utterances" in cached["session1"].info.description


def test_expected_ceilings_by_construction():
    ceilings = synthetic_emotion_ceilings()

    accuracy = {
        item_type: {view: metrics["accuracy"] for view, metrics in views.items()}
        for item_type, views in ceilings.items()
    }
    assert accuracy["global"] == pytest.approx(
        {"text": 0.5, "prosody": 0.4375, "text+prosody": 0.875, "text+prosody+alignment": 0.875}
    )
    assert accuracy["aligned"] == pytest.approx(
        {"text": 0.25, "prosody": 0.4375, "text+prosody": 0.4375, "text+prosody+alignment": 0.875}
    )
    assert accuracy["all"] == pytest.approx(
        {"text": 0.425, "prosody": 0.4375, "text+prosody": 0.74375, "text+prosody+alignment": 0.875}
    )
    sentiment = synthetic_emotion_ceilings(config="sentiment")
    assert sentiment["global"]["text"] == pytest.approx({"acc7": 1 / 3, "acc2": 1.0, "mae": 2 / 3})
    assert sentiment["aligned"]["text+prosody"]["acc2"] == pytest.approx(0.5)
    assert sentiment["aligned"]["text+prosody+alignment"]["acc7"] == pytest.approx(2.2 / 3)


def test_ceilings_of_the_sampled_variables_converge_to_the_expected_ones():
    items = synthetic.sample_items("emotion", 20000, seed=3, aligned_fraction=0.3)
    columns = {
        name: [item[name] for item in items]
        for name in ["item_type", "valence", "text_valence", "prosody_level", "arousal"]
    }
    columns["label"] = [synthetic.EMOTIONS.index(item["label"]) for item in items]

    measured, expected = synthetic_emotion_ceilings(columns), synthetic_emotion_ceilings()

    for item_type in expected:
        for view in expected[item_type]:
            assert measured[item_type][view]["accuracy"] == pytest.approx(
                expected[item_type][view]["accuracy"], abs=0.02
            )


def test_ceilings_on_a_built_corpus_need_both_modalities(tiny_corpus):
    ceilings = synthetic_emotion_ceilings(tiny_corpus)

    both = ceilings["all"]["text+prosody"]["accuracy"]
    assert ceilings["all"]["text"]["accuracy"] < both - 0.15
    assert ceilings["all"]["prosody"]["accuracy"] < both - 0.15
    assert ceilings["global"]["text"]["accuracy"] == 0.5
    assert ceilings["aligned"]["text"]["accuracy"] == 0.25
    aligned = ceilings["aligned"]
    assert aligned["text+prosody"]["accuracy"] < aligned["text+prosody+alignment"]["accuracy"] - 0.2


def test_loso_fold_is_speaker_disjoint(tiny_corpus):
    fold = synthetic_emotion_loso_fold(tiny_corpus, test_session=5)

    assert (fold["train"].num_rows, fold["validation"].num_rows, fold["test"].num_rows) == (24, 8, 8)
    assert set(fold["test"]["speaker"]) == {"en-gb-x-rp+f1", "en-us-nyc+m5"}
    assert set(fold["validation"]["session"]) == {1}
    assert not set(fold["train"]["speaker"]) & (set(fold["validation"]["speaker"]) | set(fold["test"]["speaker"]))


def test_sentiment_config(tmp_path):
    corpus = load_synthetic_emotion("sentiment", num_utterances=20, cache_dir=tmp_path)

    assert list(corpus) == ["train", "validation", "test"]
    assert (corpus["train"].num_rows, corpus["validation"].num_rows, corpus["test"].num_rows) == (12, 4, 4)
    for split, sessions in (("train", {1, 2, 3}), ("validation", {4}), ("test", {5})):
        assert set(corpus[split]["session"]) == sessions
    rows = corpus["train"].remove_columns("audio")
    assert all(row["sentiment"] == row["valence"] * row["intensity"] for row in rows)
    assert {row["intensity"] for row in rows} <= {1, 2, 3}
    assert set(synthetic_emotion_ceilings(corpus)["all"]["text"]) == {"acc7", "acc2", "mae"}


def test_missing_espeak_ng_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)

    with pytest.raises(FileNotFoundError, match="espeak-ng, which is not installed.*apt-get install espeak-ng"):
        load_synthetic_emotion(num_utterances=10, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="num_utterances must be at least 10"):
        load_synthetic_emotion(num_utterances=5, cache_dir=tmp_path)


@pytest.mark.slow
def test_default_corpus_with_no_arguments(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    corpus = load_synthetic_emotion()

    assert sum(split.num_rows for split in corpus.values()) == 2000
    ceilings = synthetic_emotion_ceilings(corpus)["all"]
    assert ceilings["text+prosody+alignment"]["accuracy"] == pytest.approx(0.875, abs=0.03)
    assert corpus["session1"][0]["audio"]["sampling_rate"] == 16000
