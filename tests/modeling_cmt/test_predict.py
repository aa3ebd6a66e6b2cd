"""cmt-predict: manifests, directories and globs in; CSV / JSONL out; resuming; bad rows reported, never fatal."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    Wav2Vec2FeatureExtractor,
    pipeline,
)

from modeling_cmt import CMTConfig, CMTForSequenceClassification, CMTProcessor
from modeling_cmt.predict import main


TASK = "audio-text-classification"
EMOTIONS = ["ang", "hap", "neu", "sad"]
TEXTS = ["I feel sad and tired, nothing went well today.", "What a lovely surprise, thank you so much."]


CORPUS_ROWS = [
    ("audio/good1.wav", TEXTS[0]),
    ("audio/missing.wav", TEXTS[0]),
    ("audio/broken.wav", TEXTS[0]),
    ("audio/short.wav", TEXTS[0]),
    ("audio/good2.wav", TEXTS[1]),
    ("audio/nan.wav", TEXTS[1]),
]


def pcm(length: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(length) * 3000).astype(np.int16)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("cmt-emotion")
    torch.manual_seed(0)
    config = CMTConfig.from_preset(
        "tiny", num_labels=4, id2label=dict(enumerate(EMOTIONS)), label2id={name: i for i, name in enumerate(EMOTIONS)}
    )
    CMTForSequenceClassification(config).save_pretrained(path)
    feature_extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, return_attention_mask=True)
    CMTProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def classifier(checkpoint):
    return pipeline(TASK, model=str(checkpoint), device="cpu")


@pytest.fixture
def corpus(tmp_path, write_wav):
    """A manifest with two good rows and four bad ones (missing, undecodable, too short, NaN)."""
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    write_wav(audio_dir / "good1.wav", pcm(9000, 1))
    write_wav(audio_dir / "good2.wav", pcm(6000, 2), rate=8000)
    (audio_dir / "broken.wav").write_text("not audio")
    write_wav(audio_dir / "short.wav", pcm(100, 3))
    corrupt = np.random.default_rng(4).standard_normal(8000).astype(np.float32) * 0.1
    corrupt[10] = np.nan
    write_wav(audio_dir / "nan.wav", corrupt)
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["audio", "text"])
        writer.writerows(CORPUS_ROWS)
    return manifest


def read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_manifest_to_csv_reports_bad_rows_and_resumes(checkpoint, classifier, corpus, tmp_path, capsys, write_wav):
    output = tmp_path / "predictions.csv"
    argv = [str(checkpoint), str(corpus), "--output", str(output), "--batch_size", "4", "--device", "cpu"]
    assert main(argv) == 1  # some rows failed
    records = read_csv(output)
    assert [record["row"] for record in records] == ["1", "2", "3", "4", "5", "6"]
    columns = ["row", "audio", "text", "text_source", "label", "score"] + [f"score_{e}" for e in EMOTIONS]
    assert list(records[0]) == columns + ["audio_only", "error"]
    errors = {int(record["row"]): record["error"] for record in records if record["error"]}
    assert sorted(errors) == [2, 3, 4, 6]
    assert errors[2].startswith("row 2: audio file") and "missing.wav" in errors[2] and "no such file" in errors[2]
    assert errors[3].startswith("row 3: Could not decode audio file")
    assert errors[4].startswith("row 4: audio file") and "too short" in errors[4]
    assert errors[6].startswith("row 6: audio file") and "NaN" in errors[6]
    summary = capsys.readouterr().out
    assert "6 rows: 2 classified, 4 failed (rows 2, 3, 4, 6; see the error column), 0 already in" in summary

    # the good rows hold what the pipeline gives for them
    for record, (audio, text) in (
        (records[0], ("audio/good1.wav", TEXTS[0])),
        (records[4], ("audio/good2.wav", TEXTS[1])),
    ):
        expected = classifier(str(corpus.parent / audio), text=text)
        assert record["audio"] == audio and record["text"] == text and record["text_source"] == "input"
        assert record["label"] == expected[0]["label"]
        for entry in expected:
            assert float(record[f"score_{entry['label']}"]) == pytest.approx(entry["score"], abs=1e-6)

    # a second run adds nothing; a new manifest row is the only one classified
    before = output.read_text()
    assert main(argv) == 0
    assert output.read_text() == before
    assert "6 rows: 0 classified, 0 failed, 6 already in" in capsys.readouterr().out
    # a row cut short by an interruption is classified again
    output.write_text(before[: before.rindex("audio/nan.wav") + 5])
    assert main(argv) == 1
    records = read_csv(output)
    assert [record["audio"] for record in records] == [audio for audio, _ in CORPUS_ROWS] + ["audio/nan.wav"]
    assert records[-1]["error"] == errors[6]

    write_wav(corpus.parent / "audio" / "good3.wav", pcm(7000, 5))
    with open(corpus, "a", newline="") as file:
        csv.writer(file).writerow(["audio/good3.wav", TEXTS[1]])
    assert main(argv) == 0
    records = read_csv(output)
    assert len(records) == 8 and records[-1]["audio"] == "audio/good3.wav" and not records[-1]["error"]

    # --overwrite starts afresh
    assert main(argv + ["--overwrite"]) == 1
    assert len(read_csv(output)) == 7


def test_directory_and_glob_to_jsonl_with_sidecar_transcripts(checkpoint, classifier, tmp_path, capsys, write_wav):
    recordings = tmp_path / "recordings"
    (recordings / "session1").mkdir(parents=True)
    write_wav(recordings / "session1" / "a.wav", pcm(8000, 1))
    (recordings / "session1" / "a.txt").write_text(TEXTS[0] + "\n")
    write_wav(recordings / "b.wav", pcm(7000, 2))  # no transcript beside it
    (recordings / "notes.md").write_text("not audio, not listed")
    output = tmp_path / "predictions.jsonl"

    argv = [str(checkpoint), str(recordings), "-o", str(output), "--device", "cpu"]
    assert main(argv) == 1
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [Path(record["audio"]).name for record in records] == ["b.wav", "a.wav"]
    assert "transcript of audio file" in records[0]["error"] and "is missing" in records[0]["error"]
    assert records[1]["error"] is None and records[1]["text"] == TEXTS[0]
    expected = classifier(str(recordings / "session1" / "a.wav"), text=TEXTS[0])
    assert records[1]["label"] == expected[0]["label"]
    assert records[1]["score"] == pytest.approx(expected[0]["score"], abs=1e-6)

    # resuming skips the failed row too; a new output with --allow_audio_only classifies it from audio alone
    assert main(argv) == 0
    assert len(output.read_text().splitlines()) == 2
    audio_only = tmp_path / "audio_only.jsonl"
    assert main([str(checkpoint), str(recordings / "*.wav"), "-o", str(audio_only), "--allow_audio_only"]) == 0
    (record,) = [json.loads(line) for line in audio_only.read_text().splitlines()]
    assert record["text"] == "" and record["audio_only"] is True and record["text_source"] == "none"
    assert "1 rows: 1 classified, 0 failed" in capsys.readouterr().out


def test_jsonl_manifest_with_bad_transcripts_and_long_audio(checkpoint, tmp_path, write_wav):
    write_wav(tmp_path / "a.wav", pcm(8000, 1))
    write_wav(tmp_path / "long.wav", pcm(32000, 2))
    manifest = tmp_path / "manifest.jsonl"
    rows = [
        {"audio": "a.wav", "text": 7},
        {"audio": "a.wav", "text": ""},
        {"audio": "long.wav", "text": TEXTS[0]},
        {"audio": "a.wav", "text": TEXTS[1]},
    ]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "out.csv"
    argv = [str(checkpoint), str(manifest), "-o", str(output), "--max_audio_seconds", "1.5", "--batch_size", "2"]
    assert main(argv) == 1
    records = read_csv(output)
    assert records[0]["error"] == "row 1: The transcript of audio file '{}' must be a string, got int.".format(
        tmp_path / "a.wav"
    )
    assert records[0]["text"] == "7"
    assert records[1]["error"].startswith("row 2: The transcript of audio file") and "is empty" in records[1]["error"]
    assert records[2]["error"].startswith("row 3: audio file") and "2.0 s long, more than" in records[2]["error"]
    assert not records[3]["error"]


def test_existing_output_of_another_model_is_never_overwritten(checkpoint, tmp_path, write_wav):
    write_wav(tmp_path / "a.wav", pcm(8000, 1))
    (tmp_path / "a.txt").write_text(TEXTS[0])
    output = tmp_path / "out.csv"
    output.write_text("id,prediction\n1,happy\n")
    with pytest.raises(SystemExit, match="has columns \\['id', 'prediction'\\], but this model writes"):
        main([str(checkpoint), str(tmp_path / "a.wav"), "-o", str(output)])
    assert output.read_text() == "id,prediction\n1,happy\n"
    with pytest.raises(SystemExit):
        main([str(checkpoint), str(tmp_path / "a.wav"), "-o", str(tmp_path / "out.parquet")])
    with pytest.raises(SystemExit, match="matches no file"):
        main([str(checkpoint), str(tmp_path / "*.flac"), "-o", str(output)])


def test_console_script(capsys):
    setup = (Path(__file__).resolve().parents[2] / "setup.py").read_text()
    assert '"cmt-predict = modeling_cmt.predict:main"' in setup
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--batch_size" in capsys.readouterr().out


def test_regression_checkpoint_with_asr_transcripts(tmp_path, tokenizer, write_wav, asr_checkpoint):
    regressor = tmp_path / "cmt-sentiment"
    torch.manual_seed(0)
    CMTForSequenceClassification(CMTConfig.from_preset("tiny", num_labels=1)).save_pretrained(regressor)
    feature_extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, return_attention_mask=True)
    CMTProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(regressor)

    write_wav(tmp_path / "a.wav", pcm(12000, 1))
    output = tmp_path / "sentiment.jsonl"
    assert main([str(regressor), str(tmp_path / "a.wav"), "-o", str(output), "--asr_model", str(asr_checkpoint)]) == 0
    (record,) = [json.loads(line) for line in output.read_text().splitlines()]
    columns = ["row", "audio", "text", "text_source", "score", "sentiment_class", "polarity", "audio_only", "error"]
    assert list(record) == columns
    asr = pipeline("automatic-speech-recognition", model=str(asr_checkpoint), device="cpu")
    waveform = pcm(12000, 1).astype(np.float32) / 32768
    assert record["text"] == asr({"raw": waveform, "sampling_rate": 16000})["text"].strip()
    assert record["text"] and record["text_source"] == "asr" and record["audio_only"] is False
    classifier = pipeline(TASK, model=str(regressor), device="cpu")
    expected = classifier({"array": waveform, "sampling_rate": 16000}, text=record["text"])
    assert record["score"] == pytest.approx(expected["score"], abs=1e-6)
    assert record["sentiment_class"] == expected["sentiment_class"] and record["polarity"] == expected["polarity"]
