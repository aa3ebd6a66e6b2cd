"""The Inference Endpoints handler a Hub folder carries (cmt_training/endpoint_handler.py, written by
`write_model_card` / `write_endpoint_handler`), called locally the way Endpoints call it: in a fresh process where
the `cmt-speech` package cannot be imported, on the folder's own remote code."""

import json

import numpy as np
import pytest
from transformers import pipeline

from cmt_training.model_card import write_endpoint_handler, write_model_card
from modeling_cmt import CMTForSequenceClassification


CALL = r"""
import base64, importlib.util, json, sys
sys.modules["modeling_cmt"] = None; sys.modules["cmt_training"] = None  # only the folder's own code
folder, wav, text = sys.argv[1], sys.argv[2], sys.argv[3]
spec = importlib.util.spec_from_file_location("handler", f"{folder}/handler.py")
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
handler = module.EndpointHandler(folder)
audio = open(wav, "rb").read()
results = {
    "base64": handler({"inputs": base64.b64encode(audio).decode(), "parameters": {"text": text}}),
    "dict": handler({"inputs": {"audio": base64.b64encode(audio).decode(), "text": text}, "parameters": {"top_k": 1}}),
    "bytes": handler({"inputs": audio, "parameters": {"text": text}}),
}
errors = {}
for name, request in {"empty": {"inputs": b""}, "not base64": {"inputs": "%%%"}, "no inputs": {"audio": 1},
                      "unknown": {"inputs": audio, "parameters": {"nope": 1}}}.items():
    try:
        handler(request)
    except ValueError as error:
        errors[name] = str(error)
print(json.dumps({"results": results, "errors": errors}))
"""


@pytest.fixture
def hub_folder(tmp_path, tiny_config, processor):
    import modeling_cmt  # noqa: F401 - registers the auto classes, so save_pretrained writes the remote code

    model = CMTForSequenceClassification(tiny_config(id2label={0: "ang", 1: "hap", 2: "neu", 3: "sad"})).eval()
    folder = tmp_path / "hub"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, processor


def test_handler_serves_the_folder_without_the_package(hub_folder, fresh_python, tmp_path, write_wav):
    folder, model, processor = hub_folder
    assert write_endpoint_handler(folder) == folder / "handler.py"
    assert "torchcodec" in (folder / "requirements.txt").read_text()
    samples = (np.random.default_rng(0).standard_normal(16000) * 3000).astype(np.int16)
    wav = write_wav(tmp_path / "a.wav", samples)
    text = "What a lovely surprise."
    completed = fresh_python(CALL, folder, wav, text, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    output = json.loads(completed.stdout.strip().splitlines()[-1])

    expected = pipeline("audio-text-classification", model=model, processor=processor)(str(wav), text=text)
    for name in ("base64", "bytes"):
        assert [entry["label"] for entry in output["results"][name]] == [entry["label"] for entry in expected]
        got = [entry["score"] for entry in output["results"][name]]
        assert got == pytest.approx([entry["score"] for entry in expected], abs=1e-5)
    assert len(output["results"]["dict"]) == 1 and output["results"]["dict"][0]["label"] == expected[0]["label"]
    errors = output["errors"]
    assert "no audio (0 bytes)" in errors["empty"]
    assert "base64" in errors["not base64"]
    assert '"inputs"' in errors["no inputs"]
    assert "Unknown parameters ['nope']" in errors["unknown"]


def test_model_card_writes_the_handler(tmp_path):
    summary = {
        "protocol": {
            "corpus": "synthetic_emotion", "description": "d", "split": "s", "checkpoint_selection": "c",
            "seed": 0, "command": "x", "metric_variants": {},
        },
        "aggregate": {"ua": {"mean": 0.5, "std": 0.0, "n": 1}},
    }  # fmt: skip
    write_model_card(tmp_path, summary)
    assert (tmp_path / "handler.py").is_file() and (tmp_path / "README.md").is_file()
    assert "class EndpointHandler" in (tmp_path / "handler.py").read_text()
