"""CMU-MOSEI builder: labelled segments cut out of the raw release's full-video audio, with transcript and labels.

CMU-MOSEI's raw release is read from a local copy:

```py
>>> from hub_datasets import load_cmu_mosei
>>> mosei = load_cmu_mosei("/data/CMU_MOSEI")  # train / validation / test from the standard folds
>>> mosei["train"][0]["sentiment"]
```

Each row is one segment of `CMU_MOSEI_Labels.csd`, joined to its line of `Transcript/Segmented/Combined` by its
interval and cut out of `Audio/Full/WAV_16000/<video_id>.wav` by seeking to it (whole videos are never loaded).
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import h5py
import numpy as np
from datasets import Audio, DownloadMode, Features, Value

from ._utils import (
    BuildReport,
    LoadedDataset,
    cut_wav,
    load_builder,
    locate_corpus_root,
    read_text_lines,
    read_wav_info,
    source_fingerprint,
)


_DESCRIPTION = """\
CMU-MOSEI (Multimodal Opinion Sentiment and Emotion Intensity): YouTube monologues segmented into sentences, each
labelled with a sentiment score in [-3, 3] and six emotion intensities in [0, 3]. Splits are the standard folds of
the CMU Multimodal SDK (by video; a segment inherits its video's fold).
"""

_CITATION = """\
@inproceedings{zadeh2018multimodal,
  title={Multimodal Language Analysis in the Wild: {CMU-MOSEI} Dataset and Interpretable Dynamic Fusion Graph},
  author={Zadeh, AmirAli Bagher and Liang, Paul Pu and Poria, Soujanya and Cambria, Erik and Morency, Louis-Philippe},
  booktitle={Proceedings of the 56th Annual Meeting of the Association for Computational Linguistics},
  pages={2236--2246},
  year={2018}
}
"""

_HOMEPAGE = "http://multicomp.cs.cmu.edu/resources/cmu-mosei-dataset/"

AUDIO_DIR = "Audio/Full/WAV_16000"
TRANSCRIPT_DIR = "Transcript/Segmented/Combined"
LABELS_FILE = "CMU_MOSEI_Labels.csd"
# Columns of the labels' `features`, in order.
EMOTIONS = ["happy", "sad", "anger", "surprise", "disgust", "fear"]
SPLITS = ["train", "validation", "test"]
STANDARD_FOLDS_FILE = Path(__file__).parent / "data" / "cmu_mosei_standard_folds.json"
# Labels may exceed their range by float noise only.
_RANGE_SLACK = 1e-4


@dataclass
class CmuMoseiConfig(datasets.BuilderConfig):
    """BuilderConfig for CMU-MOSEI.

    Args:
        folds_file (`str`, *optional*):
            JSON file mapping `train` / `validation` / `test` to video ids; defaults to the standard folds shipped
            with this package.
        interval_tolerance (`float`, defaults to 0.01):
            Largest difference in seconds, at either end, between a label's interval and its transcript line's.
        strict (`bool`, defaults to `False`):
            Raise on the first missing or corrupt WAV, unparsable transcript line or unmatched segment instead of
            skipping it (skips are logged and listed in `info.description`).
        source_fingerprint (`str`, *optional*):
            State of the release's files (`load_cmu_mosei` sets it from their sizes and modification times), part of
            the cache key: a changed release is prepared again.
    """

    folds_file: str | None = None
    interval_tolerance: float = 0.01
    strict: bool = False
    source_fingerprint: str | None = None


class CmuMosei(datasets.GeneratorBasedBuilder):
    """CMU-MOSEI labelled segments from a local copy of the raw release."""

    BUILDER_CONFIG_CLASS = CmuMoseiConfig
    BUILDER_CONFIGS = [CmuMoseiConfig(name="default", version=datasets.Version("1.0.0"))]

    def _info(self) -> datasets.DatasetInfo:
        features = Features(
            {
                "id": Value("string"),
                "video_id": Value("string"),
                "audio": Audio(sampling_rate=16000),
                "text": Value("string"),
                "sentiment": Value("float32"),
                **{emotion: Value("float32") for emotion in EMOTIONS},
                "start": Value("float64"),
                "end": Value("float64"),
            }
        )
        return datasets.DatasetInfo(
            description=_DESCRIPTION, features=features, homepage=_HOMEPAGE, citation=_CITATION
        )

    def _split_generators(self, dl_manager):
        root = locate_corpus_root(self.config.data_dir, [AUDIO_DIR, TRANSCRIPT_DIR, LABELS_FILE], "CMU-MOSEI")
        report = BuildReport("cmu_mosei", self.config.strict)
        labels = read_labels(root / LABELS_FILE)
        fold_of_video = _read_folds(Path(self.config.folds_file or STANDARD_FOLDS_FILE))

        videos = {split: [] for split in SPLITS}
        clipped = 0
        for video_id in sorted(labels):
            if video_id not in fold_of_video:
                continue
            video = _index_video(root, video_id, labels[video_id], self.config.interval_tolerance, report)
            if video is not None:
                clipped += video.pop("clipped")
                videos[fold_of_video[video_id]].append(video)

        for split, split_videos in videos.items():
            num_segments = sum(len(video["segments"]) for video in split_videos)
            report.note(f"{split}: {num_segments} segments from {len(split_videos)} videos")
        in_no_fold = sorted(set(labels) - set(fold_of_video))
        report.note(
            f"videos in the labels but in no fold (left out of every split): {len(in_no_fold)}"
            + (f" ({', '.join(in_no_fold)})" if in_no_fold else "")
        )
        missing_labels = sorted(set(fold_of_video) - set(labels))
        report.note(f"videos in the folds but not in the labels: {len(missing_labels)}")
        report.note(f"segments clipped to the end of their video's audio: {clipped}")
        report.check_not_empty({split: sum(len(video["segments"]) for video in videos[split]) for split in SPLITS})
        self.info.description = f"{_DESCRIPTION}\n{report.summary()}\n"
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"videos": split_videos})
            for split, split_videos in videos.items()
        ]

    def _generate_examples(self, videos):
        for video in videos:
            for (start_frame, end_frame), segment in video["segments"]:
                audio = {"bytes": cut_wav(video["wav"], start_frame, end_frame), "path": f"{segment['id']}.wav"}
                yield segment["id"], {**segment, "audio": audio}


def read_labels(labels_file: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Video id -> (`features` (n, 7), `intervals` (n, 2)) of a CMU-MOSEI labels computational sequence (`.csd`).

    Raises:
        `ValueError`: naming the file, if it is not HDF5, not a computational sequence, or has labels of the wrong
            shape or outside their range (sentiment in [-3, 3], emotions in [0, 3]).
    """
    if not h5py.is_hdf5(labels_file):
        raise ValueError(f"{labels_file} is not an HDF5 file, so not a computational sequence (.csd).")
    try:
        csd = h5py.File(labels_file, "r")
    except OSError as error:  # e.g. "truncated file: eof = ..., stored_eof = ...": an interrupted download or copy
        raise ValueError(
            f"{labels_file} cannot be read as HDF5 ({error}); it is probably truncated or corrupt: copy it again from "
            "the CMU-MOSEI release."
        ) from error
    with csd:
        roots = [name for name in csd if isinstance(csd[name], h5py.Group) and "data" in csd[name]]
        if not roots:
            raise ValueError(
                f"{labels_file} is HDF5 but not a computational sequence (.csd): expected a group such as "
                f"'All Labels' holding 'data/<video_id>/features' and '.../intervals', found {list(csd)}."
            )
        data = csd["All Labels" if "All Labels" in roots else roots[0]]["data"]
        labels = {}
        for video_id in data:
            video = data[video_id]
            if not isinstance(video, h5py.Group) or "features" not in video or "intervals" not in video:
                raise ValueError(f"{labels_file}: video {video_id} has no 'features' and 'intervals' datasets.")
            features, intervals = np.asarray(video["features"], np.float64), np.asarray(video["intervals"], np.float64)
            if features.ndim != 2 or features.shape[1] != 7 or intervals.shape != (len(features), 2):
                raise ValueError(
                    f"{labels_file}: video {video_id} has features of shape {features.shape} and intervals of shape "
                    f"{intervals.shape}; expected (n, 7) (sentiment and {', '.join(EMOTIONS)}) and (n, 2). "
                    f"Is this the labels file?"
                )
            out_of_range = ~np.isfinite(features).all(axis=1)
            out_of_range |= np.abs(features[:, 0]) > 3 + _RANGE_SLACK
            out_of_range |= ((features[:, 1:] < -_RANGE_SLACK) | (features[:, 1:] > 3 + _RANGE_SLACK)).any(axis=1)
            if out_of_range.any():
                row = int(np.flatnonzero(out_of_range)[0])
                raise ValueError(
                    f"{labels_file}: video {video_id}, segment {row} has labels {features[row].tolist()} outside the "
                    "known range (sentiment in [-3, 3], emotions in [0, 3])."
                )
            labels[video_id] = (features, intervals)
    return labels


def _read_folds(folds_file: Path) -> dict[str, str]:
    """Video id -> split name."""
    folds = json.loads(folds_file.read_text())
    missing = [split for split in SPLITS if split not in folds]
    if missing:
        raise ValueError(f"{folds_file} has no {missing} list of video ids.")
    return {video_id: split for split in SPLITS for video_id in folds[split]}


def _read_transcript(transcript_file: Path, video_id: str, report: BuildReport) -> list[dict]:
    """The segments (`index`, `start`, `end`, `text`) of `<video_id>___<index>___<start>___<end>___<text>` lines."""
    segments = []
    for line_number, line in enumerate(read_text_lines(transcript_file), start=1):
        if not line.strip():
            continue
        fields = line[len(video_id) + 3 :].split("___", 3) if line.startswith(f"{video_id}___") else []
        try:
            index, start, end, text = fields
            segments.append({"index": int(index), "start": float(start), "end": float(end), "text": text.strip()})
        except ValueError:
            report.skip("unparsable line", f"{transcript_file}:{line_number}: cannot parse transcript line {line!r}")
    return segments


def _index_video(root: Path, video_id: str, labels, tolerance: float, report: BuildReport) -> dict | None:
    """The labelled segments of one video as (audio frames, example) pairs, or `None` (reported) if unusable."""
    features, intervals = labels
    transcript_file = root / TRANSCRIPT_DIR / f"{video_id}.txt"
    wav_path = root / AUDIO_DIR / f"{video_id}.wav"
    for path, kind in ((transcript_file, "missing transcript"), (wav_path, "missing audio")):
        if not path.is_file():
            report.skip(
                kind,
                f"missing {path}: the {len(features)} labelled segments of {video_id} are skipped",
                FileNotFoundError,
            )
            return None
    try:
        wav = read_wav_info(wav_path)
    except ValueError as error:
        report.skip("corrupt audio", f"{error} The {len(features)} labelled segments of {video_id} are skipped.")
        return None
    transcript = _read_transcript(transcript_file, video_id, report)
    transcript_intervals = np.array([[line["start"], line["end"]] for line in transcript]).reshape(-1, 2)

    segments, taken, clipped = [], set(), 0
    for row, ((start, end), values) in enumerate(zip(intervals, features)):
        distance = np.abs(transcript_intervals - [start, end]).max(axis=1, initial=0.0)
        nearest = int(distance.argmin()) if len(distance) else -1
        where = f"{video_id} label {row} [{start:.4f}, {end:.4f}]"
        if nearest < 0 or distance[nearest] > tolerance:
            report.skip("unmatched segment", f"{where} matches no line of {transcript_file}")
            continue
        line = transcript[nearest]
        if line["index"] in taken:
            report.skip("unmatched segment", f"{where} matches segment {line['index']} again (duplicate label)")
            continue
        start_frame = max(0, round(start * wav.sampling_rate))
        end_frame = min(wav.num_frames, round(end * wav.sampling_rate))
        if end_frame <= start_frame:
            report.skip(
                "unmatched segment", f"{where} lies outside {wav_path} ({wav.num_frames / wav.sampling_rate:.2f} s)"
            )
            continue
        clipped += end_frame < round(end * wav.sampling_rate)
        taken.add(line["index"])
        segment = {
            "id": f"{video_id}[{line['index']}]",
            "video_id": video_id,
            "text": line["text"],
            "sentiment": values[0],
            **dict(zip(EMOTIONS, values[1:])),
            "start": float(start),
            "end": float(end),
        }
        segments.append(((start_frame, end_frame), segment))
    return {"video_id": video_id, "wav": wav, "segments": segments, "clipped": clipped}


def load_cmu_mosei(
    data_dir: str | os.PathLike,
    config: str = "default",
    *,
    strict: bool = False,
    cache_dir: str | None = None,
    split: str | None = None,
    streaming: bool = False,
    download_mode: DownloadMode | str | None = None,
    num_proc: int | None = None,
) -> LoadedDataset:
    """Load CMU-MOSEI from a local raw release as a `DatasetDict` with splits `train` / `validation` / `test`.

    Args:
        data_dir (`str` or `os.PathLike`):
            The release folder holding `Audio/Full/WAV_16000`, `Transcript/Segmented/Combined` and
            `CMU_MOSEI_Labels.csd`.
        config (`str`, defaults to `"default"`):
            The only configuration.
        strict (`bool`, defaults to `False`):
            Raise on the first missing or corrupt file, unparsable transcript line or unmatched segment instead of
            skipping it (skips are logged and listed in `info.description`).
        cache_dir (`str`, *optional*):
            Where the prepared Arrow files go; defaults to the `datasets` cache.
        split (`str`, *optional*):
            Return only this split.
        streaming (`bool`, defaults to `False`):
            Return an `IterableDatasetDict` cut from the corpus on the fly, without preparing Arrow files.
        download_mode (`DownloadMode` or `str`, *optional*):
            e.g. `"force_redownload"` to rebuild after the corpus changed.
        num_proc (`int`, *optional*):
            Processes used to prepare the Arrow files (videos are shared out between them).
    """
    fingerprint = source_fingerprint(data_dir) if Path(data_dir).expanduser().is_dir() else None
    builder = CmuMosei(
        config_name=config, data_dir=str(data_dir), strict=strict, cache_dir=cache_dir, source_fingerprint=fingerprint
    )
    return load_builder(builder, split=split, streaming=streaming, download_mode=download_mode, num_proc=num_proc)
