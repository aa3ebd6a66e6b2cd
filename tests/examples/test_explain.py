"""examples/explain.py: cross-attention heatmaps (frames x words), layer-pooler weights and the modality ablation."""

import importlib.util
import json
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import HubertConfig, HubertModel, RobertaTokenizerFast, Wav2Vec2FeatureExtractor

from modeling_cmt import CMTConfig, CMTForSequenceClassification, CMTProcessor
from modeling_cmt.modeling_cmt import CMTCheckpointError


REPO_ROOT = Path(__file__).resolve().parents[2]
EMOTIONS = ["ang", "hap", "neu", "sad"]
TEXT = "I feel sad and tired, nothing went well today."
WORDS = ["I", "feel", "sad", "and", "tired,", "nothing", "went", "well", "today."]


def _import_explain():
    spec = importlib.util.spec_from_file_location("cmt_test_explain", REPO_ROOT / "examples" / "explain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


explain = _import_explain()


def save_checkpoint(path, tokenizer, **config_kwargs):
    torch.manual_seed(0)
    labels = {"id2label": dict(enumerate(EMOTIONS)), "label2id": {name: i for i, name in enumerate(EMOTIONS)}}
    config = CMTConfig.from_preset("tiny", num_labels=4, **labels, **config_kwargs)
    model = CMTForSequenceClassification(config).eval()
    model.save_pretrained(path)
    feature_extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, return_attention_mask=True)
    processor = CMTProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)
    processor.save_pretrained(path)
    return model, processor


def write_wav(path, num_samples: int, rate: int = 16000):
    samples = (np.random.default_rng(0).standard_normal(num_samples) * 3000).astype(np.int16)
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(samples.tobytes())
    return path


def test_explain_writes_png_and_json_matching_the_input(tmp_path, tokenizer):
    model, processor = save_checkpoint(tmp_path / "cmt", tokenizer, pooling="layer_pooler")
    audio = write_wav(tmp_path / "utterance.wav", 16000)
    argv = ["--model_name_or_path", str(tmp_path / "cmt"), "--audio", str(audio), "--text", TEXT]
    explanation = explain.main(argv + ["--output_dir", str(tmp_path / "out")])

    png = (tmp_path / "out" / "utterance.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    saved = json.loads((tmp_path / "out" / "utterance.json").read_text())
    assert saved == json.loads(json.dumps(explanation))

    frames = model.config.audio_frames(16000)
    assert saved["words"] == ["<s>", *WORDS, "</s>"]
    assert saved["frames"] == frames and saved["heatmap_shape"] == [frames, len(WORDS) + 2]
    assert len(saved["cross_attention"]) == model.config.num_cross_layers
    for heatmap in saved["cross_attention"]:
        heatmap = np.asarray(heatmap)
        assert heatmap.shape == (frames, len(WORDS) + 2)
        np.testing.assert_allclose(heatmap.sum(axis=1), 1.0, atol=1e-5)  # each frame's attention, all on the words

    assert saved["pooling"] == "layer_pooler"
    np.testing.assert_allclose(saved["layer_pooler_weights"], [0.5, 0.5])  # zero-initialised logits: uniform
    inputs = processor(audio=np.zeros(16000, np.float32), text=TEXT, sampling_rate=16000)
    with torch.no_grad():
        silent = model(**inputs).logits[0].softmax(-1).tolist()
    ablation = saved["ablation"]
    assert list(ablation) == ["full", "silent_audio", "empty_text"]
    np.testing.assert_allclose([ablation["silent_audio"][label] for label in EMOTIONS], silent, atol=1e-5)
    for scores in ablation.values():
        assert list(scores) == EMOTIONS and sum(scores.values()) == pytest.approx(1.0)


def test_explain_function_with_mean_pooling(tmp_path, tokenizer):
    model, processor = save_checkpoint(tmp_path / "cmt", tokenizer)
    audio = np.random.default_rng(1).standard_normal(12000).astype(np.float32) * 0.1
    explanation = explain.explain(model, processor, {"array": audio, "sampling_rate": 8000}, "Hello there!")
    frames = model.config.audio_frames(24000)  # resampled to 16 kHz
    assert explanation["heatmap_shape"] == [frames, 4]  # <s> Hello there! </s>
    assert explanation["words"] == ["<s>", "Hello", "there!", "</s>"]
    assert explanation["pooling"] == "mean" and explanation["layer_pooler_weights"] is None
    explain.plot(explanation, tmp_path / "mean.png")
    assert (tmp_path / "mean.png").read_bytes().startswith(b"\x89PNG")

    with pytest.raises(ValueError, match="too short"):
        explain.explain(model, processor, {"array": audio[:100], "sampling_rate": 16000}, "Hello")


# --- loading and bad inputs (issue 14) ---------------------------------------------------------------------------


def test_a_pickle_only_checkpoint_needs_allow_pickle(tmp_path, tokenizer, save_pickle_only):
    model, processor = save_checkpoint(tmp_path / "safe", tokenizer)
    pickled = save_pickle_only(model, tmp_path / "pickled", processor)
    audio = write_wav(tmp_path / "utterance.wav", 16000)
    argv = ["--model_name_or_path", str(pickled), "--audio", str(audio), "--text", TEXT]
    with pytest.raises(CMTCheckpointError, match=r"holds its weights only as a pickle .*`--allow_pickle`"):
        explain.main(argv + ["--output_dir", str(tmp_path / "refused")])
    assert not (tmp_path / "refused" / "utterance.json").exists()
    allowed = explain.main(argv + ["--output_dir", str(tmp_path / "allowed"), "--allow_pickle"])
    argv[1] = str(tmp_path / "safe")
    assert allowed["ablation"] == explain.main(argv + ["--output_dir", str(tmp_path / "out")])["ablation"]


def test_model_type_and_output_folder_are_checked_before_the_model_loads(tmp_path, tokenizer, monkeypatch):
    save_checkpoint(tmp_path / "cmt", tokenizer)
    hubert = tmp_path / "hubert"
    HubertModel(HubertConfig(**CMTConfig.from_preset("tiny").audio_config.to_dict())).save_pretrained(hubert)
    audio = write_wav(tmp_path / "utterance.wav", 16000)

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the checks")

    monkeypatch.setattr(explain.AutoModelForSequenceClassification, "from_pretrained", refuse)
    argv = ["--audio", str(audio), "--text", TEXT, "--output_dir"]
    with pytest.raises(ValueError, match=r"'.*hubert' is a 'hubert' model, not a CMT classification checkpoint"):
        explain.main(["--model_name_or_path", str(hubert), *argv, str(tmp_path / "out")])
    with pytest.raises(ValueError, match=r"--output_dir .*utterance.wav/out cannot be written to"):
        explain.main(["--model_name_or_path", str(tmp_path / "cmt"), *argv, str(audio / "out")])


def test_a_transcript_longer_than_the_text_tower_is_truncated(tmp_path, tokenizer_dir):
    """With a tokenizer that allows 512 tokens and a text tower of 128 positions, a 600-token transcript failed
    inside the embedding (`index 130 is out of bounds`)."""
    tokenizer = RobertaTokenizerFast.from_pretrained(str(tokenizer_dir), model_max_length=512)
    model, processor = save_checkpoint(tmp_path / "cmt", tokenizer)
    audio = np.random.default_rng(2).standard_normal(16000).astype(np.float32) * 0.1
    explanation = explain.explain(model, processor, {"array": audio, "sampling_rate": 16000}, "word " * 600)
    assert len(explanation["tokens"]) == 128 and explanation["tokens"][-1] == "</s>"
