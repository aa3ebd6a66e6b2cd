"""cmt_training.build: the training scripts load checkpoints (CMT or towers) from safetensors weights only unless
`--allow_pickle`, and the processor they save truncates transcripts to what the text tower takes."""

import pytest
import torch
from transformers import (
    HfArgumentParser,
    HubertConfig,
    HubertModel,
    RobertaConfig,
    RobertaModel,
    RobertaTokenizerFast,
)

from cmt_training.arguments import ModelArguments
from cmt_training.build import build_model, build_processor
from modeling_cmt import CMTConfig, CMTForPreTraining, CMTForSequenceClassification, CMTModel, CMTProcessor
from modeling_cmt.modeling_cmt import CMTCheckpointError


def assert_same_weights(model, reference):
    expected = reference.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_allow_pickle_is_a_model_argument():
    (parsed,) = HfArgumentParser(ModelArguments).parse_args_into_dataclasses(["--preset", "tiny", "--allow_pickle"])
    assert parsed.allow_pickle is True
    assert ModelArguments(preset="tiny").allow_pickle is False


def test_a_pickle_only_cmt_checkpoint_needs_allow_pickle(tmp_path, processor, save_pickle_only):
    reference = CMTModel(CMTConfig.from_preset("tiny"))
    path = save_pickle_only(reference, tmp_path / "pickled", processor)
    model_args = ModelArguments(model_name_or_path=str(path))
    loaded_processor = build_processor(model_args, [], tmp_path)
    with pytest.raises(CMTCheckpointError, match=r"holds its weights only as a pickle .*`--allow_pickle`"):
        build_model(CMTForPreTraining, model_args, loaded_processor)
    model_args.allow_pickle = True
    model = build_model(CMTForPreTraining, model_args, loaded_processor)
    assert_same_weights(model.cmt, reference)


def test_pickle_only_towers_need_allow_pickle(tmp_path, processor, save_pickle_only):
    tiny = CMTConfig.from_preset("tiny")
    hubert = HubertModel(HubertConfig(**tiny.audio_config.to_dict()))
    audio = save_pickle_only(hubert, tmp_path / "audio")
    text = tmp_path / "text"
    RobertaModel(RobertaConfig(**tiny.text_config.to_dict()), add_pooling_layer=False).save_pretrained(text)
    model_args = ModelArguments(audio_model_name_or_path=str(audio), text_model_name_or_path=str(text))
    with pytest.raises(CMTCheckpointError, match=r"'.*audio' holds its weights only as a pickle"):
        build_model(CMTForSequenceClassification, model_args, processor, num_labels=4)
    model_args.allow_pickle = True  # the text tower still loads from its safetensors file
    model = build_model(CMTForSequenceClassification, model_args, processor, num_labels=4)
    assert_same_weights(model.cmt.audio_model, hubert)


def test_the_saved_processor_truncates_to_what_the_text_tower_takes(tmp_path, tokenizer_dir, feature_extractor):
    """A tokenizer that allows more tokens than the text tower's positions (512 > 128 for `tiny`) let a long
    transcript reach the model, which failed with `index 130 is out of bounds`."""
    tokenizer = RobertaTokenizerFast.from_pretrained(str(tokenizer_dir), model_max_length=512)
    processor = CMTProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)
    model = build_model(CMTForSequenceClassification, ModelArguments(preset="tiny"), processor, num_labels=4)
    assert tokenizer.model_max_length == 128
    processor.save_pretrained(tmp_path / "processor")
    inputs = CMTProcessor.from_pretrained(tmp_path / "processor")(text="word " * 600)
    assert inputs["input_ids"].shape == (1, 128)
    with torch.no_grad():
        model.cmt.get_text_features(inputs["input_ids"], inputs["attention_mask"])
