"""cmt-predict: classify many utterances with a CMT classification checkpoint and write the predictions to CSV or JSONL.

    cmt-predict path/to/checkpoint recordings/ --output predictions.csv
    cmt-predict path/to/checkpoint "data/**/*.flac" --output predictions.jsonl --asr_model openai/whisper-small
    cmt-predict path/to/checkpoint manifest.csv --output predictions.csv --batch_size 16 --device cuda

Inputs are directories (searched recursively for audio files), glob patterns, audio files, or CSV / JSONL manifests with
an `audio` column (paths relative to the manifest) and an optional `text` column. For directory, glob and file inputs
the transcript is read from a `<name>.txt` file beside the audio when there is one.

The output is appended to: rows already in it (the same audio file, however its path is spelled, with the same
transcript) are skipped, so an interrupted run resumes where it stopped (`--overwrite` starts afresh); a last record
cut short by the interruption is removed and its row classified again. A row that fails (missing, undecodable or
truncated file, audio too short, NaN samples, no transcript, ...) is written with an `error` naming its row number and
the reason and does not stop the others; the run ends with a summary and exits with 1 when any row failed. Weights
load from safetensors files only, unless `--allow_pickle`.

On many GPUs (or CPU processes, or machines sharing a file system) the same command runs under accelerate:

    accelerate launch --multi_gpu --num_processes 8 -m modeling_cmt.predict path/to/checkpoint manifest.csv -o out.csv

The rows still to do are split into one contiguous share per process; each process writes its share to its own part
file in `<output>.parts/` and, once all have finished, the first process merges the parts into the output in input
order and removes them. A killed run leaves its parts behind: the next run (with any number of processes) merges
what they hold first, so no row is lost or classified twice.
"""

import argparse
import codecs
import csv
import glob
import io
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import pipeline

from .modeling_cmt import CMTCheckpointError
from .pipeline_cmt import TASK, AudioTextInput


AUDIO_EXTENSIONS = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm", ".wma", ".aif", ".aiff"}
OUTPUT_FORMATS = (".csv", ".jsonl")
MANIFEST_FORMATS = (".csv", ".jsonl")


def transcript_key(text) -> str | None:
    """How a transcript tells rows of the same audio apart: `None` when there is none (missing or blank), the JSON of
    a value that is not a string (as the error rows write it)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    return text if isinstance(text, str) else json.dumps(text)


@dataclass
class Row:
    """One utterance to classify: its 1-based row number, `audio` as given, the file it names (absolute, symbolic
    links resolved, so that two spellings of one path are one file) and the transcript."""

    number: int
    audio: str
    path: str
    text: Any = None

    @property
    def key(self) -> tuple[str, str | None]:
        return self.path, transcript_key(self.text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cmt-predict",
        description="Classify utterances (audio + transcript) with a CMT classification checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "model", help="Checkpoint folder or Hub id of a CMT classification model (with its processor)."
    )
    parser.add_argument(
        "inputs", nargs="+", help="Audio files, directories, glob patterns, or CSV / JSONL manifests (audio, text)."
    )
    parser.add_argument("--output", "-o", required=True, help="Where to write the predictions: a .csv or .jsonl file.")
    parser.add_argument("--audio_column", default="audio", help="Manifest column holding the audio path.")
    parser.add_argument("--text_column", default="text", help="Manifest column holding the transcript.")
    parser.add_argument(
        "--manifest_encoding",
        default="utf-8",
        help="Text encoding of manifests and .txt transcripts (UTF-8 may start with a BOM, as Excel writes it).",
    )
    parser.add_argument("--batch_size", type=int, default=8, help="Utterances per forward pass.")
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'.")
    parser.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="Run the pipeline and model code stored with the checkpoint instead of the installed package's.",
    )
    parser.add_argument(
        "--allow_pickle",
        action="store_true",
        help="Also load weights stored as a pickle (pytorch_model.bin), which can run code hidden in the file: only "
        "for checkpoints you trust. By default only safetensors weights load.",
    )
    parser.add_argument("--asr_model", help="ASR model id or path that transcribes rows without a transcript.")
    parser.add_argument(
        "--allow_audio_only", action="store_true", help="Classify rows without a transcript from the audio alone."
    )
    parser.add_argument(
        "--max_audio_seconds", type=float, default=60.0, help="Longer audio is reported as an error (0: no limit)."
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="Replace an existing output file instead of resuming."
    )
    args = parser.parse_args(argv)
    if Path(args.output).suffix.lower() not in OUTPUT_FORMATS:
        parser.error(f"--output must end in {' or '.join(OUTPUT_FORMATS)}, got {args.output!r}.")
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}.")
    if args.max_audio_seconds < 0:
        parser.error(f"--max_audio_seconds must be >= 0, got {args.max_audio_seconds}.")
    try:
        codecs.lookup(args.manifest_encoding)
    except LookupError:
        parser.error(f"--manifest_encoding {args.manifest_encoding!r} is not a text encoding Python knows.")
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------------


def _read_text(path: Path, encoding: str) -> str:
    """The text of a manifest or transcript file; a UTF-8 byte-order mark (Excel's "CSV UTF-8") is dropped."""
    if codecs.lookup(encoding).name == "utf-8":
        encoding = "utf-8-sig"
    try:
        with open(path, newline="", encoding=encoding) as file:
            return file.read()
    except UnicodeDecodeError as error:
        byte = error.object[error.start]
        raise SystemExit(
            f"cmt-predict: error: {path} is not {error.encoding} text (byte 0x{byte:02x} at offset {error.start}). "
            'Save it as UTF-8 (Excel: "CSV UTF-8"), or name its encoding, e.g. --manifest_encoding latin-1.'
        ) from error


def _sidecar_text(path: Path, encoding: str) -> str | None:
    transcript = path.with_suffix(".txt")
    return _read_text(transcript, encoding).strip() if transcript.is_file() else None


def _read_manifest(path: Path, audio_column: str, text_column: str, encoding: str) -> list[tuple[str, str, Any]]:
    """(audio as written, path to read, transcript) per manifest row; relative paths are read from the manifest's
    folder."""
    content = _read_text(path, encoding)
    if path.suffix.lower() == ".csv":
        records = list(csv.DictReader(io.StringIO(content, newline="")))
    else:
        records = []
        for line_number, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise SystemExit(f"cmt-predict: error: {path}, line {line_number} is not JSON: {error}") from error
    if records and audio_column not in records[0]:
        raise SystemExit(
            f"cmt-predict: error: manifest {path} has no {audio_column!r} column (columns: {sorted(records[0])}); "
            "set --audio_column."
        )
    entries = []
    for record in records:
        audio = record.get(audio_column)
        audio = "" if audio is None else str(audio)
        entries.append((audio, str(path.parent / audio) if audio else "", record.get(text_column)))
    return entries


def collect_rows(
    inputs: list[str], audio_column: str = "audio", text_column: str = "text", encoding: str = "utf-8"
) -> list[Row]:
    """Expands directories, globs and manifests into numbered rows, in the order given."""
    entries = []
    for spec in inputs:
        path = Path(spec)
        if path.is_dir():
            files = sorted(file for file in path.rglob("*") if file.suffix.lower() in AUDIO_EXTENSIONS)
            if not files:
                raise SystemExit(
                    f"cmt-predict: error: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) in {spec}."
                )
            entries += [(str(file), str(file), _sidecar_text(file, encoding)) for file in files]
        elif path.suffix.lower() in MANIFEST_FORMATS and path.is_file():
            entries += _read_manifest(path, audio_column, text_column, encoding)
        elif path.is_file():
            entries.append((spec, spec, _sidecar_text(path, encoding)))
        elif glob.has_magic(spec):
            files = sorted(glob.glob(spec, recursive=True))
            if not files:
                raise SystemExit(f"cmt-predict: error: the pattern {spec!r} matches no file.")
            entries += [(file, file, _sidecar_text(Path(file), encoding)) for file in files]
        else:
            raise SystemExit(f"cmt-predict: error: {spec!r} is not a file, a directory or a glob pattern.")
    return [
        Row(number, audio, os.path.realpath(path) if path else "", text)
        for number, (audio, path, text) in enumerate(entries, start=1)
    ]


# ---------------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------------


def output_columns(config) -> list[str]:
    if config.num_labels == 1:
        predictions = ["score", "sentiment_class", "polarity"]
    else:
        predictions = ["label", "score"] + [f"score_{config.id2label[index]}" for index in range(config.num_labels)]
    return ["row", "audio", "path", "text", "text_source", *predictions, "audio_only", "error"]


def check_output(output: Path, inputs: list[str]) -> None:
    """Before any model loads: refuses an output that is one of the inputs (resuming would append to it,
    `--overwrite` delete it) or that cannot be written, and creates its folder."""
    for spec in inputs:
        if Path(spec).is_file() and Path(spec).resolve() == output.resolve():
            raise SystemExit(
                f"cmt-predict: error: --output {output} is the input {spec}: write the predictions to another file."
            )
    if output.is_dir():
        raise SystemExit(f"cmt-predict: error: --output {output} is a directory; name a .csv or .jsonl file in it.")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        if output.exists():
            open(output, "a").close()
        else:
            tempfile.TemporaryFile(dir=output.parent).close()
    except OSError as error:
        raise SystemExit(f"cmt-predict: error: cannot write --output {output}: {error.strerror or error}.") from error


def _records(content: str, is_csv: bool):
    """(record as a dict, or as the text it came from when it is not one; offset where it ends) for each record of
    an output file's `content`; a CSV's header comes first, as the list of its fields."""
    if not is_csv:
        offset = 0
        for line in io.StringIO(content, newline=""):
            offset += len(line)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = line
            yield (record if line.endswith("\n") else line), offset
        return
    offset = 0

    def lines():  # csv reads one line at a time, so `offset` is where the record it just returned ends
        nonlocal offset
        for line in io.StringIO(content, newline=""):
            offset += len(line)
            yield line

    header = None
    for fields in csv.reader(lines()):
        complete = content[offset - 1 : offset] == "\n"
        if header is None:
            header = fields
            yield (fields if complete else None), offset
        elif complete and len(fields) == len(header):
            yield dict(zip(header, fields)), offset
        else:
            yield ",".join(fields), offset


def _is_complete(record, columns: list[str]) -> bool:
    """Whether a record is one this program wrote in full: the columns, a row number, and an error or a score."""
    if not isinstance(record, dict) or set(record) != set(columns):
        return False
    try:
        int(record["row"])
        if not record["error"]:
            float(record["score"])
    except (TypeError, ValueError):
        return False
    return True


def record_key(record: dict) -> tuple[str, str | None]:
    """The key (file read, transcript given) of the row an output record was written for."""
    text = record["text"] if record["text_source"] in ("input", "", None) else None  # ASR text is not an input
    return record["path"], transcript_key(text)


def resume(output: Path, columns: list[str]) -> set[tuple[str, str | None]]:
    """
    The keys (file read, transcript) of the rows an earlier run wrote to `output`, after making the file whole: a last
    record cut short by an interruption is removed from it, so its row is classified again. A file written with other
    columns (another model) or with a damaged record before its end is refused, never changed.
    """
    if not output.is_file() or output.stat().st_size == 0:
        return set()
    is_csv = output.suffix.lower() == ".csv"
    content = output.read_bytes().decode("utf-8", errors="surrogateescape")  # the cut may split a character
    keys, kept, records = set(), 0, list(_records(content, is_csv))
    for index, (record, end) in enumerate(records):
        is_last = index == len(records) - 1
        if is_csv and index == 0:
            if record is None and ",".join(columns).startswith(content):
                break  # the header itself was cut short
            if record != columns:
                raise SystemExit(
                    f"cmt-predict: error: {output} has columns {record or content.splitlines()[0]}, but this model "
                    f"writes {columns}. Write to another file, or pass --overwrite to replace it."
                )
        elif isinstance(record, dict) and set(record) != set(columns):
            raise SystemExit(
                f"cmt-predict: error: {output} holds records with keys {sorted(record)}, but this model writes "
                f"{sorted(columns)}. Write to another file, or pass --overwrite to replace it."
            )
        elif not _is_complete(record, columns):
            if is_last:
                break  # cut short by an interrupted run: removed below, its row is classified again
            raise SystemExit(
                f"cmt-predict: error: record {index + (0 if is_csv else 1)} of {output} is damaged ({str(record)[:80]!r}"
                "), and records follow it: fix or remove it, or pass --overwrite to start afresh."
            )
        else:
            keys.add(record_key(record))
        kept = end
    if kept < len(content):
        with open(output, "r+b") as file:
            file.truncate(len(content[:kept].encode("utf-8", errors="surrogateescape")))
    return keys


def read_records(output: Path, columns: list[str]) -> list[dict]:
    """The records of an output file made whole by `resume`."""
    if not output.is_file():
        return []
    content = output.read_bytes().decode("utf-8", errors="surrogateescape")
    is_csv = output.suffix.lower() == ".csv"
    return [record for record, _ in _records(content, is_csv) if _is_complete(record, columns)]


class PredictionWriter:
    """Appends records to a CSV (header written once) or JSONL file, flushing after every batch."""

    def __init__(self, output: Path, columns: list[str]):
        self.columns = columns
        self.is_csv = output.suffix.lower() == ".csv"
        is_new = not output.is_file() or output.stat().st_size == 0
        self.file = open(output, "a", newline="" if self.is_csv else None, encoding="utf-8")
        if self.is_csv:
            self.writer = csv.DictWriter(self.file, fieldnames=columns)
            if is_new:
                self.writer.writeheader()

    def write(self, records: list[dict]):
        for record in records:
            if self.is_csv:
                self.writer.writerow({key: "" if value is None else value for key, value in record.items()})
            else:
                self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()

    def close(self):
        self.file.close()


def prediction_record(row: Row, prediction, columns: list[str], used_asr: bool) -> dict:
    record = dict.fromkeys(columns)
    record.update(row=row.number, audio=row.audio, path=row.path, text=row.text, text_source="input", audio_only=False)
    entries = prediction if isinstance(prediction, list) else [prediction]
    if "transcript" in entries[0]:
        record.update(
            text=entries[0]["transcript"],
            text_source="asr" if used_asr else "none",
            audio_only=entries[0]["audio_only"],
        )
    if isinstance(prediction, list):
        record.update(label=prediction[0]["label"], score=prediction[0]["score"])
        record.update({f"score_{entry['label']}": entry["score"] for entry in prediction})
    else:
        record.update({key: prediction[key] for key in ("score", "sentiment_class", "polarity") if key in prediction})
    return record


def error_record(row: Row, message: str, columns: list[str]) -> dict:
    record = dict.fromkeys(columns)
    text = row.text if row.text is None or isinstance(row.text, str) else json.dumps(row.text)
    record.update(row=row.number, audio=row.audio, path=row.path, text=text, error=f"row {row.number}: {message}")
    return record


# ---------------------------------------------------------------------------------------------------------------------
# Many processes: one part file per process, merged into the output in input order
# ---------------------------------------------------------------------------------------------------------------------

# How long a finished process waits for the others at the end (the default, 30 minutes, is shorter than the gap
# between the first and the last share of a long run can be).
PROCESS_GROUP_TIMEOUT = timedelta(hours=12)


def parts_folder(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def part_path(output: Path, process_index: int) -> Path:
    return parts_folder(output) / f"part-{process_index:05d}{output.suffix.lower()}"


def existing_parts(output: Path) -> list[Path]:
    folder = parts_folder(output)
    if not folder.is_dir():
        return []
    return sorted(folder.glob(f"part-[0-9][0-9][0-9][0-9][0-9]{output.suffix.lower()}"))


def distributed_state():
    """accelerate's process state when the command was started by a multi-process launcher (`accelerate launch`,
    torchrun), else None. Processes on machines without GPUs form one gloo job."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    try:
        from accelerate import PartialState
    except ImportError as error:
        raise SystemExit(
            "cmt-predict: error: this process is one of several started by a launcher (WORLD_SIZE="
            f"{os.environ['WORLD_SIZE']}), and sharing the rows between them needs accelerate: pip install accelerate."
        ) from error
    return PartialState(cpu=not torch.cuda.is_available(), timeout=PROCESS_GROUP_TIMEOUT)


def merge_parts(output: Path, columns: list[str], rows: list[Row]) -> list[dict]:
    """
    Moves the records of the part files in `<output>.parts/` into `output` and removes them; returns the records it
    added. When every record of the output and the parts belongs to a row of this run (same row number, same file),
    the output is rewritten in input order (through a temporary file renamed over it, so a kill leaves the old output
    or the new one, never half of either); otherwise the parts' records are appended in row order. Records whose row
    is already in the output (a run killed after the merge, before the parts were removed) are dropped.
    """
    parts = existing_parts(output)
    if not parts:
        return []
    resume(output, columns)
    present = read_records(output, columns)
    keys = {record_key(record) for record in present}
    added = []
    for part in parts:
        resume(part, columns)
        for record in read_records(part, columns):
            if record_key(record) not in keys:
                keys.add(record_key(record))
                added.append(record)
    added.sort(key=lambda record: int(record["row"]))

    def belongs(record):
        number = int(record["row"])
        return 1 <= number <= len(rows) and rows[number - 1].path == record["path"]

    if all(belongs(record) for record in present + added):
        merged = sorted(present + added, key=lambda record: int(record["row"]))
        descriptor, temporary = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=output.suffix)
        os.close(descriptor)
        if output.exists():  # mkstemp makes the file private (0600): keep the output's own permissions
            os.chmod(temporary, output.stat().st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)
        try:
            writer = PredictionWriter(Path(temporary), columns)  # empty: gets the header
            writer.write(merged)
            os.fsync(writer.file.fileno())
            writer.close()
            os.replace(temporary, output)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    else:
        writer = PredictionWriter(output, columns)
        writer.write(added)
        writer.close()
    for part in parts:
        part.unlink()
    if not any(parts_folder(output).iterdir()):
        parts_folder(output).rmdir()
    return added


# ---------------------------------------------------------------------------------------------------------------------
# Classifying
# ---------------------------------------------------------------------------------------------------------------------


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"cmt-predict: error: --device {device} was asked for, but CUDA is not available.")
    return device


def row_problem(row: Row, args: argparse.Namespace) -> str | None:
    """What stops a row before the model sees it, said in the command line's terms."""
    if not row.audio:
        return f"the manifest's {args.audio_column!r} column is empty."
    if transcript_key(row.text) is None and not (args.asr_model or args.allow_audio_only):
        return (
            f"no transcript for audio file {row.path!r}: add one (the manifest's {args.text_column!r} column, or a "
            ".txt file of the same name beside the audio), or pass --asr_model to transcribe it or --allow_audio_only "
            "to classify it from the audio alone."
        )
    return None


def classify(classifier, rows: list[Row], args: argparse.Namespace, call_kwargs: dict) -> list[dict]:
    """The output records of `rows`, in order: one batch through the pipeline, whose failed inputs come back as
    errors (`on_bad_inputs="return"`) without costing the others theirs."""
    problems = {row.number: row_problem(row, args) for row in rows}
    ready = [row for row in rows if problems[row.number] is None]
    items = [AudioTextInput(audio=row.path, text=row.text, name=f"audio file {row.path!r}") for row in ready]
    results = dict(
        zip(
            [row.number for row in ready],
            classifier(items, batch_size=args.batch_size, on_bad_inputs="return", **call_kwargs) if items else [],
        )
    )
    columns = output_columns(classifier.model.config)
    records = []
    for row in rows:
        result = results.get(row.number)
        if problems[row.number] is not None:
            records.append(error_record(row, problems[row.number], columns))
        elif isinstance(result, dict) and "error" in result:
            records.append(error_record(row, result["error"], columns))
        else:
            records.append(prediction_record(row, result, columns, used_asr=bool(args.asr_model)))
    return records


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    state = distributed_state()  # None: one process
    is_main = state is None or state.is_main_process

    # --- rows to classify, and where they go (checked before the model loads) --------------------------------------
    rows = collect_rows(args.inputs, args.audio_column, args.text_column, args.manifest_encoding)
    output = Path(args.output)
    if is_main:
        check_output(output, args.inputs)

    # --- model ------------------------------------------------------------------------------------------------------
    device = state.device if state is not None and args.device == "auto" else resolve_device(args.device)
    model_kwargs = {"use_safetensors": None if args.allow_pickle else True}  # None: safetensors, else the pickle
    try:
        classifier = pipeline(
            TASK,
            model=args.model,
            device=device,
            trust_remote_code=args.trust_remote_code,
            model_kwargs=model_kwargs,
        )
    except CMTCheckpointError as error:
        raise SystemExit(f"cmt-predict: error: {error}") from error
    call_kwargs = {"allow_audio_only": args.allow_audio_only, "max_audio_seconds": args.max_audio_seconds or None}
    if args.asr_model:
        call_kwargs["asr_model"] = pipeline(
            "automatic-speech-recognition", model=args.asr_model, device=classifier.device, model_kwargs=model_kwargs
        )

    # --- what is left to do: resume (and merge the parts a killed run left), skip repeated rows --------------------
    columns = output_columns(classifier.model.config)
    if is_main:
        if args.overwrite:
            if output.exists():
                output.unlink()
            for part in existing_parts(output):
                part.unlink()
            if parts_folder(output).is_dir() and not any(parts_folder(output).iterdir()):
                parts_folder(output).rmdir()
        resume(output, columns)
        merge_parts(output, columns, rows)
    if state is not None:
        state.wait_for_everyone()  # the output is whole before any process reads it
    done = {record_key(record) for record in read_records(output, columns)}
    todo, repeated, keys = [], 0, set(done)
    for row in rows:
        if row.key not in keys:
            todo.append(row)
            keys.add(row.key)
        elif row.key not in done:
            repeated += 1
    already = len(rows) - len(todo) - repeated

    # --- classify and write, batch by batch (each process its share, to its own part file) -------------------------
    share, target, desc = todo, output, "cmt-predict"
    if state is not None:
        with state.split_between_processes(todo) as share:
            pass
        target = part_path(output, state.process_index)
        target.parent.mkdir(exist_ok=True)
        desc = f"cmt-predict (process {state.process_index + 1} of {state.num_processes})"
    writer = PredictionWriter(target, columns)
    failed = []
    try:
        with tqdm(total=len(share), unit="utt", desc=desc, disable=not is_main) as progress:
            for start in range(0, len(share), args.batch_size):
                batch = share[start : start + args.batch_size]
                records = classify(classifier, batch, args, call_kwargs)
                failed += [record["row"] for record in records if record["error"]]
                writer.write(records)
                progress.update(len(batch))
    finally:
        writer.close()
    if state is not None:
        state.wait_for_everyone()
        if is_main:
            failed = [int(record["row"]) for record in merge_parts(output, columns, rows) if record["error"]]
        state.wait_for_everyone()  # nobody exits (which makes the launcher stop the others) during the merge
        if not is_main:
            return 0

    # --- summary ------------------------------------------------------------------------------------------------------
    shown = ", ".join(str(number) for number in failed[:20]) + (", ..." if len(failed) > 20 else "")
    print(
        f"cmt-predict: {len(rows)} rows: {len(todo) - len(failed)} classified, {len(failed)} failed"
        + (f" (rows {shown}; see the error column)" if failed else "")
        + f", {already} already in {output}"
        + (f", {repeated} repeating an earlier row (same file and transcript) skipped" if repeated else "")
        + (f", by {state.num_processes} processes" if state is not None else "")
        + f"; predictions in {output}."
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
