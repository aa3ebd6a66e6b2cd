"""CMTConfig: validation on init, on assignment and on save; presets and their overrides; the audio front end's
arithmetic; the custom pipeline entry of checkpoints."""

import json

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError
from transformers import HubertConfig, HubertModel

from modeling_cmt import CMTConfig, CMTForSequenceClassification, list_presets, load_preset, merge_config_values


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"modality": "audio"}, "set `num_cross_layers=0`"),
        ({"pooling": "layer_pooler", "num_cross_layers": 0}, "needs `num_cross_layers` > 0"),
        ({"cross_hidden_state_index": 5}, "`cross_hidden_state_index` must be in"),
        ({"cross_num_attention_heads": 5}, "divisible by `cross_num_attention_heads`"),
        ({"num_cross_layers": -1}, "must be >= 0"),
        ({"feature_encoder_chunk_samples": 0}, "`feature_encoder_chunk_samples` must be a positive number"),
        ({"ortho_weight": -0.1}, "`ortho_weight` must be >= 0"),
        ({"codebook_layer": 7}, r"`codebook_layer` must be in \[0, 2\]"),
        ({"audio_config": {"model_type": "bert"}}, "wav2vec2-family"),
    ],
)
def test_invalid_config_values_name_the_offending_value(tiny_config, overrides, message):
    with pytest.raises(StrictDataclassClassValidationError, match=message) as error:
        tiny_config(**overrides)
    assert isinstance(error.value.__cause__, ValueError)


@pytest.mark.parametrize(
    "field,value",
    [("modality", "video"), ("pooling", "max"), ("cross_layer_init", "copy"), ("positional_conv_implementation", "x")],
)
def test_choice_fields_refuse_unknown_values_on_init_and_assignment(tiny_config, field, value):
    with pytest.raises(StrictDataclassFieldValidationError, match=f"'{field}' expected one of"):
        tiny_config(**{field: value})
    config = tiny_config()
    with pytest.raises(StrictDataclassFieldValidationError, match=f"'{field}' expected one of"):
        setattr(config, field, value)


def test_an_invalid_config_cannot_be_saved(tiny_config, tmp_path):
    config = tiny_config(pooling="layer_pooler")
    config.num_cross_layers = 0  # each field is valid alone; together they are not
    with pytest.raises(StrictDataclassClassValidationError, match="needs `num_cross_layers` > 0"):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(
        ValueError, match="Unknown preset 'cmt-huge'. Available presets: cmt-4, cmt-base, cmt-large, demo, tiny"
    ):
        CMTConfig.from_preset("cmt-huge")
    assert list_presets() == ["cmt-4", "cmt-base", "cmt-large", "demo", "tiny"]


def test_presets_describe_the_paper_models():
    cmt4, base, large = (CMTConfig.from_preset(name) for name in ("cmt-4", "cmt-base", "cmt-large"))
    assert cmt4.num_cross_layers == 4 and cmt4.audio_config.hidden_size == 768 and cmt4.text_config.hidden_size == 768
    assert base.audio_config.num_hidden_layers + base.num_cross_layers == 12
    assert large.audio_config.hidden_size == large.text_config.hidden_size == 1024
    assert large.audio_config.do_stable_layer_norm and large.cross_layer_init == "random"


def test_preset_overrides_merge_tower_values_key_by_key():
    preset = load_preset("tiny")["config"]
    config = CMTConfig.from_preset(
        "tiny", text_config={"vocab_size": 2000}, audio_config={"layerdrop": 0.1}, ortho_weight=0.5
    )
    assert (
        config.text_config.vocab_size == 2000 and config.audio_config.layerdrop == 0.1 and config.ortho_weight == 0.5
    )
    assert config.text_config.hidden_size == preset["text_config"]["hidden_size"] == 32  # the rest of the preset
    assert config.audio_config.conv_stride == preset["audio_config"]["conv_stride"]
    merged = merge_config_values(preset, {"text_config": {"model_type": "bert", "vocab_size": 10}})
    assert merged["text_config"] == {"model_type": "bert", "vocab_size": 10}  # another tower type replaces the tower
    unchanged = load_preset("tiny")["config"]
    assert unchanged == preset  # merging never writes into the preset


def test_audio_front_end_arithmetic_matches_the_tower(tiny_config):
    config = tiny_config()
    tower = HubertModel(HubertConfig(**config.audio_config.to_dict()))
    lengths = torch.tensor([0, 100, 324, 325, 644, 645, 8000, 16000])
    expected = tower._get_feat_extract_output_lengths(lengths).clamp(min=0)
    assert torch.equal(config.audio_frames(lengths), expected)
    assert [config.audio_frames(int(n)) for n in lengths] == expected.tolist()
    assert config.min_input_samples() == 325  # 20 ms at 16 kHz: one frame of the tiny tower
    assert config.audio_frames(config.min_input_samples()) == 1 and config.audio_frames(324) == 0
    assert CMTConfig.from_preset("cmt-4").min_input_samples() == 400  # hubert-base: 25 ms


def test_runtime_knobs_travel_with_the_checkpoint_and_can_be_overridden(tiny_config, tmp_path):
    CMTForSequenceClassification(tiny_config(feature_encoder_chunk_samples=8000)).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["positional_conv_implementation"] == "auto" and saved["feature_encoder_chunk_samples"] == 8000
    model = CMTForSequenceClassification.from_pretrained(
        tmp_path, positional_conv_implementation="conv", feature_encoder_chunk_samples=None
    )
    assert model.config.feature_encoder_chunk_samples is None
    audio_model = model.cmt.audio_model
    assert type(audio_model.feature_extractor).__name__ == "HubertFeatureEncoder"
    assert type(audio_model.encoder.pos_conv_embed).__name__ == "HubertPositionalConvEmbedding"


def test_installed_pipelines_are_left_out_of_loaded_configs(tiny_config):
    """The package's own pipeline is registered in-process: `pipeline()` must find it there, not in config.json."""
    ours = {"impl": "pipeline_cmt.AudioTextClassificationPipeline", "pt": ["AutoModelForSequenceClassification"]}
    other = {"impl": "pipeline_other.OtherPipeline", "pt": []}
    config = tiny_config(custom_pipelines={"audio-text-classification": ours, "other-task": other})
    assert config.custom_pipelines == {"other-task": other}
    assert not hasattr(tiny_config(custom_pipelines={"audio-text-classification": ours}), "custom_pipelines")
