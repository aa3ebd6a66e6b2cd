"""examples/probe_aligned.py: the stressed-slot label it derives, and both probes end to end on tiny models."""

import json

import numpy as np
import pytest
from transformers import HubertConfig, HubertModel

import hub_datasets
from hub_datasets import synthetic_emotion
from modeling_cmt import CMTForSequenceClassification

from .conftest import SYNTHETIC_SIZE, load_script


probe = load_script("probe_aligned")


@pytest.mark.parametrize("template", synthetic_emotion.ALIGNED_TEMPLATES)
def test_every_aligned_template_puts_its_two_words_in_different_halves(template):
    # the probe's label (stressed word in the first / second half of the words) is the stressed slot for each template
    for stressed in (0, 1):
        words = ["FIRSTWORD*" if stressed == 0 else "FIRSTWORD", "SECONDWORD*" if stressed == 1 else "SECONDWORD"]
        text = template.format(noun="movie", other="music", first=words[0], second=words[1])
        index = next(i for i, token in enumerate(text.split()) if "*" in token)
        assert probe.stressed_slot({"stressed_word_index": index, "text": text}) == stressed, text


def test_stressed_slot_matches_the_corpus_rows(synthetic_cache):
    corpus = hub_datasets.load_synthetic_emotion(num_utterances=SYNTHETIC_SIZE, cache_dir=str(synthetic_cache))
    rows = [row for split in corpus.values() for row in split.remove_columns("audio") if row["item_type"] == "aligned"]
    assert len(rows) >= 10
    for row in rows:
        words = row["text"].split()
        assert row["stressed_word"] in words[row["stressed_word_index"]]
    assert 0 < np.mean([probe.stressed_slot(row) for row in rows]) < 1  # both slots occur


def test_stress_probe_and_fit_probe_run_and_write_json(synthetic_cache, tmp_path, tiny_config, processor):
    tower = tmp_path / "hubert"
    HubertModel(HubertConfig(**tiny_config().audio_config.to_dict())).save_pretrained(tower)
    stress = probe.main([
        "--audio_model_name_or_path", str(tower), "--synthetic_size", str(SYNTHETIC_SIZE),
        "--cache_dir", str(synthetic_cache), "--sessions", "1,2,3,4,5", "--output", str(tmp_path / "stress.json"),
    ])  # fmt: skip
    assert stress["items"] >= 10 and set(stress["accuracy_by_layer"]) == {"mean", "halves"}
    layers = tiny_config().audio_config.num_hidden_layers + 1
    assert all(
        len(values) == layers and all(0 <= v <= 1 for v in values) for values in stress["accuracy_by_layer"].values()
    )
    assert json.loads((tmp_path / "stress.json").read_text())["items"] == stress["items"]

    checkpoint = tmp_path / "cmt"
    CMTForSequenceClassification(tiny_config(text_config={"vocab_size": len(processor.tokenizer)})).save_pretrained(
        checkpoint
    )
    processor.save_pretrained(checkpoint)
    fit = probe.main([
        "--model_name_or_path", str(checkpoint), "--test_fold", "1", "--synthetic_size", str(SYNTHETIC_SIZE),
        "--cache_dir", str(synthetic_cache), "--output", str(tmp_path / "fit.json"),
    ])  # fmt: skip
    assert set(fit["train"]) == set(fit["test"]) == {"aligned", "global"}
    assert all(0 <= value <= 1 for split in ("train", "test") for value in fit[split].values())
    with pytest.raises(SystemExit, match="exists"):
        probe.main(
            ["--model_name_or_path", str(checkpoint), "--test_fold", "1", "--output", str(tmp_path / "fit.json")]
        )


def test_wrong_inputs_are_named(tmp_path, tiny_config, capsys):
    tower = tmp_path / "hubert"
    HubertModel(HubertConfig(**tiny_config().audio_config.to_dict())).save_pretrained(tower)
    output = ["--output", str(tmp_path / "out.json")]
    cases = [
        (["--audio_model_name_or_path", str(tmp_path / "missing")], "no config.json there"),
        (
            ["--model_name_or_path", str(tower), "--test_fold", "1"],
            "is a 'hubert' checkpoint; this probe needs a 'cmt'",
        ),
        (["--audio_model_name_or_path", str(tower), "--sessions", "1,9"], "--sessions must be"),
        (["--model_name_or_path", str(tower), "--test_fold", "7"], "invalid choice"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit):
            probe.main([*argv, *output])
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "out.json").exists()
