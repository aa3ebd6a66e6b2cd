import json

import numpy as np
import pytest
from datasets import Audio, Dataset, IterableDataset, IterableDatasetDict

from hub_datasets import load_audio_text_pairs


TRANSCRIPTS = ["first pair", "second pair", "third pair"]


@pytest.fixture
def pairs_dir(tmp_path, wav_io):
    """Three WAVs (one at 8 kHz) in sub-folders, described by metadata.jsonl."""
    write_wav, _ = wav_io
    folder = tmp_path / "pairs"
    rng = np.random.default_rng(2)
    rows = []
    for index, text in enumerate(TRANSCRIPTS):
        file_name = f"clips/{index}.wav"
        write_wav(folder / file_name, rng.integers(-9000, 9000, 1600), sampling_rate=8000 if index == 2 else 16000)
        rows.append({"file_name": file_name, "text": text})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def test_folder_with_jsonl_metadata(pairs_dir, wav_io, tmp_path):
    _, read_wav = wav_io
    pairs = load_audio_text_pairs(pairs_dir, cache_dir=tmp_path / "cache")

    assert list(pairs) == ["train"]
    assert pairs["train"].column_names == ["audio", "text"]
    assert pairs["train"]["text"] == TRANSCRIPTS
    first = pairs["train"][0]["audio"]
    np.testing.assert_array_equal(first["array"], read_wav(pairs_dir / "clips/0.wav") / 32768)
    resampled = pairs["train"][2]["audio"]
    assert resampled["sampling_rate"] == 16000 and len(resampled["array"]) == 3200


def test_folder_with_csv_metadata(pairs_dir, tmp_path):
    (pairs_dir / "metadata.jsonl").unlink()
    (pairs_dir / "metadata.csv").write_text(
        "file_name,sentence\n"
        + "".join(f'clips/{index}.wav,"{text}, said"\n' for index, text in enumerate(TRANSCRIPTS))
    )

    pairs = load_audio_text_pairs(pairs_dir, text_column="sentence", split="train", cache_dir=tmp_path / "cache")

    assert pairs["text"] == [f"{text}, said" for text in TRANSCRIPTS]


def test_streaming_folder_is_lazy_and_complete(pairs_dir, tmp_path):
    streamed = load_audio_text_pairs(pairs_dir, streaming=True, cache_dir=tmp_path / "cache")

    assert isinstance(streamed, IterableDatasetDict) and isinstance(streamed["train"], IterableDataset)
    rows = list(streamed["train"])
    assert [row["text"] for row in rows] == TRANSCRIPTS
    assert all(row["audio"]["sampling_rate"] == 16000 for row in rows)
    assert not list((tmp_path / "cache").rglob("*.arrow"))


def test_dataset_source_columns_are_normalised(pairs_dir):
    paths = [str(pairs_dir / f"clips/{index}.wav") for index in range(3)]
    source = Dataset.from_dict({"speech": paths, "sentence": TRANSCRIPTS, "speaker_id": [1, 2, 3]})
    source = source.cast_column("speech", Audio())

    pairs = load_audio_text_pairs(source, audio_column="speech", text_column="sentence")
    streamed = load_audio_text_pairs(source.to_iterable_dataset(), audio_column="speech", text_column="sentence")

    assert pairs.column_names == ["audio", "text"] and pairs["text"] == TRANSCRIPTS
    assert pairs.features["audio"] == Audio(sampling_rate=16000)
    assert pairs[2]["audio"]["sampling_rate"] == 16000 and len(pairs[2]["audio"]["array"]) == 3200
    assert isinstance(streamed, IterableDataset)
    assert [row["text"] for row in streamed] == TRANSCRIPTS
    with pytest.raises(ValueError, match=r"No column \['transcript'\].*\['speech', 'sentence', 'speaker_id'\]"):
        load_audio_text_pairs(source, audio_column="speech", text_column="transcript")


def test_missing_and_corrupt_files_are_skipped_or_raise_when_strict(pairs_dir, tmp_path):
    (pairs_dir / "clips/1.wav").unlink()
    corrupt = pairs_dir / "clips/2.wav"
    corrupt.write_bytes(corrupt.read_bytes()[:-10])
    with open(pairs_dir / "metadata.jsonl", "a") as metadata:
        metadata.write("{not json\n")

    pairs = load_audio_text_pairs(pairs_dir, split="train", cache_dir=tmp_path / "cache")

    assert pairs["text"] == ["first pair"]
    description = pairs.info.description
    assert "train: 1 pairs" in description
    assert "skipped (missing audio): 1" in description and "skipped (corrupt audio): 1" in description
    assert f"{pairs_dir / 'metadata.jsonl'}:4: not valid JSON" in description
    with pytest.raises(FileNotFoundError, match=f"metadata.jsonl:2: missing audio file {pairs_dir / 'clips/1.wav'}"):
        load_audio_text_pairs(pairs_dir, strict=True, cache_dir=tmp_path / "cache")


def test_folder_without_metadata_is_an_error(tmp_path, wav_io):
    write_wav, _ = wav_io
    write_wav(tmp_path / "audio_only" / "a.wav", np.zeros(160))

    with pytest.raises(ValueError, match="needs a metadata.jsonl or metadata.csv .*audio_only has neither"):
        load_audio_text_pairs(tmp_path / "audio_only", cache_dir=tmp_path / "cache")
