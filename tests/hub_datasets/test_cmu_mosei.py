import h5py
import numpy as np
import pytest

from hub_datasets import load_cmu_mosei
from hub_datasets.cmu_mosei import EMOTIONS


def test_segments_are_cut_sample_exact_and_assigned_to_folds(mosei_dir, mosei_layout, wav_io, tmp_path):
    videos, segments, _ = mosei_layout
    _, read_wav = wav_io
    mosei = load_cmu_mosei(mosei_dir, cache_dir=tmp_path / "cache")

    assert list(mosei) == ["train", "validation", "test"]
    # Two training videos, one of them with a transcript line that has no label.
    assert (mosei["train"].num_rows, mosei["validation"].num_rows, mosei["test"].num_rows) == (5, 3, 3)
    for split in mosei:
        assert {videos[video_id] for video_id in mosei[split]["video_id"]} == {split}

    with h5py.File(mosei_dir / "CMU_MOSEI_Labels.csd", "r") as csd:
        labels = {video_id: np.asarray(csd["All Labels/data"][video_id]["features"]) for video_id in videos}
    for split in mosei:
        for row in mosei[split]:
            video_id, index = row["video_id"], int(row["id"].split("[")[1].rstrip("]"))
            assert row["id"] == f"{video_id}[{index}]"
            assert row["text"] == f"segment {index} of {video_id}"
            _, start, end = segments[index]
            assert row["start"] == pytest.approx(start, abs=1e-6) and row["end"] == pytest.approx(end, abs=1e-6)
            source = read_wav(mosei_dir / "Audio/Full/WAV_16000" / f"{video_id}.wav")
            expected = source[round(row["start"] * 16000) : round(row["end"] * 16000)] / 32768
            assert row["audio"]["sampling_rate"] == 16000
            np.testing.assert_array_equal(row["audio"]["array"], expected)
            labelled = [0, 2] if video_id == list(videos)[1] else [0, 1, 2]
            label_row = labels[video_id][labelled.index(index)]
            values = [row["sentiment"], *(row[emotion] for emotion in EMOTIONS)]
            np.testing.assert_allclose(values, label_row, rtol=1e-6)

    description = mosei["train"].info.description
    assert "train: 5 segments from 2 videos" in description
    assert "test: 3 segments from 1 videos" in description
    assert "videos in the labels but in no fold (left out of every split): 1 (zzNoFoldVideo)" in description
    assert "nothing skipped" in description


def test_segment_past_the_audio_end_is_clipped(mosei_dir, mosei_layout, wav_io, tmp_path):
    videos, _, _ = mosei_layout
    write_wav, read_wav = wav_io
    test_video = next(video_id for video_id, split in videos.items() if split == "test")
    wav_path = mosei_dir / "Audio/Full/WAV_16000" / f"{test_video}.wav"
    write_wav(wav_path, read_wav(wav_path)[: int(2.5 * 16000)])  # the last segment ends at 3 s

    mosei = load_cmu_mosei(mosei_dir, split="test", cache_dir=tmp_path / "cache")

    last = mosei.filter(lambda row: row["id"].endswith("[2]"))[0]
    assert len(last["audio"]["array"]) == int(2.5 * 16000) - round(last["start"] * 16000)
    assert "segments clipped to the end of their video's audio: 1" in mosei.info.description


def test_unmatched_label_is_reported_or_raises_when_strict(mosei_dir, mosei_layout, tmp_path):
    videos, _, _ = mosei_layout
    validation_video = next(video_id for video_id, split in videos.items() if split == "validation")
    with h5py.File(mosei_dir / "CMU_MOSEI_Labels.csd", "r+") as csd:
        video = csd["All Labels/data"][validation_video]
        features, intervals = np.asarray(video["features"]), np.asarray(video["intervals"])
        del video["features"], video["intervals"]
        video["features"] = np.vstack([features, features[:1]])
        video["intervals"] = np.vstack([intervals, [[5.0, 6.0]]])

    mosei = load_cmu_mosei(mosei_dir, cache_dir=tmp_path / "cache")

    assert mosei["validation"].num_rows == 3
    description = mosei["validation"].info.description
    assert "skipped (unmatched segment): 1" in description
    assert f"{validation_video} label 3 [5.0000, 6.0000] matches no line" in description
    with pytest.raises(ValueError, match=f"{validation_video} label 3 .* matches no line"):
        load_cmu_mosei(mosei_dir, strict=True, cache_dir=tmp_path / "cache")


def test_unparsable_transcript_line_reports_file_and_line(mosei_dir, mosei_layout, tmp_path):
    videos, _, _ = mosei_layout
    transcript = mosei_dir / "Transcript/Segmented/Combined" / f"{next(iter(videos))}.txt"
    transcript.write_text(transcript.read_text() + "this line is not a segment\n")

    mosei = load_cmu_mosei(mosei_dir, cache_dir=tmp_path / "cache")

    assert mosei["train"].num_rows == 5
    assert f"{transcript}:4: cannot parse transcript line" in mosei["train"].info.description
    with pytest.raises(ValueError, match=f"{transcript}:4: cannot parse"):
        load_cmu_mosei(mosei_dir, strict=True, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_missing_or_truncated_video_wav_is_reported(mosei_dir, mosei_layout, tmp_path, damage):
    videos, _, _ = mosei_layout
    train_video = next(iter(videos))
    wav_path = mosei_dir / "Audio/Full/WAV_16000" / f"{train_video}.wav"
    if damage == "missing":
        wav_path.unlink()
    else:
        wav_path.write_bytes(wav_path.read_bytes()[:1000])

    mosei = load_cmu_mosei(mosei_dir, cache_dir=tmp_path / "cache")

    assert mosei["train"].num_rows == 2
    assert f"3 labelled segments of {train_video} are skipped" in mosei["train"].info.description
    error = FileNotFoundError if damage == "missing" else ValueError
    with pytest.raises(error, match=str(wav_path)):
        load_cmu_mosei(mosei_dir, strict=True, cache_dir=tmp_path / "cache")


def test_empty_split_raises_with_the_build_report(mosei_dir, mosei_layout, tmp_path):
    videos, _, _ = mosei_layout
    test_video = next(video_id for video_id, split in videos.items() if split == "test")
    (mosei_dir / "Transcript/Segmented/Combined" / f"{test_video}.txt").unlink()

    with pytest.raises(ValueError, match=f"(?s)No usable examples for split 'test'.*{test_video}.txt"):
        load_cmu_mosei(mosei_dir, cache_dir=tmp_path / "cache")


def test_labels_file_that_is_not_a_csd(mosei_dir, tmp_path):
    labels = mosei_dir / "CMU_MOSEI_Labels.csd"
    labels.write_text("sentiment,happy\n1.0,0.5\n")
    with pytest.raises(ValueError, match=f"{labels} is not an HDF5 file"):
        load_cmu_mosei(mosei_dir, cache_dir=tmp_path / "cache")

    labels.unlink()
    with h5py.File(labels, "w") as not_a_csd:
        not_a_csd["features"] = np.zeros((3, 7))
    with pytest.raises(ValueError, match="HDF5 but not a computational sequence.*found \\['features'\\]"):
        load_cmu_mosei(mosei_dir, cache_dir=tmp_path / "cache")

    labels.unlink()
    with h5py.File(labels, "w") as wrong_width:
        wrong_width.create_group("COVAREP/data/abc")["features"] = np.zeros((2, 74))
        wrong_width["COVAREP/data/abc"]["intervals"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"abc has features of shape \(2, 74\).*Is this the labels file"):
        load_cmu_mosei(mosei_dir, cache_dir=tmp_path / "cache")


def test_a_truncated_labels_file_is_named(mosei_dir, tmp_path):
    labels = mosei_dir / "CMU_MOSEI_Labels.csd"
    labels.write_bytes(labels.read_bytes()[: labels.stat().st_size // 2])  # an interrupted copy
    with pytest.raises(ValueError, match=f"{labels} cannot be read as HDF5.*truncated or corrupt"):
        load_cmu_mosei(mosei_dir, cache_dir=tmp_path / "cache")


def test_label_outside_the_known_range_raises(mosei_dir, mosei_layout, tmp_path):
    videos, _, _ = mosei_layout
    video_id = next(iter(videos))
    with h5py.File(mosei_dir / "CMU_MOSEI_Labels.csd", "r+") as csd:
        csd["All Labels/data"][video_id]["features"][1, 0] = 4.5

    with pytest.raises(ValueError, match=f"video {video_id}, segment 1 has labels \\[4.5, .* outside the known range"):
        load_cmu_mosei(mosei_dir, cache_dir=tmp_path / "cache")


def test_data_dir_errors_say_what_was_expected(mosei_dir, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match=f"one level too high.*Pass data_dir={mosei_dir}"):
        load_cmu_mosei(mosei_dir.parent, cache_dir=cache)
    with pytest.raises(FileNotFoundError, match=f"one level too low.*Pass data_dir={mosei_dir}"):
        load_cmu_mosei(mosei_dir / "Audio", cache_dir=cache)

    (mosei_dir / "CMU_MOSEI_Labels.csd").unlink()
    with pytest.raises(FileNotFoundError, match=f"{mosei_dir / 'CMU_MOSEI_Labels.csd'} is missing"):
        load_cmu_mosei(mosei_dir, cache_dir=cache)
