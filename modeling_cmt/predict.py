"""cmt-predict: classify many utterances with a CMT classification checkpoint and write the predictions to CSV or JSONL.

    cmt-predict path/to/checkpoint recordings/ --output predictions.csv
    cmt-predict path/to/checkpoint "data/**/*.flac" --output predictions.jsonl --asr_model openai/whisper-small
    cmt-predict path/to/checkpoint manifest.csv --output predictions.csv --batch_size 16 --device cuda

Inputs are directories (searched recursively for audio files), glob patterns, audio files, or CSV / JSONL manifests with
an `audio` column (paths relative to the manifest) and an optional `text` column. For directory, glob and file inputs
the transcript is read from a `<name>.txt` file beside the audio when there is one.

The output is appended to: rows whose `audio` is already in it are skipped, so an interrupted run resumes where it
stopped (`--overwrite` starts afresh). A row that fails (missing or undecodable file, audio too short, NaN samples,
no transcript, ...) is written with an `error` naming its row number and the reason and does not stop the others; the
run ends with a summary and exits with 1 when any row failed.
"""

import argparse
import csv
import glob
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import pipeline

from .pipeline_cmt import TASK


AUDIO_EXTENSIONS = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm", ".wma", ".aif", ".aiff"}
OUTPUT_FORMATS = (".csv", ".jsonl")


@dataclass
class Row:
    """One utterance to classify: its 1-based row number, `audio` as given, the path to read and the transcript."""

    number: int
    audio: str
    path: str
    text: Any = None


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
    parser.add_argument("--batch_size", type=int, default=8, help="Utterances per forward pass.")
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'.")
    parser.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="Run the pipeline and model code stored with the checkpoint instead of the installed package's.",
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
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------------


def _sidecar_text(path: Path) -> str | None:
    transcript = path.with_suffix(".txt")
    return transcript.read_text(encoding="utf-8").strip() if transcript.is_file() else None


def _read_manifest(path: Path, audio_column: str, text_column: str) -> list[tuple[str, str, Any]]:
    """(audio as written, path to read, transcript) per manifest row; relative paths are read from the manifest's
    folder."""
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as file:
            records = list(csv.DictReader(file))
    else:
        with open(path, encoding="utf-8") as file:
            records = []
            for line_number, line in enumerate(file, start=1):
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
        resolved = audio if not audio or os.path.isabs(audio) else str(path.parent / audio)
        entries.append((audio, resolved, record.get(text_column)))
    return entries


def collect_rows(inputs: list[str], audio_column: str = "audio", text_column: str = "text") -> list[Row]:
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
            entries += [(str(file), str(file), _sidecar_text(file)) for file in files]
        elif path.suffix.lower() in (".csv", ".jsonl") and path.is_file():
            entries += _read_manifest(path, audio_column, text_column)
        elif path.is_file():
            entries.append((spec, spec, _sidecar_text(path)))
        elif glob.has_magic(spec):
            files = sorted(glob.glob(spec, recursive=True))
            if not files:
                raise SystemExit(f"cmt-predict: error: the pattern {spec!r} matches no file.")
            entries += [(file, file, _sidecar_text(Path(file))) for file in files]
        else:
            raise SystemExit(f"cmt-predict: error: {spec!r} is not a file, a directory or a glob pattern.")
    return [Row(number, audio, resolved, text) for number, (audio, resolved, text) in enumerate(entries, start=1)]


# ---------------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------------


def output_columns(config) -> list[str]:
    if config.num_labels == 1:
        predictions = ["score", "sentiment_class", "polarity"]
    else:
        predictions = ["label", "score"] + [f"score_{config.id2label[index]}" for index in range(config.num_labels)]
    return ["row", "audio", "text", "text_source", *predictions, "audio_only", "error"]


def read_done(output: Path, columns: list[str]) -> set[str]:
    """The `audio` values already in `output`; refuses a file written with other columns (another model)."""
    if not output.is_file() or output.stat().st_size == 0:
        return set()
    if output.suffix.lower() == ".csv":
        with open(output, newline="", encoding="utf-8") as file:
            content = file.read()
        reader = csv.DictReader(io.StringIO(content, newline=""))
        if reader.fieldnames != columns:
            raise SystemExit(
                f"cmt-predict: error: {output} has columns {reader.fieldnames}, but this model writes {columns}. "
                "Write to another file, or pass --overwrite to replace it."
            )
        records = list(reader)
        if not content.endswith("\n"):
            records = records[:-1]  # the last row was cut short by an interrupted run: it is classified again
        return {record["audio"] for record in records}
    done = set()
    with open(output, encoding="utf-8") as file:
        for line in file:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by an interrupted run: its row is classified again
            if set(record) != set(columns):
                raise SystemExit(
                    f"cmt-predict: error: {output} holds records with keys {sorted(record)}, but this model writes "
                    f"{sorted(columns)}. Write to another file, or pass --overwrite to replace it."
                )
            done.add(record["audio"])
    return done


class PredictionWriter:
    """Appends records to a CSV (header written once) or JSONL file, flushing after every batch."""

    def __init__(self, output: Path, columns: list[str]):
        self.columns = columns
        self.is_csv = output.suffix.lower() == ".csv"
        is_new = not output.is_file() or output.stat().st_size == 0
        if not is_new:
            with open(output, "rb") as file:
                file.seek(-1, os.SEEK_END)
                cut_short = file.read(1) != b"\n"
        self.file = open(output, "a", newline="" if self.is_csv else None, encoding="utf-8")
        if not is_new and cut_short:
            self.file.write("\n")
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
    record.update(row=row.number, audio=row.audio, text=row.text, text_source="input", audio_only=False)
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


def error_record(row: Row, error: Exception, columns: list[str]) -> dict:
    record = dict.fromkeys(columns)
    text = row.text if row.text is None or isinstance(row.text, str) else json.dumps(row.text)
    record.update(row=row.number, audio=row.audio, text=text, error=f"row {row.number}: {error}")
    return record


# ---------------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------------


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"cmt-predict: error: --device {device} was asked for, but CUDA is not available.")
    return device


def classify(
    classifier, rows: list[Row], batch_size: int, call_kwargs: dict
) -> list[tuple[Row, Any, Exception | None]]:
    """Predictions for `rows` as one batch; if the batch fails, row by row so one bad row cannot sink the others."""
    try:
        items = [{"audio": row.path, "text": row.text} for row in rows]
        predictions = classifier(items, batch_size=batch_size, **call_kwargs)
        return [(row, prediction, None) for row, prediction in zip(rows, predictions)]
    except Exception:  # find the failing rows one by one
        results = []
        for row in rows:
            try:
                results.append((row, classifier({"audio": row.path, "text": row.text}, **call_kwargs), None))
            except Exception as error:  # whatever fails, it is reported in the row's error column
                results.append((row, None, error))
        return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    # --- rows to classify ---------------------------------------------------------------------------------------------
    rows = collect_rows(args.inputs, args.audio_column, args.text_column)
    output = Path(args.output)

    # --- model ------------------------------------------------------------------------------------------------------
    classifier = pipeline(
        TASK, model=args.model, device=resolve_device(args.device), trust_remote_code=args.trust_remote_code
    )
    columns = output_columns(classifier.model.config)
    if args.overwrite and output.exists():
        output.unlink()
    done = read_done(output, columns)
    todo = [row for row in rows if row.audio not in done]
    call_kwargs = {
        "allow_audio_only": args.allow_audio_only,
        "max_audio_seconds": args.max_audio_seconds or None,
    }
    if args.asr_model:
        call_kwargs["asr_model"] = args.asr_model

    # --- classify and write, batch by batch ---------------------------------------------------------------------------
    writer = PredictionWriter(output, columns)
    failed = []
    try:
        with tqdm(total=len(todo), unit="utt", desc="cmt-predict") as progress:
            for start in range(0, len(todo), args.batch_size):
                batch = todo[start : start + args.batch_size]
                missing = [row for row in batch if not os.path.isfile(row.path)]
                present = [row for row in batch if os.path.isfile(row.path)]
                results = [
                    (row, None, FileNotFoundError(f"audio file {row.path!r}: no such file.")) for row in missing
                ]
                if present:
                    results += classify(classifier, present, args.batch_size, call_kwargs)
                records = []
                for row, prediction, error in sorted(results, key=lambda result: result[0].number):
                    if error is not None:
                        failed.append(row.number)
                        records.append(error_record(row, error, columns))
                    else:
                        records.append(prediction_record(row, prediction, columns, used_asr=bool(args.asr_model)))
                writer.write(records)
                progress.update(len(batch))
    finally:
        writer.close()

    # --- summary ------------------------------------------------------------------------------------------------------
    shown = ", ".join(str(number) for number in failed[:20]) + (", ..." if len(failed) > 20 else "")
    print(
        f"cmt-predict: {len(rows)} rows: {len(todo) - len(failed)} classified, {len(failed)} failed"
        + (f" (rows {shown}; see the error column)" if failed else "")
        + f", {len(rows) - len(todo)} already in {output}; predictions in {output}."
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
