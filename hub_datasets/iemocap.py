"""IEMOCAP builder: utterances of the user's `IEMOCAP_full_release` with transcript, category and dimensional labels.

IEMOCAP cannot be downloaded (it needs a licence), so the builder reads a local copy:

```py
>>> from hub_datasets import load_iemocap, iemocap_loso_fold
>>> iemocap = load_iemocap("/data/IEMOCAP_full_release", "4class")  # splits session1 ... session5
>>> fold = iemocap_loso_fold(iemocap, test_session=1)  # train / validation / test, speaker-disjoint
```

The MulT per-emotion binary protocol (one-vs-rest accuracy per emotion) is computed by the metric code from 4-class
predictions; no separate binary view is built here.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets import Audio, ClassLabel, DatasetDict, DownloadMode, Features, Value

from ._utils import (
    BuildReport,
    LoadedDataset,
    load_builder,
    locate_corpus_root,
    read_text_lines,
    read_wav_info,
    source_fingerprint,
)
from .folds import session_fold


_DESCRIPTION = """\
IEMOCAP (Interactive Emotional Dyadic Motion Capture): 10 actors in 5 dyadic sessions, improvised and scripted
dialogs, segmented into utterances with a majority emotion category and valence / activation / dominance ratings.
Splits are the five sessions; use `iemocap_loso_fold` for the leave-one-session-out protocol.
"""

_CITATION = """\
@article{busso2008iemocap,
  title={IEMOCAP: Interactive emotional dyadic motion capture database},
  author={Busso, Carlos and Bulut, Murtaza and Lee, Chi-Chun and Kazemzadeh, Abe and Mower, Emily and Kim, Samuel
          and Chang, Jeannette N and Lee, Sungbok and Narayanan, Shrikanth S},
  journal={Language Resources and Evaluation},
  volume={42},
  number={4},
  pages={335--359},
  year={2008}
}
"""

_HOMEPAGE = "https://sail.usc.edu/iemocap/"

SESSIONS = [f"Session{session}" for session in range(1, 6)]

# Raw category codes of the EmoEvaluation files and the names the `all` config gives them.
CATEGORY_NAMES = {
    "ang": "angry",
    "hap": "happy",
    "neu": "neutral",
    "sad": "sad",
    "exc": "excited",
    "fru": "frustrated",
    "sur": "surprised",
    "fea": "fearful",
    "dis": "disgusted",
    "oth": "other",
    "xxx": "no_agreement",
}
# The standard 4-class set merges excited into happy.
FOUR_CLASS_NAMES = {"ang": "angry", "hap": "happy", "exc": "happy", "neu": "neutral", "sad": "sad"}

_SUMMARY_LINE = re.compile(
    r"^\[(?P<start>\d+(?:\.\d+)?)\s*-\s*(?P<end>\d+(?:\.\d+)?)\]\s+(?P<id>\S+)\s+(?P<category>\S+)\s+"
    r"\[(?P<valence>\d+(?:\.\d+)?),\s*(?P<activation>\d+(?:\.\d+)?),\s*(?P<dominance>\d+(?:\.\d+)?)\]\s*$"
)
_TRANSCRIPT_LINE = re.compile(r"^(?P<id>\S+) \[(?P<start>\d+(?:\.\d+)?)-(?P<end>\d+(?:\.\d+)?)\]:\s?(?P<text>.*)$")
_UTTERANCE_ID = re.compile(r"^Ses(?P<session>\d{2})[FM]_.+_(?P<gender>[FM])\d{3}$")


@dataclass
class IemocapConfig(datasets.BuilderConfig):
    """BuilderConfig for IEMOCAP.

    Args:
        categories (`dict[str, str]`):
            Raw category code -> class name of the utterances kept; the class names, in order of first appearance,
            are the `label` classes.
        strict (`bool`, defaults to `False`):
            Raise on the first missing or corrupt WAV, unparsable line or utterance without transcript, instead of
            skipping it (skips are logged and listed in `info.description`).
        source_fingerprint (`str`, *optional*):
            State of the corpus files (`load_iemocap` sets it from their sizes and modification times), part of the
            cache key: a changed corpus is prepared again.
    """

    categories: dict[str, str] | None = None
    strict: bool = False
    source_fingerprint: str | None = None

    @property
    def label_names(self) -> list[str]:
        return list(dict.fromkeys(self.categories.values()))


class Iemocap(datasets.GeneratorBasedBuilder):
    """IEMOCAP utterances from a local `IEMOCAP_full_release`, one split per session."""

    BUILDER_CONFIG_CLASS = IemocapConfig
    BUILDER_CONFIGS = [
        IemocapConfig(
            name="4class",
            version=datasets.Version("1.0.0"),
            description="angry / happy (hap + exc) / neutral / sad: 5,531 utterances on the full release.",
            categories=FOUR_CLASS_NAMES,
        ),
        IemocapConfig(
            name="all",
            version=datasets.Version("1.0.0"),
            description="Every utterance; `oth` is labelled other and `xxx` (no majority) no_agreement.",
            categories=CATEGORY_NAMES,
        ),
    ]
    DEFAULT_CONFIG_NAME = "4class"

    def _info(self) -> datasets.DatasetInfo:
        features = Features(
            {
                "id": Value("string"),
                "audio": Audio(sampling_rate=16000),
                "text": Value("string"),
                "label": ClassLabel(names=self.config.label_names),
                "category": Value("string"),
                "session": Value("int8"),
                "speaker": Value("string"),
                "gender": ClassLabel(names=["female", "male"]),
                "dialog": Value("string"),
                "is_improvised": Value("bool"),
                "valence": Value("float32"),
                "activation": Value("float32"),
                "dominance": Value("float32"),
                "start": Value("float64"),
                "end": Value("float64"),
            }
        )
        return datasets.DatasetInfo(
            description=_DESCRIPTION, features=features, homepage=_HOMEPAGE, citation=_CITATION
        )

    def _split_generators(self, dl_manager):
        root = locate_corpus_root(self.config.data_dir, SESSIONS, "IEMOCAP_full_release")
        report = BuildReport("iemocap", self.config.strict)
        utterances = {session: [] for session in range(1, 6)}
        excluded = 0
        for session in range(1, 6):
            session_dir = root / f"Session{session}"
            evaluation_dir = session_dir / "dialog" / "EmoEvaluation"
            transcription_dir = session_dir / "dialog" / "transcriptions"
            wav_dir = session_dir / "sentences" / "wav"
            for folder in (evaluation_dir, transcription_dir, wav_dir):
                if not folder.is_dir():
                    raise FileNotFoundError(
                        f"Missing folder {folder}: each IEMOCAP session needs dialog/EmoEvaluation, "
                        "dialog/transcriptions and sentences/wav."
                    )
            evaluation_files = sorted(path for path in evaluation_dir.glob("*.txt") if not path.name.startswith("."))
            if not evaluation_files:
                raise FileNotFoundError(f"No EmoEvaluation files (<dialog>.txt) in {evaluation_dir}.")
            for evaluation_file in evaluation_files:
                dialog = evaluation_file.stem
                transcripts = _read_transcriptions(transcription_dir / f"{dialog}.txt", report)
                for location, summary in _read_summaries(evaluation_file, report):
                    if summary["category"] not in self.config.categories:
                        excluded += 1
                        continue
                    utterance = _utterance(summary, location, session, dialog, transcripts, wav_dir, report)
                    if utterance is not None:
                        utterance["label"] = self.config.categories[utterance["category"]]
                        utterances[session].append(utterance)
        for session, rows in utterances.items():
            report.note(f"session{session}: {len(rows)} utterances")
        report.note(f"left out by config '{self.config.name}' (other categories): {excluded} utterances")
        report.check_not_empty({f"session{session}": len(rows) for session, rows in utterances.items()})
        self.info.description = f"{_DESCRIPTION}\n{report.summary()}\n"
        return [
            datasets.SplitGenerator(name=f"session{session}", gen_kwargs={"utterances": rows})
            for session, rows in utterances.items()
        ]

    def _generate_examples(self, utterances):
        for utterance in utterances:
            yield utterance["id"], utterance


def _read_summaries(evaluation_file: Path, report: BuildReport):
    """Yield (`file:line`, match) for the summary lines of an EmoEvaluation file (`[start - end]`, id, category and
    `[valence, activation, dominance]`, tab separated)."""
    for line_number, line in enumerate(read_text_lines(evaluation_file), start=1):
        if not line.startswith("["):
            continue
        location = f"{evaluation_file}:{line_number}"
        summary = _SUMMARY_LINE.match(line)
        if summary is None:
            report.skip("unparsable line", f"{location}: cannot parse summary line {line!r}")
            continue
        if summary["category"] not in CATEGORY_NAMES:
            raise ValueError(
                f"{location}: unknown category {summary['category']!r} for {summary['id']}; IEMOCAP categories are "
                f"{', '.join(CATEGORY_NAMES)}."
            )
        yield location, summary


def _read_transcriptions(transcription_file: Path, report: BuildReport) -> dict[str, str] | None:
    """Utterance id -> text of a dialog's transcription file; lines that are not utterances are ignored."""
    if not transcription_file.is_file():
        report.skip(
            "missing transcript",
            f"missing transcription file {transcription_file}: the utterances of its dialog are skipped",
            FileNotFoundError,
        )
        return None
    transcripts = {}
    for line_number, line in enumerate(read_text_lines(transcription_file), start=1):
        first_token = line.split(maxsplit=1)[0] if line.strip() else ""
        if not _UTTERANCE_ID.match(first_token):
            continue  # e.g. `..._MXX` ids or speaker notes
        transcript = _TRANSCRIPT_LINE.match(line)
        if transcript is not None:
            transcripts[transcript["id"]] = transcript["text"].strip()
        elif "[" in line:
            report.skip("unparsable line", f"{transcription_file}:{line_number}: cannot parse transcript {line!r}")
    return transcripts


def _utterance(summary, location, session, dialog, transcripts, wav_dir, report) -> dict | None:
    """The example for one summary line, or `None` (reported) when it cannot be built."""
    utterance_id = summary["id"]
    parsed_id = _UTTERANCE_ID.match(utterance_id)
    if parsed_id is None or int(parsed_id["session"]) != session or not utterance_id.startswith(dialog + "_"):
        report.skip(
            "unparsable line",
            f"{location}: utterance id {utterance_id!r} does not belong to Session{session}/{dialog}",
        )
        return None
    if transcripts is None:
        return None  # the missing transcription file is already reported
    if utterance_id not in transcripts:
        report.skip("missing transcript", f"{location}: no transcript line for {utterance_id}")
        return None
    wav_path = wav_dir / dialog / f"{utterance_id}.wav"
    if not wav_path.is_file():
        report.skip("missing audio", f"{location}: missing WAV {wav_path}", FileNotFoundError)
        return None
    try:
        read_wav_info(wav_path)
    except ValueError as error:
        report.skip("corrupt audio", str(error))
        return None
    gender = parsed_id["gender"]
    return {
        "id": utterance_id,
        "audio": str(wav_path),
        "text": transcripts[utterance_id],
        "category": summary["category"],
        "session": session,
        "speaker": f"Ses{session:02d}{gender}",
        "gender": "female" if gender == "F" else "male",
        "dialog": dialog,
        "is_improvised": "_impro" in dialog,
        "valence": float(summary["valence"]),
        "activation": float(summary["activation"]),
        "dominance": float(summary["dominance"]),
        "start": float(summary["start"]),
        "end": float(summary["end"]),
    }


def load_iemocap(
    data_dir: str | os.PathLike,
    config: str = "4class",
    *,
    strict: bool = False,
    cache_dir: str | None = None,
    split: str | None = None,
    streaming: bool = False,
    download_mode: DownloadMode | str | None = None,
    num_proc: int | None = None,
) -> LoadedDataset:
    """Load IEMOCAP from a local `IEMOCAP_full_release` as a `DatasetDict` with splits `session1` ... `session5`.

    Args:
        data_dir (`str` or `os.PathLike`):
            The `IEMOCAP_full_release` folder (the one holding `Session1` ... `Session5`).
        config (`str`, defaults to `"4class"`):
            `"4class"` (angry / happy = hap + exc / neutral / sad) or `"all"` (every category).
        strict (`bool`, defaults to `False`):
            Raise on the first missing or corrupt file instead of skipping it (skips are logged and listed in
            `info.description`).
        cache_dir (`str`, *optional*):
            Where the prepared Arrow files go; defaults to the `datasets` cache.
        split (`str`, *optional*):
            Return only this split (e.g. `"session1"`).
        streaming (`bool`, defaults to `False`):
            Return an `IterableDatasetDict` read straight from the corpus, without preparing Arrow files.
        download_mode (`DownloadMode` or `str`, *optional*):
            e.g. `"force_redownload"` to rebuild after the corpus changed.
        num_proc (`int`, *optional*):
            Processes used to prepare the Arrow files.
    """
    fingerprint = source_fingerprint(data_dir) if Path(data_dir).expanduser().is_dir() else None
    builder = Iemocap(
        config_name=config, data_dir=str(data_dir), strict=strict, cache_dir=cache_dir, source_fingerprint=fingerprint
    )
    return load_builder(builder, split=split, streaming=streaming, download_mode=download_mode, num_proc=num_proc)


def iemocap_loso_fold(
    dataset_dict: DatasetDict, test_session: int, validation_session: int | None = None
) -> DatasetDict:
    """Leave-one-session-out fold `test_session` of IEMOCAP as `train` / `validation` / `test`.

    `test` is session `test_session`; `validation` is a whole training session (both of its speakers), by default the
    next one cyclically; `train` is the three others. Every IEMOCAP dialog is between the two actors of one session,
    so holding out whole sessions is what keeps both speakers and dialogs out of training: holding out a single actor
    would leave their partner's side of the same conversations in `train`. The function checks this on the data and
    raises if any speaker or dialog is in two splits.

    Args:
        dataset_dict (`DatasetDict`):
            The output of `load_iemocap` (any config).
        test_session (`int`):
            Session held out for testing, 1 ... 5.
        validation_session (`int`, *optional*):
            Training session held out for validation; defaults to `test_session % 5 + 1`.
    """
    return session_fold(dataset_dict, test_session, validation_session, disjoint_columns=("speaker", "dialog"))
