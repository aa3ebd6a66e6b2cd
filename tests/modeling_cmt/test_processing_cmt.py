"""CMTProcessor: audio conversion (rate, dtype, channels), separate masks, text handling, errors."""

import logging

import numpy as np
import pytest
import torch
import torchaudio
from transformers import RobertaTokenizerFast, Wav2Vec2FeatureExtractor
from transformers.tokenization_utils_base import VERY_LARGE_INTEGER

from modeling_cmt import CMTProcessor


@pytest.fixture
def raw_processor(tokenizer):
    """No normalisation, so sample values can be checked one to one."""
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=False)
    return CMTProcessor(feature_extractor=extractor, tokenizer=tokenizer)


def test_single_item_gives_separate_audio_and_text_masks(processor, tokenizer):
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    inputs = processor(audio=audio, text="Excuse me.", sampling_rate=16000)
    assert set(inputs) == {"input_values", "audio_attention_mask", "input_ids", "attention_mask"}
    assert inputs["input_values"].shape == inputs["audio_attention_mask"].shape == (1, 16000)
    assert inputs["input_ids"].shape == inputs["attention_mask"].shape
    assert inputs["input_ids"].shape[1] < 16000 and inputs["attention_mask"].sum() == inputs["input_ids"].shape[1]
    assert tokenizer.decode(inputs["input_ids"][0], skip_special_tokens=True) == "Excuse me."
    normalised = inputs["input_values"][0]
    assert abs(float(normalised.mean())) < 1e-3 and abs(float(normalised.std()) - 1) < 1e-2


def test_batch_of_mixed_lengths_is_padded_with_masks(raw_processor):
    audio = [np.full(100, 0.5, np.float32), np.full(300, -0.25, np.float32)]
    inputs = raw_processor(audio=audio, text=["Hi.", "Excuse me, where is the station?"], sampling_rate=16000)
    assert inputs["input_values"].shape == (2, 300)
    assert inputs["audio_attention_mask"].sum(-1).tolist() == [100, 300]
    assert torch.all(inputs["input_values"][0, 100:] == 0) and torch.all(inputs["input_values"][0, :100] == 0.5)
    assert inputs["attention_mask"].sum(-1).tolist()[0] < inputs["attention_mask"].sum(-1).tolist()[1]


def test_int16_is_scaled_to_float(raw_processor):
    samples = np.array([0, 16384, -32768, 32767] * 50, dtype=np.int16)
    inputs = raw_processor(audio=samples, sampling_rate=16000)
    expected = torch.tensor([0.0, 0.5, -1.0, 32767 / 32768] * 50)
    torch.testing.assert_close(inputs["input_values"][0], expected)


@pytest.mark.parametrize("channel_axis", [0, -1])
def test_multichannel_audio_is_downmixed_where_its_channel_axis_is_known(raw_processor, channel_axis):
    left, right = np.linspace(-1, 1, 500, dtype=np.float32), np.full(500, 0.5, np.float32)
    stereo = np.stack([left, right], axis=channel_axis)
    downmix = torch.from_numpy((left + right) / 2)
    inputs = raw_processor(audio=stereo, sampling_rate=16000, channel_axis=channel_axis)
    torch.testing.assert_close(inputs["input_values"], downmix[None])
    # an item of a list is one utterance: its one short axis holds the channels
    inputs = raw_processor(audio=[stereo, left], sampling_rate=16000)
    torch.testing.assert_close(inputs["input_values"], torch.stack([downmix, torch.from_numpy(left)]))
    with pytest.raises(ValueError, match=r"Audio item 0 has shape \(12, 10\): .* ambiguous. Pass `channel_axis`"):
        raw_processor(audio=[np.zeros((12, 10), np.float32)], sampling_rate=16000)


@pytest.mark.parametrize("to_tensor", [np.asarray, torch.from_numpy], ids=["numpy", "torch"])
def test_a_2d_array_is_a_batch_as_in_transformers_feature_extractors(raw_processor, to_tensor):
    """Issue 14, item 5: a (batch, samples) array of up to 16 utterances was averaged into one, read as channels."""
    batch = np.random.default_rng(0).standard_normal((4, 800)).astype(np.float32)
    texts = ["one", "two", "three", "four"]
    inputs = raw_processor(audio=to_tensor(batch), text=texts, sampling_rate=16000)
    assert inputs["input_values"].shape == (4, 800) and inputs["input_ids"].shape[0] == 4
    torch.testing.assert_close(inputs["input_values"], torch.from_numpy(batch))
    for row, text in enumerate(texts):
        single = raw_processor(audio=batch[row], text=text, sampling_rate=16000)
        torch.testing.assert_close(inputs["input_values"][row], single["input_values"][0])
    with pytest.raises(ValueError, match=r"4 audio items \(a 2-D array is a batch; .* pass `channel_axis`\) but 1"):
        raw_processor(audio=to_tensor(batch), text="one", sampling_rate=16000)
    with pytest.raises(ValueError, match=r"shape \(800, 4\): .* look like \(samples, channels\) audio"):
        raw_processor(audio=to_tensor(batch.T.copy()), sampling_rate=16000)


def test_other_sampling_rates_are_resampled_with_torchaudio(raw_processor):
    audio = np.sin(np.arange(8000) * 2 * np.pi * 440 / 8000).astype(np.float32)
    inputs = raw_processor(audio=torch.from_numpy(audio), sampling_rate=8000)
    expected = torchaudio.functional.resample(torch.from_numpy(audio), 8000, 16000)
    assert inputs["input_values"].shape == (1, 16000)
    torch.testing.assert_close(inputs["input_values"][0], expected)


def test_long_text_is_truncated_with_a_warning(processor, caplog):
    with caplog.at_level(logging.WARNING):
        inputs = processor(text=["word " * 400, "short"], max_text_length=32)
    assert inputs["input_ids"].shape == (2, 32)
    assert "Transcripts [0] are longer than 32 tokens" in caplog.text


def test_save_and_load_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = CMTProcessor.from_pretrained(tmp_path)
    audio = np.random.default_rng(1).standard_normal(4000).astype(np.float32)
    expected, actual = processor(audio=audio, text="Hi."), loaded(audio=audio, text="Hi.")
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"audio": np.zeros(0, np.float32)}, "Audio item 0 is empty"),
        ({"audio": np.array([0.0, np.nan, 0.0] * 100, np.float32)}, "Audio item 0 contains NaN"),
        ({"audio": [np.zeros(400, np.float32), np.zeros((300, 300), np.float32)]}, "Audio item 1 has shape"),
        ({"audio": np.array(["a", "b"])}, "expected numeric samples"),
        ({"text": ["fine", 3]}, "Transcript 1 must be a string, got int"),
        ({"audio": [np.zeros(400, np.float32)] * 2, "text": ["one"]}, "2 audio items but 1 transcripts"),
        ({}, "needs `audio`, `text` or both"),
        ({"audio": np.zeros(400, np.float32), "sampling_rate": 0}, "must be a positive whole number"),
        ({"audio": np.zeros(400, np.float32), "sampling_rate": "16000"}, r"got '16000' \(str\)"),
        ({"audio": np.zeros(400, np.float32), "sampling_rate": 16000.5}, r"whole number of Hz .* got 16000.5"),
        ({"audio": np.zeros(400, np.float32), "sampling_rate": True}, "whole number of Hz"),
        ({"text": 5}, r"`text` must be a transcript string or a non-empty list of them, got 5 \(int\)"),
        ({"text": []}, "`text` must be a transcript string or a non-empty list"),
    ],
)
def test_bad_input_is_named(processor, kwargs, message):
    kwargs = {"sampling_rate": 16000, **kwargs} if "audio" in kwargs else kwargs
    with pytest.raises(ValueError, match=message):
        processor(**kwargs)


def test_a_whole_float_sampling_rate_is_taken(raw_processor):
    audio = np.ones(400, np.float32)
    expected = raw_processor(audio=audio, sampling_rate=8000)["input_values"]
    torch.testing.assert_close(raw_processor(audio=audio, sampling_rate=8000.0)["input_values"], expected)
    torch.testing.assert_close(raw_processor(audio=audio, sampling_rate=np.int64(8000))["input_values"], expected)


def test_a_tokenizer_without_model_max_length_tokenizes_untruncated(feature_extractor, tokenizer_dir, caplog):
    """A tokenizer saved without `model_max_length` (transformers then reports 1e30) made every call raise
    OverflowError inside tokenizers."""
    tokenizer = RobertaTokenizerFast.from_pretrained(str(tokenizer_dir))
    tokenizer.model_max_length = VERY_LARGE_INTEGER
    processor = CMTProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)
    with caplog.at_level(logging.WARNING):
        inputs = processor(text=["word " * 300, "short"])
    assert inputs["input_ids"].shape[1] == len(tokenizer("word " * 300)["input_ids"]) > 128
    assert "The tokenizer has no `model_max_length`, so transcripts are not truncated" in caplog.text
    assert processor(text="short", max_text_length=3)["input_ids"].shape == (1, 3)


def test_text_token_limit_is_what_both_tokenizer_and_text_tower_take(feature_extractor, tokenizer_dir, tiny_config):
    tokenizer = RobertaTokenizerFast.from_pretrained(str(tokenizer_dir))
    processor = CMTProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)
    config = tiny_config()  # 130 RoBERTa positions: 128 tokens after the padding offset
    assert processor.text_token_limit(config) == 128
    processor.tokenizer.model_max_length = 64
    assert processor.text_token_limit(config) == 64
    processor.tokenizer.model_max_length = VERY_LARGE_INTEGER
    assert processor.text_token_limit(config) == 128


def test_items_too_short_for_the_model_are_named_after_resampling(processor, tiny_config):
    min_samples = tiny_config().min_input_samples()  # 325 at 16 kHz
    fits = processor(audio=np.ones(200, np.float32), sampling_rate=8000, min_audio_samples=min_samples)
    assert fits["input_values"].shape == (1, 400)
    with pytest.raises(ValueError, match=r"Audio item 1 is too short: 300 samples at 16000 Hz \(18.8 ms\), .* 325"):
        processor(
            audio=[np.ones(200, np.float32), np.ones(150, np.float32)], sampling_rate=8000, min_audio_samples=325
        )
    assert processor(audio=np.ones(150, np.float32), sampling_rate=8000)["input_values"].shape == (1, 300)
