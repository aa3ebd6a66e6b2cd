"""cmt-export: a CMT classification checkpoint as ONNX (fp32 and int8) for inference without PyTorch.

    cmt-export path/to/checkpoint                 # writes path/to/checkpoint/onnx/
    python path/to/checkpoint/onnx/run_onnx.py utterance.wav --text "I can't believe it!"

The folder holds `model.onnx` (fp32), `model_int8.onnx` (ONNX Runtime dynamic int8 quantization: int8 weights for
every MatMul / Gemm, activations quantized on the fly), the tokenizer, `cmt_onnx.json` (labels and preprocessing
settings), `run_onnx.py` (a runner that needs only numpy, onnxruntime and tokenizers) and a README.

**Exporter.** `torch.export.export(..., strict=True)`, translated by `torch.onnx.export(..., dynamo=True)`
(onnxscript). optimum-onnx is not used: its only release (0.1.0) requires transformers < 4.58, and this package needs
transformers 5. The TorchScript exporter (`dynamo=False`) bakes the example's lengths into the frame-count arithmetic
(logits at other lengths were off by 1e-2), and so did torch.export's non-strict tracer (ONNX Runtime then failed to
broadcast at other lengths). Batch, audio length (at least 0.1 s) and text length are dynamic.

This module is not part of the remote code a checkpoint carries: it needs the `export` extra
(`pip install "cmt-speech[export]"`: onnx, onnxscript, onnxruntime).
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch


ONNX_INPUTS = ("input_values", "audio_attention_mask", "input_ids", "attention_mask")
# Dimension names of the ONNX inputs and output (torch.export calls them s0, s1, ...).
ONNX_DIMENSIONS = {
    "input_values": ("batch", "audio_samples"),
    "audio_attention_mask": ("batch", "audio_samples"),
    "input_ids": ("batch", "text_tokens"),
    "attention_mask": ("batch", "text_tokens"),
    "logits": ("batch", "num_labels"),
}
OPSET = 18
MIN_EXPORT_SAMPLES = 1600
FOLDER = "onnx"
FP32_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
SETTINGS_FILE = "cmt_onnx.json"
INSTALL_HINT = 'install the `export` extra: pip install "cmt-speech[export]"'
# Which model `run_onnx.py` runs by default. int8 would be the CPU default only if its accuracy change on the demo's
# held-out fold were negligible; benchmarks/export.py measured it (benchmarks/README.md, "Export").
DEFAULT_MODEL_FILE = FP32_FILE


def _require(module: str, purpose: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as error:
        raise ImportError(f"{purpose} needs the `{module}` package: {INSTALL_HINT}.") from error


class CMTLogits(torch.nn.Module):
    """The classifier as a function of the four processor outputs, returning the logits only (what ONNX exports)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_values, audio_attention_mask, input_ids, attention_mask):
        outputs = self.model(
            input_values=input_values,
            audio_attention_mask=audio_attention_mask,
            input_ids=input_ids,
            attention_mask=attention_mask,
        )
        return outputs.logits  # (batch, num_labels)


def example_inputs(processor, model) -> dict[str, torch.Tensor]:
    """A padded batch of two utterances of different lengths and transcripts: the export traces real masking."""
    rng = np.random.default_rng(0)
    minimum = model.config.min_input_samples()
    audio = [rng.standard_normal(max(length, minimum)).astype(np.float32) * 0.1 for length in (24000, 17000)]
    texts = ["The weather was lovely but the trip was awful.", "Fine."]
    return dict(processor(audio=audio, text=texts, sampling_rate=processor.feature_extractor.sampling_rate))


def export_onnx(model, processor, path: str | Path) -> Path:
    """
    Writes `model` (a `CMTForSequenceClassification`) as ONNX to `path`, with dynamic batch, audio length and text
    length. Inputs are the processor's four outputs, the output is `logits`.
    """
    onnx = _require("onnx", "ONNX export")
    _require("onnxscript", "ONNX export")
    from .pipeline_cmt import check_classification_model

    check_classification_model(model)
    model = model.eval()
    inputs = example_inputs(processor, model)
    batch = torch.export.Dim("batch")
    # Shorter audio than 0.1 s is refused by the processor anyway; the audio tower's front end needs some minimum
    # (645 samples for the tiny preset) and torch.export wants that bound stated.
    samples = torch.export.Dim("audio_samples", min=MIN_EXPORT_SAMPLES)
    tokens = torch.export.Dim("text_tokens", min=2)  # <s> and </s>
    shapes = {
        "input_values": {0: batch, 1: samples},
        "audio_attention_mask": {0: batch, 1: samples},
        "input_ids": {0: batch, 1: tokens},
        "attention_mask": {0: batch, 1: tokens},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # CMTModel checks that audio and text batch sizes agree with a Python set of sizes, which symbolic sizes cannot
    # enter; the check is host-side Python either way (an ONNX graph has no such check: the processor makes the
    # batches), so it is skipped while tracing.
    checks = model.cmt._check_input_shapes
    model.cmt._check_input_shapes = lambda *args, **kwargs: None
    arguments = tuple(inputs[name] for name in ONNX_INPUTS)
    try:
        with torch.no_grad():
            # strict: the non-strict tracer specialised a frame count to the example's (logits failed at other
            # lengths in ONNX Runtime)
            exported = torch.export.export(CMTLogits(model), arguments, dynamic_shapes=shapes, strict=True)
            program = torch.onnx.export(
                exported,
                arguments,
                input_names=list(ONNX_INPUTS),
                output_names=["logits"],
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
            )
    finally:
        model.cmt._check_input_shapes = checks
    proto = program.model_proto
    for value in [*proto.graph.input, *proto.graph.output]:
        for dimension, name in zip(value.type.tensor_type.shape.dim, ONNX_DIMENSIONS[value.name]):
            if dimension.dim_param:
                dimension.dim_param = name
    onnx.save(proto, str(path))
    return path


def quantize_int8(source: str | Path, path: str | Path) -> Path:
    """ONNX Runtime's dynamic int8 quantization of `source`: int8 weights (per channel) for MatMul / Gemm."""
    _require("onnxruntime", "int8 quantization")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source), str(path), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul", "Gemm"]
    )
    return Path(path)


def onnx_settings(model, processor) -> dict:
    """What `run_onnx.py` needs besides the model and the tokenizer: labels and the processor's settings."""
    config, extractor, tokenizer = model.config, processor.feature_extractor, processor.tokenizer
    text_config = config.text_config
    positions = text_config.max_position_embeddings - (text_config.pad_token_id + 1)  # RoBERTa's offset
    return {
        "id2label": {str(index): label for index, label in config.id2label.items()},
        "problem_type": config.problem_type
        or ("regression" if config.num_labels == 1 else "single_label_classification"),
        "sampling_rate": extractor.sampling_rate,
        "do_normalize": bool(extractor.do_normalize),
        "padding_value": float(extractor.padding_value),
        "min_input_samples": config.min_input_samples(),
        "max_text_length": int(min(tokenizer.model_max_length, positions)),
        "pad_token_id": int(tokenizer.pad_token_id),
        "inputs": list(ONNX_INPUTS),
        "default_model": DEFAULT_MODEL_FILE,
    }


README = """# {name}: ONNX export

Written by `cmt-export` from the CMT checkpoint in the folder above. Runs without PyTorch:

```bash
pip install numpy onnxruntime tokenizers
python run_onnx.py utterance.wav --text "I can't believe you did that!"          # 16 kHz mono or stereo 16-bit WAV
python run_onnx.py utterance.wav --text "..." --model model_int8.onnx           # the int8 model
```

| file | what |
|---|---|
| `model.onnx` | fp32, opset {opset}; inputs `input_values` (batch, audio_samples) float32, `audio_attention_mask` (batch, audio_samples), `input_ids` and `attention_mask` (batch, text_tokens), integers of the dtypes `CMTProcessor` gives (the graph declares them); output `logits` (batch, num_labels) |
| `model_int8.onnx` | the same with int8 weights (ONNX Runtime dynamic quantization) |
| `tokenizer.json` | the text tower's tokenizer (the `tokenizers` library) |
| `cmt_onnx.json` | labels and preprocessing settings |
| `run_onnx.py` | a runner: numpy + onnxruntime + tokenizers |

Preprocessing, as `CMTProcessor` does it: audio at {sampling_rate} Hz in [-1, 1], downmixed; each item normalised to
zero mean and unit variance over its real samples, then zero-padded to the longest item, with `audio_attention_mask`
1 on real samples; the transcript tokenized with `<s>` ... `</s>`, padded with token {pad_token_id} and truncated to
{max_text_length} tokens. Softmax over `logits` gives the label scores (labels in `cmt_onnx.json`).

From Python:

```python
from run_onnx import CMTOnnxClassifier

classifier = CMTOnnxClassifier(".")  # this folder
classifier([waveform_16k], ["I can't believe you did that!"])  # [[{{'label': ..., 'score': ...}}, ...]]
```
"""

RUNNER = Path(__file__).resolve().parent / "onnx_runner.py"


def export_checkpoint(checkpoint: str | Path, output_dir: str | Path | None = None, int8: bool = True) -> Path:
    """Exports the checkpoint folder (or Hub id) to `output_dir` (default `<checkpoint>/onnx`) with its tokenizer,
    settings, runner and README."""
    from transformers import AutoModelForSequenceClassification, AutoProcessor

    from . import CMTProcessor  # noqa: F401 - registers CMT with the Auto classes

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint)
    processor = AutoProcessor.from_pretrained(checkpoint)
    folder = Path(output_dir) if output_dir is not None else Path(checkpoint) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    export_onnx(model, processor, folder / FP32_FILE)
    if int8:
        quantize_int8(folder / FP32_FILE, folder / INT8_FILE)
    processor.tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    settings = onnx_settings(model, processor)
    (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=1), encoding="utf-8")
    shutil.copy(RUNNER, folder / "run_onnx.py")
    (folder / "README.md").write_text(
        README.format(name=Path(checkpoint).name, opset=OPSET, **settings), encoding="utf-8"
    )
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cmt-export", description="Export a CMT classification checkpoint to ONNX (fp32 and int8)."
    )
    parser.add_argument("checkpoint", help="Checkpoint folder (or Hub id) of a CMT classification model.")
    parser.add_argument("--output_dir", help="Where to write (default: <checkpoint>/onnx).")
    parser.add_argument("--no_int8", action="store_true", help="Skip the int8 model.")
    args = parser.parse_args(argv)
    if args.output_dir is None and not Path(args.checkpoint).is_dir():
        parser.error(f"{args.checkpoint!r} is not a local folder: pass --output_dir for a Hub id.")
    try:
        folder = export_checkpoint(args.checkpoint, args.output_dir, int8=not args.no_int8)
    except (ImportError, ValueError, OSError) as error:
        print(f"cmt-export: error: {error}", file=sys.stderr)
        return 1
    print(f"cmt-export: wrote {', '.join(sorted(p.name for p in folder.iterdir()))} to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["CMTLogits", "export_checkpoint", "export_onnx", "onnx_settings", "quantize_int8"]
