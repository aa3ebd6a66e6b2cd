"""cmt-predict: manifests, directories and globs in; CSV / JSONL out; resuming; bad rows reported, never fatal."""

import csv
import json
import os
import subprocess
import sys
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
    columns = ["row", "audio", "path", "text", "text_source", "label", "score"] + [f"score_{e}" for e in EMOTIONS]
    assert list(records[0]) == columns + ["audio_only", "error"]
    assert [record["path"] for record in records] == [
        str((corpus.parent / audio).resolve()) for audio, _ in CORPUS_ROWS
    ]
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
    # a row cut short by an interruption is removed and classified again
    output.write_text(before[: before.rindex("audio/nan.wav") + 5])
    assert main(argv) == 1
    assert output.read_text() == before

    write_wav(corpus.parent / "audio" / "good3.wav", pcm(7000, 5))
    with open(corpus, "a", newline="") as file:
        csv.writer(file).writerow(["audio/good3.wav", TEXTS[1]])
    assert main(argv) == 0
    records = read_csv(output)
    assert len(records) == 7 and records[-1]["audio"] == "audio/good3.wav" and not records[-1]["error"]

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
    assert records[0]["error"] == (
        f"row 1: no transcript for audio file {str(recordings / 'b.wav')!r}: add one (the manifest's 'text' column, "
        "or a .txt file of the same name beside the audio), or pass --asr_model to transcribe it or "
        "--allow_audio_only to classify it from the audio alone."
    )
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
    assert (
        records[1]["error"].startswith("row 2: no transcript for audio file")
        and "--allow_audio_only" in records[1]["error"]
    )
    assert (
        records[2]["error"].startswith("row 3: audio file")
        and "2.0 s long, more than the 1.5 s limit" in records[2]["error"]
    )
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
    columns = ["row", "audio", "path", "text", "text_source", "score", "sentiment_class", "polarity", "audio_only"]
    columns += ["error"]
    assert list(record) == columns
    asr = pipeline("automatic-speech-recognition", model=str(asr_checkpoint), device="cpu")
    waveform = pcm(12000, 1).astype(np.float32) / 32768
    assert record["text"] == asr({"raw": waveform, "sampling_rate": 16000})["text"].strip()
    assert record["text"] and record["text_source"] == "asr" and record["audio_only"] is False
    classifier = pipeline(TASK, model=str(regressor), device="cpu")
    expected = classifier({"array": waveform, "sampling_rate": 16000}, text=record["text"])
    assert record["score"] == pytest.approx(expected["score"], abs=1e-6)
    assert record["sentiment_class"] == expected["sentiment_class"] and record["polarity"] == expected["polarity"]


# ---------------------------------------------------------------------------------------------------------------------
# Resuming, spellings of paths, outputs, manifests (issue 14)
# ---------------------------------------------------------------------------------------------------------------------


def write_manifest(path, rows, encoding="utf-8"):
    with open(path, "w", newline="", encoding=encoding) as file:
        csv.writer(file).writerows([("audio", "text"), *rows])
    return path


def jsonl_records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def wavs(tmp_path, write_wav):
    """Three utterances with transcripts beside them, in `tmp_path / "wavs"`."""
    folder = tmp_path / "wavs"
    folder.mkdir()
    for index in range(3):
        write_wav(folder / f"u{index}.wav", pcm(7000 + 500 * index, index))
        (folder / f"u{index}.txt").write_text(TEXTS[index % 2])
    return folder


def test_resume_removes_a_jsonl_line_cut_short(checkpoint, wavs, tmp_path):
    """A line cut short by a crash was kept and its row appended again: 241 rows for 240, one of them not JSON."""
    output = tmp_path / "out.jsonl"
    argv = [str(checkpoint), str(wavs), "-o", str(output), "--batch_size", "2"]
    assert main(argv) == 0
    complete = output.read_text()
    output.write_text(complete[: complete.rindex('"score_hap"')])  # the crash came while writing the last line
    assert main(argv) == 0
    assert output.read_text() == complete
    assert [record["row"] for record in jsonl_records(output)] == [1, 2, 3]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_resume_refuses_a_damaged_record_followed_by_others(checkpoint, wavs, tmp_path, suffix):
    output = tmp_path / f"out{suffix}"
    argv = [str(checkpoint), str(wavs), "-o", str(output)]
    assert main(argv) == 0
    lines = output.read_text().splitlines(keepends=True)
    damaged = lines[:-2] + [lines[-2][:20] + "\n", lines[-1]]
    output.write_text("".join(damaged))
    with pytest.raises(SystemExit, match="is damaged .* and records follow it: fix or remove it, or pass --overwrite"):
        main(argv)
    assert output.read_text() == "".join(damaged)


def test_one_file_through_two_spellings_is_one_row(checkpoint, wavs, tmp_path, capsys, monkeypatch):
    """The same file reached through two spellings of its path was classified twice."""
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "out.csv"
    assert main([str(checkpoint), "wavs/u0.wav", "./wavs/../wavs/u0.wav", "-o", str(output)]) == 0
    assert len(read_csv(output)) == 1
    summary = capsys.readouterr().out
    assert "2 rows: 1 classified, 0 failed, 0 already in" in summary
    assert "1 repeating an earlier row (same file and transcript) skipped" in summary
    (tmp_path / "link.wav").symlink_to(wavs / "u0.wav")
    (tmp_path / "link.txt").write_text(TEXTS[0])
    assert main([str(checkpoint), str(wavs / "u0.wav"), "link.wav", "wavs/u1.wav", "-o", str(output)]) == 0
    records = read_csv(output)
    assert [record["audio"] for record in records] == ["wavs/u0.wav", "wavs/u1.wav"]
    assert "3 rows: 1 classified, 0 failed, 2 already in" in capsys.readouterr().out

    # the same file with another transcript is another row
    manifest = tmp_path / "manifest.csv"
    write_manifest(manifest, [("wavs/u2.wav", TEXTS[0]), ("wavs/u2.wav", TEXTS[1]), ("./wavs/u2.wav", TEXTS[1])])
    assert main([str(checkpoint), str(manifest), "-o", str(output)]) == 0
    assert [record["text"] for record in read_csv(output)[2:]] == [TEXTS[0], TEXTS[1]]
    assert "1 repeating an earlier row (same file and transcript) skipped" in capsys.readouterr().out


@pytest.fixture
def no_model_loads(monkeypatch):
    """Makes loading a model fail the test: the checks under test must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr("modeling_cmt.predict.pipeline", refuse)


def test_an_output_that_is_an_input_is_refused(checkpoint, wavs, tmp_path, no_model_loads):
    """`cmt-predict manifest.csv --output manifest.csv --overwrite` deleted the manifest."""
    manifest = write_manifest(tmp_path / "manifest.csv", [("wavs/u0.wav", TEXTS[0])])
    content = manifest.read_text()
    for spelling in (manifest, tmp_path / "wavs" / ".." / "manifest.csv"):
        with pytest.raises(SystemExit, match=r"--output .*manifest.csv is the input .*manifest.csv: write the"):
            main([str(checkpoint), str(manifest), "-o", str(spelling), "--overwrite"])
    assert manifest.read_text() == content


def test_an_output_that_cannot_be_written_is_refused_before_the_model_loads(checkpoint, wavs, no_model_loads):
    with pytest.raises(
        SystemExit, match=r"cannot write --output .*u0.wav/predictions.csv: (File exists|Not a directory)\."
    ):
        main([str(checkpoint), str(wavs), "-o", str(wavs / "u0.wav" / "predictions.csv")])
    (wavs / "folder.csv").mkdir()
    with pytest.raises(SystemExit, match=r"--output .*folder.csv is a directory"):
        main([str(checkpoint), str(wavs / "u0.wav"), "-o", str(wavs / "folder.csv")])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused_before_the_model_loads(checkpoint, wavs, tmp_path, no_model_loads):
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    with pytest.raises(SystemExit, match=r"cannot write --output .*read_only/out.csv: Permission denied"):
        main([str(checkpoint), str(wavs), "-o", str(read_only / "out.csv")])


def test_an_output_in_a_missing_folder_is_created(checkpoint, wavs, tmp_path):
    output = tmp_path / "results" / "today" / "out.csv"
    assert main([str(checkpoint), str(wavs), "-o", str(output)]) == 0
    assert len(read_csv(output)) == 3


def test_excel_bom_and_latin1_manifests(checkpoint, wavs, tmp_path):
    bom = write_manifest(tmp_path / "excel.csv", [("wavs/u0.wav", TEXTS[0])], encoding="utf-8-sig")
    assert main([str(checkpoint), str(bom), "-o", str(tmp_path / "bom.csv")]) == 0
    assert read_csv(tmp_path / "bom.csv")[0]["text"] == TEXTS[0]

    latin1 = tmp_path / "latin1.csv"
    latin1.write_text("audio,text\nwavs/u0.wav,Un café crème.\n", encoding="latin-1")
    with pytest.raises(
        SystemExit, match=r"latin1.csv is not utf-8 text \(byte 0xe9 at offset 29\)\. Save it as UTF-8"
    ):
        main([str(checkpoint), str(latin1), "-o", str(tmp_path / "latin1_out.csv")])
    argv = [str(checkpoint), str(latin1), "-o", str(tmp_path / "latin1_out.csv"), "--manifest_encoding", "latin-1"]
    assert main(argv) == 0
    assert read_csv(tmp_path / "latin1_out.csv")[0]["text"] == "Un café crème."


def test_bad_files_in_a_manifest_are_named_rows(checkpoint, wavs, tmp_path, write_truncated_wav):
    write_truncated_wav(tmp_path / "truncated.wav", pcm(16000, 0), keep=0.25)
    manifest = tmp_path / "manifest.jsonl"
    rows = [{"audio": "wavs", "text": TEXTS[0]}, {"audio": "truncated.wav", "text": TEXTS[0]}, {"text": TEXTS[0]}]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "out.jsonl"
    assert main([str(checkpoint), str(manifest), "-o", str(output)]) == 1
    errors = [record["error"] for record in jsonl_records(output)]
    assert (
        errors[0] == f"row 1: audio file {str(wavs)!r} is a directory, not an audio file: pass the audio files in it."
    )
    assert errors[1].startswith(f"row 2: audio file {str(tmp_path / 'truncated.wav')!r} is truncated: its header")
    assert errors[2] == "row 3: the manifest's 'audio' column is empty."


def test_a_pickle_only_checkpoint_needs_allow_pickle(checkpoint, wavs, tmp_path, save_pickle_only):
    model = CMTForSequenceClassification.from_pretrained(checkpoint)
    pickled = save_pickle_only(model, tmp_path / "pickled", CMTProcessor.from_pretrained(checkpoint))
    output = tmp_path / "out.csv"
    with pytest.raises(
        SystemExit, match=r"cmt-predict: error: .*pickled' holds its weights only as a pickle .*--allow_pickle"
    ):
        main([str(pickled), str(wavs), "-o", str(output)])
    assert not output.exists()
    assert main([str(pickled), str(wavs), "-o", str(output), "--allow_pickle"]) == 0
    expected = read_csv(output)
    assert main([str(checkpoint), str(wavs), "-o", str(tmp_path / "safe.csv")]) == 0
    assert [row["score"] for row in read_csv(tmp_path / "safe.csv")] == [row["score"] for row in expected]


# --- many processes: `accelerate launch -m modeling_cmt.predict` ---------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def _launch_predict(arguments: list[str]) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file examples/accelerate_configs/cpu_ddp.yaml -m modeling_cmt.predict ...`: two
    processes on this GPU-less machine (gloo)."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("ACCELERATE_")}
    return subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         "examples/accelerate_configs/cpu_ddp.yaml", "-m", "modeling_cmt.predict", *map(str, arguments)],
        capture_output=True, text=True, env={**environment, "OMP_NUM_THREADS": "1"}, timeout=600, cwd=REPO,
    )  # fmt: skip


@pytest.fixture
def many_rows(tmp_path, write_wav):
    """A manifest of 11 rows (row 6 names a missing file) and its checkpoint-independent parts."""
    folder = tmp_path / "audio"
    folder.mkdir()
    rows = []
    for index in range(11):
        if index != 5:
            write_wav(folder / f"u{index}.wav", pcm(5000 + 700 * index, index))
        rows.append((f"audio/u{index}.wav", TEXTS[index % 2]))
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["audio", "text"])
        writer.writerows(rows)
    return manifest


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_two_processes_write_parts_merged_in_input_order_and_resume(checkpoint, many_rows, tmp_path, suffix):
    single, double = tmp_path / f"single{suffix}", tmp_path / f"double{suffix}"
    common = [checkpoint, many_rows, "--batch_size", "2", "--device", "cpu"]
    assert main([*map(str, common), "--output", str(single)]) == 1  # row 6 fails

    completed = _launch_predict([*common, "--output", double])
    assert completed.returncode != 0  # a row failed: exit status 1, as with one process
    assert "11 rows: 10 classified, 1 failed (rows 6; see the error column)" in completed.stdout
    assert "by 2 processes" in completed.stdout, completed.stderr[-3000:]
    assert not (tmp_path / f"double{suffix}.parts").exists()  # the parts were merged and removed

    def records(path):
        if suffix == ".csv":
            return read_csv(path)
        return [json.loads(line) for line in path.read_text().splitlines()]

    one, two = records(single), records(double)
    assert [int(record["row"]) for record in two] == list(range(1, 12))  # input order
    for a, b in zip(one, two):  # the same predictions as one process (other batches: scores to float noise)
        assert {key: value for key, value in a.items() if not key.startswith("score")} == {
            key: value for key, value in b.items() if not key.startswith("score")
        }
        for key in a:
            if key.startswith("score") and a[key] not in ("", None):
                assert float(b[key]) == pytest.approx(float(a[key]), abs=1e-5)

    # What a run killed mid-way leaves: the rows an earlier run merged, and each process's part file with its first
    # records, the last one cut short. The rerun (here by two processes again) neither loses nor repeats a row.
    finished = double.read_text()
    lines = finished.splitlines(keepends=True)
    header = lines[:1] if suffix == ".csv" else []
    body = lines[len(header) :]
    parts = tmp_path / f"double{suffix}.parts"
    parts.mkdir()
    double.write_text("".join(header + body[:2]))  # rows 1-2
    (parts / f"part-00000{suffix}").write_text("".join(header + body[2:4]) + body[4][:25])  # rows 3-4, 5 cut
    (parts / f"part-00001{suffix}").write_text("".join(header + body[7:9]))  # rows 8-9
    completed = _launch_predict([*common, "--output", double])
    assert "6 already in" in completed.stdout, completed.stdout + completed.stderr[-3000:]
    assert double.read_text() == finished
    assert not parts.exists()

    # a run killed after the merge, before removing the parts: the parts' rows are in the output already
    parts.mkdir()
    (parts / f"part-00001{suffix}").write_text("".join(header + body[7:9]))
    double.chmod(0o640)
    assert main([*map(str, common), "--output", str(double)]) == 0
    assert double.read_text() == finished and not parts.exists()
    assert double.stat().st_mode & 0o777 == 0o640  # the merged output keeps the file's permissions
