"""Helpers shared by the corpus builders: locating a corpus on disk, build reports, WAV checks and cutting, loading."""

import hashlib
import logging
import os
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetBuilder, DatasetDict, DownloadMode, IterableDataset, IterableDatasetDict
from datasets.exceptions import DatasetGenerationError


logger = logging.getLogger(__name__)

# What the `load_<corpus>` helpers return: all splits or one, prepared or streamed.
LoadedDataset = DatasetDict | Dataset | IterableDatasetDict | IterableDataset

# How many problems of one kind are logged one by one before the log only counts them.
_LOGGED_PER_KIND = 10
# How many problem lines the build report written into `DatasetInfo.description` lists in full.
_REPORTED_IN_FULL = 200


def locate_corpus_root(data_dir: str | os.PathLike | None, required: Sequence[str], folder_name: str) -> Path:
    """Return `data_dir` as a `Path` after checking that it holds every path in `required`.

    When it does not, the error says which folder was expected and what was found, and recognises the two usual
    mistakes: pointing one level too high (a sub-folder is the corpus) or too low (a parent folder is the corpus).
    """
    if data_dir is None:
        raise ValueError(f"data_dir is required: pass the path of your {folder_name} folder.")
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data_dir {path} does not exist; expected the {folder_name} folder.")
    if not path.is_dir():
        raise NotADirectoryError(f"data_dir {path} is a file; expected the {folder_name} folder.")
    missing = [name for name in required if not (path / name).exists()]
    if not missing:
        return path
    for child in sorted(path.iterdir()):
        if child.is_dir() and all((child / name).exists() for name in required):
            raise FileNotFoundError(
                f"data_dir {path} is one level too high: the {folder_name} folder is {child}. Pass data_dir={child}."
            )
    for parent in list(path.parents)[:3]:
        if all((parent / name).exists() for name in required):
            raise FileNotFoundError(
                f"data_dir {path} is inside the {folder_name} folder (one level too low). Pass data_dir={parent}."
            )
    found = sorted(child.name for child in path.iterdir() if not child.name.startswith("."))
    found_text = ", ".join(found[:12]) + (", ..." if len(found) > 12 else "") if found else "nothing"
    if len(missing) < len(required):
        raise FileNotFoundError(
            f"{path} looks like the {folder_name} folder but {', '.join(str(path / name) for name in missing)} "
            f"is missing (expected {', '.join(required)}; found {found_text})."
        )
    raise FileNotFoundError(
        f"data_dir {path} is not the {folder_name} folder: expected {', '.join(required)} inside it, "
        f"found {found_text}."
    )


def read_text_lines(path: Path) -> list[str]:
    """Read a text file's lines as UTF-8, falling back to Latin-1 (which decodes any byte) for legacy files."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text.splitlines()


class BuildReport:
    """What a builder counted, skipped or could not match while indexing a corpus, so nothing is dropped silently.

    Skipped items are logged (the first few of each kind one by one) and listed in the report that the builders
    append to `DatasetInfo.description`. With `strict=True` the first problem raises instead.

    Args:
        corpus (`str`):
            Name used in log lines.
        strict (`bool`):
            Raise on the first problem instead of skipping the item.
    """

    def __init__(self, corpus: str, strict: bool):
        self.corpus = corpus
        self.strict = strict
        self.notes: list[str] = []
        self.problems: list[tuple[str, str]] = []

    def note(self, message: str) -> None:
        """Record a count or remark (e.g. examples per split)."""
        self.notes.append(message)
        logger.info("%s: %s", self.corpus, message)

    def skip(self, kind: str, message: str, error_class: type[Exception] = ValueError) -> None:
        """Record that an item is skipped because of `message`, or raise `error_class` when strict."""
        if self.strict:
            raise error_class(f"{message} (strict=True: pass strict=False to skip such items and report them)")
        self.problems.append((kind, message))
        count = sum(1 for problem_kind, _ in self.problems if problem_kind == kind)
        if count <= _LOGGED_PER_KIND:
            logger.warning("%s: skipped (%s): %s", self.corpus, kind, message)
        if count == _LOGGED_PER_KIND:
            logger.warning("%s: further '%s' problems are counted in the build report only", self.corpus, kind)

    def check_not_empty(self, examples_per_split: dict[str, int]) -> None:
        """Raise, with the report, if a split has no example left (`datasets` cannot build an empty split)."""
        empty = [split for split, count in examples_per_split.items() if count == 0]
        if empty:
            raise ValueError(f"No usable examples for split {empty[0]!r} of {self.corpus}.\n{self.summary()}")

    def counts(self) -> dict[str, int]:
        """Number of skipped items per kind of problem."""
        return dict(Counter(kind for kind, _ in self.problems))

    def summary(self) -> str:
        """The report as text: notes, skip counts per kind, then the problems themselves."""
        lines = ["Build report:"] + [f"- {note}" for note in self.notes]
        if not self.problems:
            lines.append("- nothing skipped")
            return "\n".join(lines)
        lines += [f"- skipped ({kind}): {count}" for kind, count in self.counts().items()]
        lines.append("Skipped items:")
        lines += [f"- ({kind}) {message}" for kind, message in self.problems[:_REPORTED_IN_FULL]]
        if len(self.problems) > _REPORTED_IN_FULL:
            lines.append(f"- ... and {len(self.problems) - _REPORTED_IN_FULL} more")
        return "\n".join(lines)


@dataclass(frozen=True)
class WavInfo:
    """What the header of a RIFF/WAVE file says, checked against the file's size."""

    path: Path
    sampling_rate: int
    num_channels: int
    bytes_per_frame: int
    num_frames: int
    data_offset: int
    fmt_chunk: bytes


def read_wav_info(path: str | os.PathLike) -> WavInfo:
    """Parse the header of a WAV file and check that all the audio it declares is present.

    Raises:
        `ValueError`: naming the file, if it is not a RIFF/WAVE file, has no usable `fmt ` or `data` chunk, or is
            truncated (its `data` chunk declares more bytes than the file holds).
    """
    path = Path(path)
    file_size = path.stat().st_size
    with open(path, "rb") as file:
        header = file.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            raise ValueError(f"{path} is not a WAV file (no RIFF/WAVE header); the file is corrupt.")
        fmt_chunk = None
        while True:
            chunk_header = file.read(8)
            if len(chunk_header) < 8:
                raise ValueError(f"{path} is truncated or corrupt: it has no 'data' chunk.")
            chunk_id, chunk_size = chunk_header[:4], int.from_bytes(chunk_header[4:], "little")
            if chunk_id == b"fmt ":
                fmt_chunk = file.read(chunk_size)
                if len(fmt_chunk) < 16:
                    raise ValueError(f"{path} is truncated or corrupt: its 'fmt ' chunk is incomplete.")
                file.seek(chunk_size % 2, os.SEEK_CUR)
            elif chunk_id == b"data":
                data_offset = file.tell()
                break
            else:
                file.seek(chunk_size + chunk_size % 2, os.SEEK_CUR)
    if fmt_chunk is None:
        raise ValueError(f"{path} is corrupt: its 'data' chunk comes before any 'fmt ' chunk.")
    _, num_channels, sampling_rate, _, bytes_per_frame, _ = struct.unpack("<HHIIHH", fmt_chunk[:16])
    if num_channels == 0 or sampling_rate == 0 or bytes_per_frame == 0:
        raise ValueError(f"{path} is corrupt: its header declares {num_channels} channels at {sampling_rate} Hz.")
    if data_offset + chunk_size > file_size:
        raise ValueError(
            f"{path} is truncated: its header declares {chunk_size} bytes of audio but the file holds "
            f"{file_size - data_offset}."
        )
    return WavInfo(
        path, sampling_rate, num_channels, bytes_per_frame, chunk_size // bytes_per_frame, data_offset, fmt_chunk
    )


def _wav_file_bytes(fmt_chunk: bytes, data: bytes) -> bytes:
    chunks = b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def cut_wav(info: WavInfo, start_frame: int, end_frame: int) -> bytes:
    """Frames `[start_frame, end_frame)` of a WAV file as a WAV file of the same format, reading only that range."""
    with open(info.path, "rb") as file:
        file.seek(info.data_offset + start_frame * info.bytes_per_frame)
        data = file.read((end_frame - start_frame) * info.bytes_per_frame)
    return _wav_file_bytes(info.fmt_chunk, data)


def pcm16_wav_bytes(samples: np.ndarray, sampling_rate: int) -> bytes:
    """Encode mono int16 samples as a 16-bit PCM WAV file."""
    fmt_chunk = struct.pack("<HHIIHH", 1, 1, sampling_rate, 2 * sampling_rate, 2, 16)
    return _wav_file_bytes(fmt_chunk, samples.astype("<i2").tobytes())


def source_fingerprint(root: str | os.PathLike) -> str:
    """A hash of the path, size and modification time of every file under `root`: it changes whenever a file of the
    corpus is added, removed, replaced or edited. The builders' configs carry it, so that `datasets` keys their
    prepared Arrow cache on the files' state and a changed corpus is prepared again instead of read from a stale
    cache. Stats only, no reading: fast even for tens of thousands of files."""
    root = Path(root).expanduser()
    hasher = hashlib.sha256()
    for directory, folders, files in os.walk(root):
        folders.sort()
        for name in sorted(files):
            path = Path(directory) / name
            stat = path.stat()
            hasher.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return hasher.hexdigest()[:16]


def load_builder(
    builder: DatasetBuilder,
    split: str | None = None,
    streaming: bool = False,
    download_mode: DownloadMode | str | None = None,
    num_proc: int | None = None,
) -> LoadedDataset:
    """Prepare `builder` (or stream it) and return a `DatasetDict`, or one split when `split` is given."""
    if streaming:
        dataset = builder.as_streaming_dataset(split=split)
        return IterableDatasetDict(dataset) if isinstance(dataset, dict) else dataset
    try:
        builder.download_and_prepare(download_mode=download_mode, num_proc=num_proc)
    except DatasetGenerationError as error:
        # Problems found while examples stream past (e.g. a missing file under strict=True) name the file
        # themselves: surface them rather than the generic wrapper.
        if isinstance(error.__cause__, (FileNotFoundError, ValueError)):
            raise error.__cause__ from None
        raise
    dataset = builder.as_dataset(split=split)
    return DatasetDict(dataset) if isinstance(dataset, dict) else dataset
