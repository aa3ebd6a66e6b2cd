"""Run a CMT classifier exported by `cmt-export` without PyTorch: numpy, onnxruntime and tokenizers only.

`cmt-export` copies this file into the export folder as `run_onnx.py`:

    python run_onnx.py utterance.wav --text "I can't believe you did that!" [--model model_int8.onnx]

Audio: 16-bit PCM WAV (mono or multi-channel, downmixed) at the model's sampling rate, or waveforms in [-1, 1] from
Python. Preprocessing is `CMTProcessor`'s: per-item zero-mean unit-variance normalisation over the real samples, zero
padding with an attention mask, and the tokenizer's `<s> ... </s>` encoding padded with the pad token.
"""

import argparse
import json
import sys
import wave
from pathlib import Path

import numpy as np
import onnxruntime
from tokenizers import Tokenizer


ONNX_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


class CMTOnnxClassifier:
    """An exported CMT classifier: `classifier(waveforms, texts)` returns, per item, labels and scores, best first."""

    def __init__(self, folder: str | Path = ".", model: str | None = None, threads: int | None = None):
        folder = Path(folder)
        self.settings = json.loads((folder / "cmt_onnx.json").read_text(encoding="utf-8"))
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        path = folder / (model or self.settings["default_model"])
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.settings["max_text_length"])
        self.tokenizer.enable_padding(pad_id=self.settings["pad_token_id"])
        self.labels = [self.settings["id2label"][str(index)] for index in range(len(self.settings["id2label"]))]
        # The exported inputs keep the processor's dtypes (e.g. an int32 audio mask): feed what the graph declares.
        self.dtypes = {value.name: ONNX_DTYPES[value.type] for value in self.session.get_inputs()}

    def inputs(self, waveforms: list[np.ndarray], texts: list[str]) -> dict[str, np.ndarray]:
        """The four model inputs of a batch, as `CMTProcessor` makes them."""
        if len(waveforms) != len(texts):
            raise ValueError(f"Got {len(waveforms)} waveforms but {len(texts)} transcripts.")
        arrays = []
        for index, waveform in enumerate(waveforms):
            array = np.asarray(waveform, dtype=np.float32)
            if array.ndim == 2:  # (channels, samples) or (samples, channels)
                array = array.mean(axis=int(np.argmin(array.shape)))
            if array.size < self.settings["min_input_samples"] or not np.isfinite(array).all():
                raise ValueError(
                    f"Item {index}: needs at least {self.settings['min_input_samples']} finite samples, got "
                    f"{array.size}."
                )
            arrays.append(array)
        length = max(len(array) for array in arrays)
        input_values = np.full((len(arrays), length), self.settings["padding_value"], dtype=np.float32)
        audio_mask = np.zeros((len(arrays), length), dtype=np.int64)
        for row, array in enumerate(arrays):
            if self.settings["do_normalize"]:
                array = (array - array.mean()) / np.sqrt(array.var() + 1e-7)
            input_values[row, : len(array)] = array
            audio_mask[row, : len(array)] = 1
        encodings = self.tokenizer.encode_batch(list(texts))
        inputs = {
            "input_values": input_values,
            "audio_attention_mask": audio_mask,
            "input_ids": np.array([encoding.ids for encoding in encodings]),
            "attention_mask": np.array([encoding.attention_mask for encoding in encodings]),
        }
        return {name: array.astype(self.dtypes[name], copy=False) for name, array in inputs.items()}

    def logits(self, waveforms: list[np.ndarray], texts: list[str]) -> np.ndarray:
        return self.session.run(["logits"], self.inputs(waveforms, texts))[0]  # (batch, num_labels)

    def __call__(self, waveforms: list[np.ndarray], texts: list[str]) -> list:
        logits = self.logits(waveforms, texts)
        if self.settings["problem_type"] == "regression":
            return [{"score": float(row[0])} for row in logits]
        scores = np.exp(logits - logits.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        return [
            [{"label": self.labels[index], "score": float(row[index])} for index in np.argsort(-row)] for row in scores
        ]


def read_wav(path: str, sampling_rate: int) -> np.ndarray:
    """A 16-bit PCM WAV at `sampling_rate` as float32 `(channels, samples)` in [-1, 1]."""
    with wave.open(path, "rb") as file:
        if file.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM, got {8 * file.getsampwidth()}-bit samples.")
        if file.getframerate() != sampling_rate:
            raise ValueError(f"{path} is at {file.getframerate()} Hz; resample it to {sampling_rate} Hz first.")
        samples = np.frombuffer(file.readframes(file.getnframes()), dtype="<i2").astype(np.float32) / 32768
        return samples.reshape(-1, file.getnchannels()).T


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Classify WAV files with an exported CMT model (no PyTorch).")
    parser.add_argument("audio", nargs="+", help="16-bit PCM WAV files at the model's sampling rate.")
    parser.add_argument("--text", action="append", required=True, help="The transcript (once per audio file).")
    parser.add_argument("--model", help="model.onnx or model_int8.onnx (default: cmt_onnx.json's default_model).")
    parser.add_argument("--folder", default=str(Path(__file__).resolve().parent), help="The export folder.")
    args = parser.parse_args(argv)
    if len(args.text) != len(args.audio):
        parser.error(f"Got {len(args.audio)} audio files but {len(args.text)} --text values: one each.")
    classifier = CMTOnnxClassifier(args.folder, args.model)
    waveforms = [read_wav(path, classifier.settings["sampling_rate"]) for path in args.audio]
    for path, result in zip(args.audio, classifier(waveforms, args.text)):
        print(json.dumps({"audio": path, "prediction": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
