import shutil

import numpy as np
import pytest
from datasets import DatasetDict

from hub_datasets import iemocap_loso_fold, load_iemocap


SESSION_SPLITS = [f"session{session}" for session in range(1, 6)]


def test_4class_rows_labels_and_parsing(iemocap_dir, tmp_path, wav_io):
    _, read_wav = wav_io
    iemocap = load_iemocap(iemocap_dir, "4class", cache_dir=tmp_path / "cache")

    assert list(iemocap) == SESSION_SPLITS
    # ang, hap, exc, neu, sad of two dialogs per session; fru, xxx, oth are left out.
    assert [iemocap[split].num_rows for split in SESSION_SPLITS] == [10] * 5
    label = iemocap["session1"].features["label"]
    assert label.names == ["angry", "happy", "neutral", "sad"]
    counts = {name: 0 for name in label.names}
    for split in SESSION_SPLITS:
        for value in iemocap[split]["label"]:
            counts[label.int2str(value)] += 1
    assert counts == {"angry": 10, "happy": 20, "neutral": 10, "sad": 10}

    rows = {row["id"]: row for row in iemocap["session2"]}
    excited = rows["Ses02M_script01_1_F002"]
    assert label.int2str(excited["label"]) == "happy" and excited["category"] == "exc"
    assert excited["session"] == 2 and excited["speaker"] == "Ses02F" and excited["gender"] == 0
    assert excited["dialog"] == "Ses02M_script01_1" and excited["is_improvised"] is False
    assert excited["text"] == "Words of Ses02M_script01_1_F002."
    assert excited["valence"] == 2.0 and excited["activation"] == 2.5 and excited["dominance"] == 3.0
    assert (excited["start"], excited["end"]) == (3.25, 4.0)
    neutral = rows["Ses02F_impro01_M003"]
    assert neutral["speaker"] == "Ses02M" and neutral["gender"] == 1 and neutral["is_improvised"] is True

    audio = excited["audio"]
    source = read_wav(iemocap_dir / "Session2/sentences/wav/Ses02M_script01_1/Ses02M_script01_1_F002.wav")
    assert audio["sampling_rate"] == 16000
    np.testing.assert_array_equal(audio["array"], source / 32768)
    assert "session1: 10 utterances" in iemocap["session1"].info.description
    assert "nothing skipped" in iemocap["session1"].info.description


def test_all_config_keeps_every_category(iemocap_dir, tmp_path):
    iemocap = load_iemocap(iemocap_dir, "all", cache_dir=tmp_path / "cache")

    assert [iemocap[split].num_rows for split in SESSION_SPLITS] == [16] * 5
    label = iemocap["session3"].features["label"]
    assert label.names[:4] == ["angry", "happy", "neutral", "sad"]
    by_category = {row["category"]: label.int2str(row["label"]) for row in iemocap["session3"]}
    assert by_category == {
        "ang": "angry",
        "hap": "happy",
        "exc": "excited",
        "neu": "neutral",
        "sad": "sad",
        "fru": "frustrated",
        "xxx": "no_agreement",
        "oth": "other",
    }


def test_streaming_reads_the_same_rows(iemocap_dir, tmp_path):
    streamed = load_iemocap(iemocap_dir, "4class", split="session4", streaming=True, cache_dir=tmp_path / "cache")
    prepared = load_iemocap(iemocap_dir, "4class", split="session4", cache_dir=tmp_path / "cache")

    assert [row["id"] for row in streamed] == prepared["id"]


@pytest.mark.parametrize("test_session, validation_session", [(1, 2), (5, 1), (3, 1)])
def test_loso_folds_are_speaker_and_dialog_disjoint(iemocap_dir, tmp_path, test_session, validation_session):
    iemocap = load_iemocap(iemocap_dir, "4class", cache_dir=tmp_path / "cache")
    explicit = validation_session if test_session == 3 else None

    fold = iemocap_loso_fold(iemocap, test_session, validation_session=explicit)

    assert list(fold) == ["train", "validation", "test"]
    assert set(fold["test"]["session"]) == {test_session}
    assert set(fold["validation"]["session"]) == {validation_session}
    assert set(fold["train"]["session"]) == set(range(1, 6)) - {test_session, validation_session}
    assert (fold["train"].num_rows, fold["validation"].num_rows, fold["test"].num_rows) == (30, 10, 10)
    assert set(fold["test"]["speaker"]) == {f"Ses{test_session:02d}F", f"Ses{test_session:02d}M"}
    for column in ("speaker", "dialog"):
        sides = [set(fold[split][column]) for split in fold]
        assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])


def test_loso_fold_raises_on_a_leaked_speaker(iemocap_dir, tmp_path):
    iemocap = load_iemocap(iemocap_dir, "4class", cache_dir=tmp_path / "cache")
    leaky = DatasetDict(iemocap)
    leaky["session1"] = iemocap["session1"].map(
        lambda row: {"speaker": "Ses02F" if row["speaker"] == "Ses01F" else row["speaker"]}
    )

    with pytest.raises(ValueError, match="Leak between splits 'train' and 'test'.*speaker.*Ses02F"):
        iemocap_loso_fold(leaky, test_session=2)
    with pytest.raises(ValueError, match="must differ"):
        iemocap_loso_fold(iemocap, test_session=2, validation_session=2)
    with pytest.raises(ValueError, match=r"test_session must be in 1 \.\.\. 5"):
        iemocap_loso_fold(iemocap, test_session=6)


def test_data_dir_errors_say_what_was_expected(iemocap_dir, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match="does not exist; expected the IEMOCAP_full_release folder"):
        load_iemocap(tmp_path / "nowhere", cache_dir=cache)
    with pytest.raises(FileNotFoundError, match=f"one level too high.*Pass data_dir={iemocap_dir}"):
        load_iemocap(iemocap_dir.parent, cache_dir=cache)
    with pytest.raises(FileNotFoundError, match=f"one level too low.*Pass data_dir={iemocap_dir}"):
        load_iemocap(iemocap_dir / "Session1", cache_dir=cache)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="not the IEMOCAP_full_release folder.*found nothing"):
        load_iemocap(empty, cache_dir=cache)

    shutil.rmtree(iemocap_dir / "Session3")
    with pytest.raises(FileNotFoundError, match=f"{iemocap_dir / 'Session3'} is missing"):
        load_iemocap(iemocap_dir, cache_dir=cache)


def test_missing_wav_is_skipped_and_reported_or_raises_when_strict(iemocap_dir, tmp_path):
    missing = iemocap_dir / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M001.wav"
    missing.unlink()

    iemocap = load_iemocap(iemocap_dir, cache_dir=tmp_path / "cache")

    assert iemocap["session1"].num_rows == 9
    description = iemocap["session1"].info.description
    assert "skipped (missing audio): 1" in description and str(missing) in description
    with pytest.raises(FileNotFoundError, match=f"missing WAV {missing}.*strict=True"):
        load_iemocap(iemocap_dir, strict=True, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda path: path.write_bytes(path.read_bytes()[:-100]), "is truncated: its header declares 1600 bytes"),
        (lambda path: path.write_bytes(b"not audio at all" * 10), "is not a WAV file"),
    ],
)
def test_truncated_or_corrupt_wav_is_reported(iemocap_dir, tmp_path, damage, message):
    damaged = iemocap_dir / "Session5/sentences/wav/Ses05F_impro01/Ses05F_impro01_F000.wav"
    damage(damaged)

    iemocap = load_iemocap(iemocap_dir, cache_dir=tmp_path / "cache")

    assert iemocap["session5"].num_rows == 9
    assert "skipped (corrupt audio): 1" in iemocap["session5"].info.description
    with pytest.raises(ValueError, match=f"{damaged} {message}"):
        load_iemocap(iemocap_dir, strict=True, cache_dir=tmp_path / "cache")


def test_unparsable_transcript_line_reports_file_and_line(iemocap_dir, tmp_path):
    transcript = iemocap_dir / "Session2/dialog/transcriptions/Ses02F_impro01.txt"
    lines = transcript.read_text().splitlines()
    assert lines[1].startswith("Ses02F_impro01_F000 [")
    lines[1] = lines[1].replace("]:", "]")  # no colon after the timestamp
    transcript.write_text("\n".join(lines) + "\n")

    iemocap = load_iemocap(iemocap_dir, cache_dir=tmp_path / "cache")

    assert iemocap["session2"].num_rows == 9
    description = iemocap["session2"].info.description
    assert f"{transcript}:2: cannot parse transcript" in description
    assert "no transcript line for Ses02F_impro01_F000" in description
    with pytest.raises(ValueError, match=f"{transcript}:2: cannot parse transcript"):
        load_iemocap(iemocap_dir, strict=True, cache_dir=tmp_path / "cache")


def test_unknown_category_raises_with_file_and_line(iemocap_dir, tmp_path):
    evaluation = iemocap_dir / "Session4/dialog/EmoEvaluation/Ses04M_script01_1.txt"
    evaluation.write_text(evaluation.read_text().replace("\tsad\t", "\tbored\t"))
    line_number = next(
        number for number, line in enumerate(evaluation.read_text().splitlines(), start=1) if "\tbored\t" in line
    )

    with pytest.raises(ValueError, match=f"{evaluation}:{line_number}: unknown category 'bored'"):
        load_iemocap(iemocap_dir, cache_dir=tmp_path / "cache")


def test_a_changed_corpus_is_prepared_again_instead_of_read_from_the_stale_cache(iemocap_dir, tmp_path):
    cache = tmp_path / "cache"
    before = load_iemocap(iemocap_dir, "4class", cache_dir=cache)["session1"]
    texts = dict(zip(before["id"], before["text"]))
    assert texts["Ses01F_impro01_F000"] == "Words of Ses01F_impro01_F000."
    assert load_iemocap(iemocap_dir, "4class", cache_dir=cache)["session1"].cache_files == before.cache_files

    transcript = iemocap_dir / "Session1" / "dialog" / "transcriptions" / "Ses01F_impro01.txt"
    transcript.write_text(transcript.read_text().replace("Words of Ses01F_impro01_F000.", "Corrected words."))
    after = load_iemocap(iemocap_dir, "4class", cache_dir=cache)["session1"]
    assert dict(zip(after["id"], after["text"]))["Ses01F_impro01_F000"] == "Corrected words."
    assert after.cache_files != before.cache_files
