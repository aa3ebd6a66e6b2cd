"""examples/run_tower_pretrain.py: single-modal self-supervised towers saved as plain transformers checkpoints that
start CMT the way the Hub towers do."""

import json

import numpy as np
import pytest
import torch
from transformers import HubertConfig, HubertModel, RobertaModel, RobertaTokenizerFast, Wav2Vec2FeatureExtractor

from modeling_cmt import CMTConfig, CMTModel, CMTProcessor


COMMON = [
    "--preset", "tiny", "--task", "synthetic_emotion", "--synthetic_size", "80", "--test_fold", "1",
    "--max_audio_seconds", "3", "--per_device_train_batch_size", "8", "--learning_rate", "3e-3",
    "--warmup_steps", "0", "--logging_steps", "1", "--save_strategy", "no", "--disable_tqdm", "true",
    "--dataloader_pin_memory", "false", "--seed", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def towers(synthetic_cache, tmp_path_factory, example_script):
    """An audio and a text tower pretrained on fold 1's training split (labels unused) of the tiny corpus."""
    script = example_script("run_tower_pretrain")
    root = tmp_path_factory.mktemp("towers")
    data = ["--cache_dir", str(synthetic_cache)]
    audio = script.main(
        ["--tower", "audio", *COMMON, *data, "--num_train_epochs", "15", "--num_units", "8", "--pitch_bins", "4",
         "--energy_bins", "4", "--mask_time_prob", "0.3", "--mask_time_length", "4", "--learning_rate", "5e-3",
         "--output_dir", str(root / "hubert")]
    )  # fmt: skip
    text = script.main(
        ["--tower", "text", *COMMON, *data, "--num_train_epochs", "8", "--output_dir", str(root / "roberta")]
    )
    return root, audio, text


def _mean_loss(results, part):
    losses = [entry["loss"] for entry in results["log_history"] if "loss" in entry]
    third = max(1, len(losses) // 3)
    return float(np.mean(losses[:third] if part == "first" else losses[-third:]))


def test_audio_tower_learns_the_masked_frame_targets(towers):
    root, audio, _ = towers
    assert audio["target_sets"] == ["units", "pitch", "energy"]
    assert audio["targets"]["units_used"] == 8 and len(audio["targets"]["bin_edges"]["pitch"]) == 3
    chance = np.log(8) + np.log(4) + np.log(4)
    assert _mean_loss(audio, "first") == pytest.approx(chance, abs=0.4)  # starts near uniform guessing
    assert _mean_loss(audio, "last") < min(_mean_loss(audio, "first"), chance) - 0.25
    assert json.loads((root / "hubert" / "tower_results.json").read_text())["tower"] == "audio"


def test_text_tower_learns_masked_words(towers):
    _, _, text = towers
    assert _mean_loss(text, "last") < _mean_loss(text, "first") - 1.0


def test_tower_checkpoints_load_with_plain_transformers_and_start_cmt(towers):
    root, _, _ = towers
    hubert, info = HubertModel.from_pretrained(root / "hubert", output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    roberta, info = RobertaModel.from_pretrained(root / "roberta", output_loading_info=True)
    # a masked-LM checkpoint has no pooler (CMT reads token states, never RoBERTa's pooler) and an MLM head
    assert info["missing_keys"] <= {"pooler.dense.weight", "pooler.dense.bias"} and not info["mismatched_keys"], info
    assert all(key.startswith("lm_head.") for key in info["unexpected_keys"]), info
    assert type(Wav2Vec2FeatureExtractor.from_pretrained(root / "hubert")) is Wav2Vec2FeatureExtractor
    tokenizer = RobertaTokenizerFast.from_pretrained(root / "roberta")
    assert tokenizer.mask_token_id == 4 and tokenizer.model_max_length == roberta.config.max_position_embeddings - 2

    # CMT starts from them as from facebook/hubert-base-ls960 + FacebookAI/roberta-base: the same tower outputs
    model = CMTModel.from_audio_text_pretrained(root / "hubert", root / "roberta").eval()
    processor = CMTProcessor.from_audio_text_pretrained(root / "hubert", root / "roberta")
    waveform = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    inputs = processor(audio=waveform, text="I am so happy today.", return_tensors="pt")
    hubert.eval(), roberta.eval()
    with torch.no_grad():
        audio_states = model.audio_model(inputs["input_values"]).last_hidden_state
        text_states = model.text_model(inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        expected_text = roberta(inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        # (CMT's audio tower computes the positional convolution by FFT: equal to float rounding)
        torch.testing.assert_close(
            audio_states, hubert(inputs["input_values"]).last_hidden_state, atol=1e-4, rtol=1e-4
        )
        torch.testing.assert_close(text_states, expected_text)


def test_a_second_run_into_the_same_folder_is_refused(towers, synthetic_cache, example_script):
    root, _, _ = towers
    script = example_script("run_tower_pretrain")
    with pytest.raises(ValueError, match="already holds results"):
        script.main(
            ["--tower", "text", *COMMON, "--cache_dir", str(synthetic_cache), "--output_dir", str(root / "roberta")]
        )


def test_frame_features_follow_the_tower_frames_and_the_pitch(example_script):
    script = example_script("run_tower_pretrain")
    config = HubertConfig(**CMTConfig.from_preset("demo").audio_config.to_dict())
    features = script.FrameFeatures(config)
    frames = HubertModel(config)._get_feat_extract_output_lengths
    time = np.arange(24000) / 16000
    for hertz in (120.0, 220.0):
        tone = (0.3 * np.sin(2 * np.pi * hertz * time)).astype(np.float32)
        mfcc, pitch, energy = features(tone)
        assert mfcc.shape == (int(frames(torch.tensor(24000))), 39) and len(pitch) == len(energy) == len(mfcc)
        assert np.median(np.exp(pitch)) == pytest.approx(hertz, rel=0.05)
        assert np.median(energy) == pytest.approx(np.log(0.3**2 / 2), abs=0.2)  # mean power of the sine
    for length in (5000, 16001, 40000):
        assert len(features(np.zeros(length, dtype=np.float32))[0]) == int(frames(torch.tensor(length)))


def test_the_tower_argument_is_checked(example_script):
    script = example_script("run_tower_pretrain")
    with pytest.raises(ValueError, match="--tower must be audio or text"):
        script.TowerArguments(tower="video")


def test_the_frame_position_probe_scores_every_layer(towers, synthetic_cache, example_script, tmp_path):
    root, _, _ = towers
    script = example_script("probe_frame_position")
    argv = ["--audio_model_name_or_path", root / "hubert", "--synthetic_size", "80", "--num_fit", "10",
            "--num_score", "6", "--cache_dir", synthetic_cache, "--output", tmp_path / "probe.json"]  # fmt: skip
    results = script.main([str(argument) for argument in argv])
    layers = HubertModel.from_pretrained(root / "hubert").config.num_hidden_layers
    assert len(results["r2_by_layer"]) == layers + 1 and all(r2 <= 1.0 for r2 in results["r2_by_layer"])
    assert json.loads((tmp_path / "probe.json").read_text())["r2_by_layer"] == results["r2_by_layer"]
    with pytest.raises(SystemExit, match="exists"):  # a result is never overwritten
        script.main([str(argument) for argument in argv])


def test_more_units_than_frames_and_a_missing_session_are_named(synthetic_cache, example_script, tmp_path):
    script = example_script("run_tower_pretrain")
    argv = ["--tower", "audio", *COMMON, "--cache_dir", str(synthetic_cache), "--num_units", "1000000"]
    with pytest.raises(ValueError, match="fewer than --num_units 1000000"):
        script.main([*argv, "--output_dir", str(tmp_path / "hubert")])
    probe = example_script("probe_frame_position")
    with pytest.raises(SystemExit, match="--session 9: the corpus has"):
        probe.main(["--preset", "tiny", "--synthetic_size", "80", "--session", "9", "--cache_dir", str(synthetic_cache),
                    "--output", str(tmp_path / "probe.json")])  # fmt: skip
