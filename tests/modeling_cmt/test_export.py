"""ONNX export (modeling_cmt/export.py, `cmt-export`): ONNX Runtime logits equal PyTorch's on padded batches of sizes
and lengths the export never saw, the int8 model stays close, and the exported folder runs without PyTorch.

One export per session (torch.export traces the model once, about 30-60 s on one core)."""

import json
import sys

import numpy as np
import pytest
import torch

from modeling_cmt import CMTForSequenceClassification, CMTModel, CMTProcessor
from modeling_cmt.export import FP32_FILE, INT8_FILE, export_onnx, main


onnxruntime = pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")
pytest.importorskip("onnxscript", reason="the export extra (onnxscript) is not installed")
# Float32 logits through different kernels (oneDNN vs ONNX Runtime's MLAS) differ by rounding only.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory, no_dropout_config, tokenizer_dir):
    """A tiny classifier (layer-norm feature encoder: padding-invariant) saved with its processor and exported by
    `cmt-export` beside itself."""
    from transformers import RobertaTokenizerFast, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    checkpoint = tmp_path_factory.mktemp("checkpoint")
    config = no_dropout_config(id2label={0: "ang", 1: "hap", 2: "neu", 3: "sad"})
    model = CMTForSequenceClassification(config).eval()
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=True)
    processor = CMTProcessor(
        feature_extractor=extractor, tokenizer=RobertaTokenizerFast.from_pretrained(tokenizer_dir)
    )
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    assert main([str(checkpoint)]) == 0
    return checkpoint, model, processor


def batch(processor, lengths, texts, seed=0):
    rng = np.random.default_rng(seed)
    audio = [rng.standard_normal(length).astype(np.float32) * 0.1 for length in lengths]
    return audio, processor(audio=audio, text=texts, sampling_rate=16000, return_tensors="pt")


CASES = {
    "one item": ((12345,), ["Hello."]),
    "padded batch of 3": ((40000, 9000, 20500), ["The meeting was lovely but long.", "Bad.", "I am so angry now."]),
    "long audio, long text": ((16000 * 12, 4000), ["word " * 60, "short"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_onnx_runtime_logits_match_pytorch(exported, case):
    checkpoint, model, processor = exported
    lengths, texts = CASES[case]
    _, inputs = batch(processor, lengths, texts)
    with torch.no_grad():
        expected = model(**inputs).logits.numpy()
    session = onnxruntime.InferenceSession(str(checkpoint / "onnx" / FP32_FILE), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {name: tensor.numpy() for name, tensor in inputs.items()})[0]
    np.testing.assert_allclose(logits, expected, atol=TOLERANCE, rtol=0)


def test_onnx_inputs_are_dynamic_and_named(exported):
    import onnx

    checkpoint, _, _ = exported
    graph = onnx.load(str(checkpoint / "onnx" / FP32_FILE)).graph
    shapes = {
        value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim] for value in graph.input
    }
    assert shapes == {
        "input_values": ["batch", "audio_samples"],
        "audio_attention_mask": ["batch", "audio_samples"],
        "input_ids": ["batch", "text_tokens"],
        "attention_mask": ["batch", "text_tokens"],
    }


def test_int8_model_is_smaller_and_close(exported):
    checkpoint, model, processor = exported
    folder = checkpoint / "onnx"
    _, inputs = batch(processor, *CASES["padded batch of 3"])
    feeds = {name: tensor.numpy() for name, tensor in inputs.items()}
    fp32 = onnxruntime.InferenceSession(str(folder / FP32_FILE), providers=["CPUExecutionProvider"])
    int8 = onnxruntime.InferenceSession(str(folder / INT8_FILE), providers=["CPUExecutionProvider"])
    reference, quantized = fp32.run(None, feeds)[0], int8.run(None, feeds)[0]
    assert quantized.shape == reference.shape and np.isfinite(quantized).all()
    assert np.abs(quantized - reference).max() < 0.1  # random tiny weights: a loose bound, the benchmark measures
    assert (folder / INT8_FILE).stat().st_size < (folder / FP32_FILE).stat().st_size


def test_exported_folder_runs_without_pytorch(exported, fresh_python, tmp_path, write_wav):
    checkpoint, model, processor = exported
    folder = checkpoint / "onnx"
    assert {"README.md", "run_onnx.py", "tokenizer.json", "cmt_onnx.json", FP32_FILE, INT8_FILE} <= {
        path.name for path in folder.iterdir()
    }
    audio, inputs = batch(processor, (20000, 7000), ["What a lovely surprise.", "Terrible."], seed=3)
    paths = [
        write_wav(tmp_path / f"{index}.wav", np.round(a * 32767).astype(np.int16)) for index, a in enumerate(audio)
    ]
    code = (
        "import sys, runpy\n"
        "sys.modules['torch'] = None; sys.modules['transformers'] = None\n"  # any import of them fails
        f"sys.argv = ['run_onnx.py', {str(paths[0])!r}, {str(paths[1])!r}, '--text', 'What a lovely surprise.', "
        "'--text', 'Terrible.']\n"
        f"runpy.run_path({str(folder / 'run_onnx.py')!r}, run_name='__main__')\n"
    )
    completed = fresh_python(code, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    predictions = [json.loads(line)["prediction"] for line in completed.stdout.splitlines()]
    decoded = [np.round(a * 32767).astype(np.int16).astype(np.float32) / 32768 for a in audio]
    with torch.no_grad():
        inputs = processor(audio=decoded, text=["What a lovely surprise.", "Terrible."], sampling_rate=16000)
        expected = model(**inputs).logits.softmax(-1).numpy()
    for prediction, scores in zip(predictions, expected):
        assert prediction[0]["label"] == model.config.id2label[int(scores.argmax())]
        got = {entry["label"]: entry["score"] for entry in prediction}
        assert [got[model.config.id2label[i]] for i in range(4)] == pytest.approx(scores.tolist(), abs=TOLERANCE)


def test_bare_model_and_missing_extra_are_refused(tiny_config, processor, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="CMTForSequenceClassification"):
        export_onnx(CMTModel(tiny_config()), processor, tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ImportError, match=r"cmt-speech\[export\]"):
        export_onnx(CMTForSequenceClassification(tiny_config()), processor, tmp_path / "m.onnx")
