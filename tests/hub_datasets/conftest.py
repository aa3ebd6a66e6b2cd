"""Fixture corpora written by the tests themselves, with exactly the raw layouts of IEMOCAP and CMU-MOSEI."""

import json
import wave
from pathlib import Path

import datasets
import h5py
import numpy as np
import pytest

from hub_datasets.cmu_mosei import STANDARD_FOLDS_FILE


SAMPLING_RATE = 16000
# One utterance per category in every dialog; the speaker alternates F, M, F, ...
IEMOCAP_CATEGORIES = ["ang", "hap", "exc", "neu", "sad", "fru", "xxx", "oth"]


@pytest.fixture(autouse=True)
def isolated_datasets_cache(tmp_path, monkeypatch):
    """Anything `datasets` caches without an explicit `cache_dir` goes to a temporary folder, never the user's."""
    cache = tmp_path / "hf_datasets_cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", cache / "downloads")
    monkeypatch.setattr(datasets.config, "EXTRACTED_DATASETS_PATH", cache / "downloads" / "extracted")


def write_wav(path: Path, samples: np.ndarray, sampling_rate: int = SAMPLING_RATE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(sampling_rate)
        file.writeframes(samples.astype("<i2").tobytes())


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as file:
        return np.frombuffer(file.readframes(file.getnframes()), dtype="<i2")


def write_iemocap(root: Path) -> Path:
    """A 5-session `IEMOCAP_full_release` with an improvised and a scripted dialog of 8 utterances per session."""
    release = root / "IEMOCAP_full_release"
    rng = np.random.default_rng(0)
    for session in range(1, 6):
        session_dir = release / f"Session{session}"
        for dialog in (f"Ses{session:02d}F_impro01", f"Ses{session:02d}M_script01_1"):
            evaluation = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            transcript = [f"{dialog}_MXX [000.0000-000.2000]: (crosstalk, not an utterance)"]
            for number, category in enumerate(IEMOCAP_CATEGORIES):
                utterance = f"{dialog}_{'FM'[number % 2]}{number:03d}"
                start, end = 1.5 * number + 0.25, 1.5 * number + 1.0
                evaluation += [
                    f"[{start:.4f} - {end:.4f}]\t{utterance}\t{category}\t[{1 + number / 2:.4f}, 2.5000, 3.0000]",
                    "C-E2:\tNeutral;\t()",
                    "A-E3:\tval 3; act 2; dom  2;\t()",
                    "",
                ]
                transcript.append(f"{utterance} [{start:08.4f}-{end:08.4f}]: Words of {utterance}.")
                samples = rng.integers(-20000, 20000, size=800 + 40 * number)
                write_wav(session_dir / "sentences" / "wav" / dialog / f"{utterance}.wav", samples)
            transcript.append("M: [BREATHING]")
            for folder, lines in (("EmoEvaluation", evaluation), ("transcriptions", transcript)):
                path = session_dir / "dialog" / folder / f"{dialog}.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("\n".join(lines) + "\n")
    return release


def mosei_videos() -> dict[str, str]:
    """Video id -> split of the fixture: two training videos, one each for validation and test, one in no fold."""
    folds = json.loads(STANDARD_FOLDS_FILE.read_text())
    return {
        folds["train"][0]: "train",
        folds["train"][1]: "train",
        folds["validation"][0]: "validation",
        folds["test"][0]: "test",
        "zzNoFoldVideo": None,
    }


# (segment index, start, end) of each video's transcript; 3 s of audio per video.
MOSEI_SEGMENTS = [(0, 0.0, 0.8123), (1, 0.8123, 1.7301), (2, 1.7301, 2.99995)]
MOSEI_SECONDS = 3.0


def write_mosei(root: Path) -> Path:
    """A raw CMU-MOSEI release: full-video WAVs, segmented transcripts and a labels `.csd` (HDF5).

    Every video has three transcript lines; the labels cover all three except segment 1 of the second video (a
    transcript line without label). Label intervals carry float noise (1e-7 s).
    """
    release = root / "CMU_MOSEI"
    rng = np.random.default_rng(1)
    transcript_dir = release / "Transcript" / "Segmented" / "Combined"
    transcript_dir.mkdir(parents=True)
    with h5py.File(release / "CMU_MOSEI_Labels.csd", "w") as csd:
        data = csd.create_group("All Labels").create_group("data")
        csd["All Labels"].create_group("metadata")
        for position, video_id in enumerate(mosei_videos()):
            samples = rng.integers(-20000, 20000, size=int(MOSEI_SECONDS * SAMPLING_RATE))
            write_wav(release / "Audio" / "Full" / "WAV_16000" / f"{video_id}.wav", samples)
            lines = [
                f"{video_id}___{index}___{start}___{end}___segment {index} of {video_id}"
                for index, start, end in MOSEI_SEGMENTS
            ]
            (transcript_dir / f"{video_id}.txt").write_text("\n".join(lines) + "\n")
            labelled = [segment for segment in MOSEI_SEGMENTS if not (position == 1 and segment[0] == 1)]
            intervals = np.array([[start + 1e-7, end - 1e-7] for _, start, end in labelled])
            features = np.column_stack([rng.uniform(-3, 3, len(labelled)), rng.uniform(0, 3, (len(labelled), 6))])
            group = data.create_group(video_id)
            group["features"] = features
            group["intervals"] = intervals
    return release


@pytest.fixture
def iemocap_dir(tmp_path) -> Path:
    return write_iemocap(tmp_path / "corpora")


@pytest.fixture
def mosei_dir(tmp_path) -> Path:
    return write_mosei(tmp_path / "corpora")


# Test modules are imported with --import-mode=importlib (no relative imports), so helpers come as fixtures.
@pytest.fixture
def wav_io():
    return write_wav, read_wav


@pytest.fixture
def mosei_layout():
    return mosei_videos(), MOSEI_SEGMENTS, MOSEI_SECONDS
