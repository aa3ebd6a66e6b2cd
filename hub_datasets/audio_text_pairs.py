"""Audio-transcript pairs for cross-modal pretraining, normalised to an `audio` column (16 kHz) and a `text` column.

Two sources:

- a folder of audio files with a `metadata.jsonl` or `metadata.csv` (columns `file_name`, relative to the folder,
  and `text`), read by the `AudioTextPairs` builder: the Arrow files store paths, so the audio is never copied, and
  `streaming=True` reads the folder lazily;
- any Hugging Face dataset with an audio column and a text column (a `Dataset` / `IterableDataset` object, or a name
  or path for `datasets.load_dataset`), whose columns are selected, renamed and cast lazily.

```py
>>> from hub_datasets import load_audio_text_pairs
>>> pairs = load_audio_text_pairs("/data/my_corpus")  # folder with metadata.jsonl
>>> librispeech = load_audio_text_pairs(
...     "openslr/librispeech_asr", split="train.clean.100", text_column="text", streaming=True
... )
```
"""

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets import (
    Audio,
    Dataset,
    DatasetDict,
    DownloadMode,
    Features,
    IterableDataset,
    IterableDatasetDict,
    Value,
)

from ._utils import BuildReport, LoadedDataset, load_builder, read_wav_info, source_fingerprint


_DESCRIPTION = """\
Unlabelled audio-transcript pairs for cross-modal pretraining: `audio` (16 kHz) and `text`.
"""

METADATA_FILES = ["metadata.jsonl", "metadata.csv"]


@dataclass
class AudioTextPairsConfig(datasets.BuilderConfig):
    """BuilderConfig for a folder of audio files described by a metadata file.

    Args:
        text_column (`str`, defaults to `"text"`):
            Column of the metadata file holding the transcript.
        strict (`bool`, defaults to `False`):
            Raise on the first missing, truncated or corrupt WAV file or metadata row without text, instead of
            skipping it (skips are logged and counted).
        source_fingerprint (`str`, *optional*):
            State of the folder's files (`load_audio_text_pairs` sets it from their sizes and modification times),
            part of the cache key: a changed folder is prepared again.
    """

    text_column: str = "text"
    strict: bool = False
    source_fingerprint: str | None = None


class AudioTextPairs(datasets.GeneratorBasedBuilder):
    """Audio-transcript pairs from a folder with a `metadata.jsonl` or `metadata.csv`."""

    BUILDER_CONFIG_CLASS = AudioTextPairsConfig
    BUILDER_CONFIGS = [AudioTextPairsConfig(name="default", version=datasets.Version("1.0.0"))]

    def _info(self) -> datasets.DatasetInfo:
        features = Features({"audio": Audio(sampling_rate=16000), "text": Value("string")})
        return datasets.DatasetInfo(description=_DESCRIPTION, features=features)

    def _split_generators(self, dl_manager):
        folder = _metadata_folder(self.config.data_dir)
        metadata_file = next(folder / name for name in METADATA_FILES if (folder / name).is_file())
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={"metadata_file": str(metadata_file)})]

    def _generate_examples(self, metadata_file):
        # Rows are checked as they stream past, so a corpus is never indexed in memory; the report therefore
        # reaches `info.description` only when the split is prepared in one process.
        metadata_file = Path(metadata_file)
        report = BuildReport("audio_text_pairs", self.config.strict)
        kept = 0
        for location, row in _read_metadata(metadata_file, report):
            text = row.get(self.config.text_column)
            if "file_name" not in row or text is None:
                report.skip(
                    "unparsable line", f"{location}: no 'file_name' or '{self.config.text_column}' in {sorted(row)}"
                )
                continue
            audio_path = metadata_file.parent / row["file_name"]
            if not audio_path.is_file():
                report.skip("missing audio", f"{location}: missing audio file {audio_path}", FileNotFoundError)
                continue
            if audio_path.suffix.lower() == ".wav":
                try:
                    read_wav_info(audio_path)
                except ValueError as error:
                    report.skip("corrupt audio", f"{location}: {error}")
                    continue
            kept += 1
            yield str(location), {"audio": str(audio_path), "text": str(text)}
        report.note(f"train: {kept} pairs")
        self.info.description = f"{_DESCRIPTION}\n{report.summary()}\n"


def _metadata_folder(data_dir: str | os.PathLike | None) -> Path:
    if data_dir is None:
        raise ValueError("data_dir is required: the folder holding metadata.jsonl or metadata.csv and the audio.")
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; expected a folder holding {' or '.join(METADATA_FILES)}.")
    if not any((folder / name).is_file() for name in METADATA_FILES):
        found = sorted(path.name for path in folder.iterdir())[:12]
        raise FileNotFoundError(f"No {' or '.join(METADATA_FILES)} in {folder} (found {found or 'nothing'}).")
    return folder


def _read_metadata(metadata_file: Path, report: BuildReport):
    """Yield (`file:line`, row dict) lazily from a JSON Lines or CSV metadata file, reporting lines that do not parse."""
    with open(metadata_file, encoding="utf-8", newline="") as file:
        if metadata_file.suffix == ".csv":
            reader = csv.DictReader(file)
            for row in reader:
                yield f"{metadata_file}:{reader.line_num}", row
            return
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            location = f"{metadata_file}:{line_number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                report.skip("unparsable line", f"{location}: not valid JSON ({error})")
                continue
            if not isinstance(row, dict):
                report.skip("unparsable line", f"{location}: expected a JSON object, got {line.strip()!r}")
                continue
            yield location, row


def normalize_audio_text_columns(dataset, audio_column: str = "audio", text_column: str = "text"):
    """Keep only `audio_column` and `text_column` of `dataset`, renamed `audio` and `text`, audio cast to 16 kHz.

    Works lazily on `Dataset`, `IterableDataset` and their dicts.

    Raises:
        `ValueError`: if a column is missing, naming the columns that exist.
    """
    column_names = dataset.column_names
    for names in column_names.values() if isinstance(column_names, dict) else [column_names]:
        missing = [column for column in (audio_column, text_column) if names is not None and column not in names]
        if missing:
            raise ValueError(f"No column {missing} in the dataset; its columns are {names}.")
    dataset = dataset.select_columns([audio_column, text_column])
    renames = {old: new for old, new in ((audio_column, "audio"), (text_column, "text")) if old != new}
    if renames:
        dataset = dataset.rename_columns(renames)
    return dataset.cast_column("audio", Audio(sampling_rate=16000))


def load_audio_text_pairs(
    source: str | os.PathLike | Dataset | DatasetDict | IterableDataset | IterableDatasetDict,
    *,
    audio_column: str = "audio",
    text_column: str = "text",
    strict: bool = False,
    cache_dir: str | None = None,
    split: str | None = None,
    streaming: bool = False,
    download_mode: DownloadMode | str | None = None,
    num_proc: int | None = None,
) -> LoadedDataset:
    """Load audio-transcript pairs with columns `audio` (16 kHz) and `text`.

    Args:
        source (`str`, `os.PathLike`, `Dataset`, `DatasetDict`, `IterableDataset` or `IterableDatasetDict`):
            A folder holding `metadata.jsonl` or `metadata.csv` (`file_name`, `text`) and the audio it lists; a
            dataset object; or anything else `datasets.load_dataset` accepts (a Hub name or a local dataset folder).
        audio_column (`str`, defaults to `"audio"`):
            Audio column of a dataset source.
        text_column (`str`, defaults to `"text"`):
            Transcript column of a dataset source, or of the metadata file.
        strict (`bool`, defaults to `False`):
            For a folder: raise on the first missing or corrupt audio file instead of skipping it.
        cache_dir (`str`, *optional*):
            Where prepared Arrow files go; defaults to the `datasets` cache.
        split (`str`, *optional*):
            Return only this split (a folder has one split, `train`).
        streaming (`bool`, defaults to `False`):
            Return an `IterableDataset(Dict)` that reads the source lazily, so the corpus needs neither a second copy
            on disk nor memory.
        download_mode (`DownloadMode` or `str`, *optional*):
            e.g. `"force_redownload"` to rebuild after the folder changed.
        num_proc (`int`, *optional*):
            Processes used to prepare Arrow files.
    """
    if isinstance(source, (Dataset, DatasetDict, IterableDataset, IterableDatasetDict)):
        dataset = source[split] if split is not None and isinstance(source, dict) else source
        return normalize_audio_text_columns(dataset, audio_column, text_column)
    if Path(source).is_dir() and any((Path(source) / name).is_file() for name in METADATA_FILES):
        builder = AudioTextPairs(
            data_dir=str(source),
            text_column=text_column,
            strict=strict,
            cache_dir=cache_dir,
            source_fingerprint=source_fingerprint(source),
        )
        return load_builder(builder, split=split, streaming=streaming, download_mode=download_mode, num_proc=num_proc)
    dataset = datasets.load_dataset(
        str(source),
        split=split,
        streaming=streaming,
        cache_dir=cache_dir,
        download_mode=download_mode,
        num_proc=num_proc,
    )
    try:
        return normalize_audio_text_columns(dataset, audio_column, text_column)
    except ValueError as error:
        if not Path(source).is_dir():
            raise
        raise ValueError(
            f"{error} A folder of audio files needs a {' or '.join(METADATA_FILES)} with `file_name` and "
            f"`{text_column}` columns; {source} has neither."
        ) from error
