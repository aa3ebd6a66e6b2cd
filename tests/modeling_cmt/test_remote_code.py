"""A saved checkpoint loads through the Auto classes with trust_remote_code in a fresh process that cannot import
the package, and reproduces the logits."""

import json

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoProcessor

from modeling_cmt import CMTConfig, CMTForSequenceClassification, CMTModel


FRESH_PROCESS = r"""
import json, sys
sys.modules["modeling_cmt"] = None  # everything must come from the checkpoint's own code
import numpy as np, torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoProcessor

path = sys.argv[1]
config = AutoConfig.from_pretrained(path, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
classifier = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True).eval()
base = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
audio = list(np.load(path + "/audio.npy"))
inputs = processor(audio=audio, text=["I am so happy today!", "This is terrible."], sampling_rate=16000)
with torch.no_grad():
    logits = classifier(**inputs).logits
    pooled = base(**inputs).audio_pooled_output
torch.save({"logits": logits, "pooled": pooled, "input_values": inputs["input_values"]}, path + "/fresh.pt")
print(json.dumps({
    "config": type(config).__module__, "processor": type(processor).__module__,
    "classifier": type(classifier).__module__, "base": type(base).__name__,
}))
"""


def test_fresh_process_loads_with_trust_remote_code(tmp_path, processor, fresh_python):
    checkpoint = tmp_path / "cmt-tiny"
    model = CMTForSequenceClassification(CMTConfig.from_preset("tiny", num_labels=4)).eval()
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    for name in ("modeling_cmt.py", "configuration_cmt.py", "tower_patches.py", "processing_cmt.py"):
        assert (checkpoint / name).is_file(), name
    auto_map = json.loads((checkpoint / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_cmt.CMTModel"
    assert auto_map["AutoModelForSequenceClassification"] == "modeling_cmt.CMTForSequenceClassification"

    audio = np.random.default_rng(0).standard_normal((2, 6000)).astype(np.float32) * 0.1
    np.save(checkpoint / "audio.npy", audio)
    inputs = processor(audio=list(audio), text=["I am so happy today!", "This is terrible."], sampling_rate=16000)
    with torch.no_grad():
        expected_logits = model(**inputs).logits
        expected_pooled = model.cmt(**inputs).audio_pooled_output

    result = fresh_python(FRESH_PROCESS, checkpoint, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    modules = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(modules[key].startswith("transformers_modules") for key in ("config", "processor", "classifier"))
    assert modules["base"] == "CMTModel"
    fresh = torch.load(checkpoint / "fresh.pt")
    assert torch.equal(fresh["input_values"], inputs["input_values"])
    torch.testing.assert_close(fresh["logits"], expected_logits, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(fresh["pooled"], expected_pooled, atol=1e-6, rtol=1e-6)


def test_in_process_auto_classes_after_import(tmp_path, processor):
    model = CMTForSequenceClassification(CMTConfig.from_preset("tiny", num_labels=2))
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), CMTConfig)
    assert isinstance(AutoModel.from_pretrained(tmp_path), CMTModel)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert isinstance(loaded, CMTForSequenceClassification)
    assert type(AutoProcessor.from_pretrained(tmp_path)).__name__ == "CMTProcessor"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
