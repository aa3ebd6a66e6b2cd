"""The audio-text-classification pipeline: every input form gives what the model gives on the processor's output,
batching, regression views, ASR and audio-only fallbacks, bad inputs, and a remote-code load in a fresh process."""

import json

import numpy as np
import pytest
import torch
from transformers import (
    AutoModel,
    HubertConfig,
    HubertModel,
    RobertaTokenizerFast,
    Wav2Vec2FeatureExtractor,
    pipeline,
)
from transformers.tokenization_utils_base import VERY_LARGE_INTEGER

from modeling_cmt import (
    AudioTextClassificationPipeline,
    CMTConfig,
    CMTForSequenceClassification,
    CMTModel,
    CMTProcessor,
)
from modeling_cmt.modeling_cmt import CMTCheckpointError


TASK = "audio-text-classification"
EMOTIONS = ["ang", "hap", "neu", "sad"]
TEXT = "I feel sad and tired, nothing went well today."


def noise(length: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(length) * 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def cmt_processor(tokenizer):
    feature_extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )
    return CMTProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)


def build_classifier(num_labels: int = 4, **kwargs) -> CMTForSequenceClassification:
    torch.manual_seed(0)
    labels = {"id2label": dict(enumerate(EMOTIONS)), "label2id": {name: i for i, name in enumerate(EMOTIONS)}}
    config = CMTConfig.from_preset("tiny", num_labels=num_labels, **(labels if num_labels == 4 else {}), **kwargs)
    return CMTForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, cmt_processor):
    path = tmp_path_factory.mktemp("cmt-emotion")
    build_classifier().save_pretrained(path)
    cmt_processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def classifier(checkpoint):
    """The headline call: with the package imported, the installed pipeline runs (no `trust_remote_code`)."""
    return pipeline(TASK, model=str(checkpoint), device="cpu")


def expected_scores(model, processor, audio, text, sampling_rate=16000, function=torch.softmax) -> list[float]:
    inputs = processor(audio=audio, text=text, sampling_rate=sampling_rate, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0]
    return function(logits, -1).tolist() if function is not None else logits.tolist()


def as_label_scores(output) -> dict[str, float]:
    return {entry["label"]: entry["score"] for entry in output}


def assert_matches(output, expected: list[float], atol: float = 1e-5):
    scores = as_label_scores(output)
    assert list(scores) == sorted(scores, key=scores.get, reverse=True)  # best first
    np.testing.assert_allclose([scores[label] for label in EMOTIONS], expected, atol=atol)


# ---------------------------------------------------------------------------------------------------------------------
# Input forms, batching, outputs
# ---------------------------------------------------------------------------------------------------------------------


def test_every_input_form_matches_the_model_on_the_processor_output(classifier, cmt_processor, tmp_path, write_wav):
    pcm = (noise(12000) * 32767).astype(np.int16)
    path = write_wav(tmp_path / "utterance.wav", pcm)
    expected = expected_scores(classifier.model, cmt_processor, pcm, TEXT)
    waveform = pcm.astype(np.float32) / 32768

    assert_matches(classifier(str(path), text=TEXT), expected)
    assert_matches(classifier(path, text=TEXT), expected)
    assert_matches(classifier({"array": waveform, "sampling_rate": 16000}, text=TEXT), expected)
    assert_matches(classifier({"raw": torch.from_numpy(waveform), "sampling_rate": 16000, "text": TEXT}), expected)
    assert_matches(classifier(waveform, text=TEXT, sampling_rate=16000), expected)
    assert_matches(classifier({"audio": {"array": waveform, "sampling_rate": 16000}, "text": TEXT}), expected)
    assert_matches(classifier({"audio": str(path), "text": TEXT}), expected)
    assert_matches(classifier(path.read_bytes(), text=TEXT), expected)


def test_datasets_rows_and_dataset_input(classifier, cmt_processor, tmp_path, write_wav):
    datasets = pytest.importorskip("datasets")
    pcm = (noise(9000, seed=1) * 32767).astype(np.int16)
    path = write_wav(tmp_path / "row.wav", pcm)
    dataset = datasets.Dataset.from_dict(
        {"audio": [str(path)] * 2, "text": [TEXT, "Excuse me, where is the station?"]}
    )
    dataset = dataset.cast_column("audio", datasets.Audio(sampling_rate=16000))
    expected = expected_scores(classifier.model, cmt_processor, pcm, TEXT)

    assert_matches(classifier(dataset[0]), expected)  # a decoded row: torchcodec AudioDecoder + text
    outputs = list(classifier(dataset, batch_size=2))
    assert len(outputs) == 2
    assert_matches(outputs[0], expected)


def test_bare_array_without_rate_warns_and_assumes_the_feature_extractor_rate(classifier, cmt_processor, caplog):
    audio = noise(8000)
    output = classifier(audio, text=TEXT)
    assert "No sampling rate given for the audio array" in caplog.text
    assert_matches(output, expected_scores(classifier.model, cmt_processor, audio, TEXT))


def test_batch_of_mixed_lengths_equals_one_by_one(classifier):
    items = [
        {"array": noise(16000, seed=0), "sampling_rate": 16000, "text": TEXT},
        {"array": noise(5000, seed=1), "sampling_rate": 16000, "text": "Excuse me, where is the station?"},
        {"array": noise(9000, seed=2), "sampling_rate": 8000, "text": "What a lovely surprise!"},
    ]
    batched = classifier(items, batch_size=3)
    for item, output in zip(items, batched):
        single = classifier(item)
        assert [entry["label"] for entry in output] == [entry["label"] for entry in single]
        np.testing.assert_allclose(
            [entry["score"] for entry in output], [entry["score"] for entry in single], atol=1e-5
        )
    texts = [item.pop("text") for item in items]
    separate = classifier(items, text=texts, batch_size=2)
    inline = classifier([{**i, "text": t} for i, t in zip(items, texts)])
    for output, single in zip(separate, inline, strict=True):
        assert [entry["label"] for entry in output] == [entry["label"] for entry in single]
        np.testing.assert_allclose([entry["score"] for entry in output], [e["score"] for e in single], atol=1e-6)


def test_top_k_and_function_to_apply(classifier, cmt_processor):
    audio = {"array": noise(8000), "sampling_rate": 16000}
    full = classifier(audio, text=TEXT)
    assert len(full) == 4
    assert classifier(audio, text=TEXT, top_k=1) == full[:1]
    assert classifier(audio, text=TEXT, top_k=10) == full
    logits = expected_scores(classifier.model, cmt_processor, audio["array"], TEXT, function=None)
    assert_matches(classifier(audio, text=TEXT, function_to_apply="none"), logits)
    sigmoid = torch.sigmoid(torch.tensor(logits)).tolist()
    assert_matches(classifier(audio, text=TEXT, function_to_apply="sigmoid"), sigmoid)
    with pytest.raises(ValueError, match="function_to_apply"):
        classifier(audio, text=TEXT, function_to_apply="argmax")
    with pytest.raises(ValueError, match="top_k"):
        classifier(audio, text=TEXT, top_k=0)
    with pytest.raises(TypeError, match="unexpected arguments \\['topk'\\]"):
        classifier(audio, text=TEXT, topk=1)


def test_regression_head_returns_score_and_mosei_views(cmt_processor):
    model = build_classifier(num_labels=1)
    regressor = AudioTextClassificationPipeline(model=model, processor=cmt_processor, device="cpu")
    audio = noise(8000)
    output = regressor(audio, text=TEXT, sampling_rate=16000)
    (expected,) = expected_scores(model, cmt_processor, audio, TEXT, function=None)
    assert set(output) == {"score", "sentiment_class", "polarity"}
    assert output["score"] == pytest.approx(expected, abs=1e-5)
    assert regressor(audio, text=TEXT, sampling_rate=16000, sentiment_views=False).keys() == {"score"}

    def views(score):
        meta = {"input_name": "x", "transcript": TEXT, "transcript_source": "given", "error": None}
        return regressor.postprocess({"logits": torch.tensor([[score]]), **meta})

    assert views(2.5) == {"score": 2.5, "sentiment_class": 2, "polarity": "positive"}  # halves round to even
    assert views(-4.2)["sentiment_class"] == -3 and views(-4.2)["polarity"] == "negative"
    assert views(0.3) == {"score": pytest.approx(0.3), "sentiment_class": 0, "polarity": "positive"}
    assert views(0.0)["polarity"] == "neutral"


def test_model_registry_in_process(cmt_processor):
    """After `import modeling_cmt` the task resolves through the registry for a model object."""
    model = build_classifier()
    classifier = pipeline(TASK, model=model, processor=cmt_processor, device="cpu")
    assert isinstance(classifier, AudioTextClassificationPipeline)
    assert isinstance(classifier.processor, CMTProcessor)
    assert_matches(
        classifier(noise(8000), text=TEXT, sampling_rate=16000),
        expected_scores(model, cmt_processor, noise(8000), TEXT),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Missing transcripts: ASR and audio-only
# ---------------------------------------------------------------------------------------------------------------------


def test_asr_fallback_uses_exactly_the_asr_transcript(classifier, cmt_processor, asr_checkpoint):
    asr = pipeline("automatic-speech-recognition", model=str(asr_checkpoint), device="cpu")
    audio = noise(12000, seed=3)
    transcript = asr({"raw": audio, "sampling_rate": 16000})["text"].strip()
    assert transcript  # gibberish, but not empty

    for asr_model in (asr, str(asr_checkpoint)):
        output = classifier({"array": audio, "sampling_rate": 16000}, asr_model=asr_model)
        assert all(entry["transcript"] == transcript and entry["audio_only"] is False for entry in output)
        assert_matches(output, expected_scores(classifier.model, cmt_processor, audio, transcript))

    # items with a transcript keep theirs; only the missing one is transcribed
    outputs = classifier(
        [{"array": audio, "sampling_rate": 16000}, {"array": audio, "sampling_rate": 16000, "text": TEXT}],
        asr_model=asr,
        batch_size=2,
    )
    assert outputs[0][0]["transcript"] == transcript
    assert "transcript" not in outputs[1][0]


def test_missing_transcript_is_an_error_unless_audio_only_is_allowed(classifier, cmt_processor):
    audio = {"array": noise(8000), "sampling_rate": 16000}
    with pytest.raises(ValueError, match=r"transcript of the audio array is missing: pass `text=`, `asr_model=`"):
        classifier(audio)
    with pytest.raises(ValueError, match=r"transcript of input 1 \(audio array\) is empty"):
        classifier([{**audio, "text": TEXT}, {**audio, "text": "  "}])
    output = classifier(audio, allow_audio_only=True)
    assert all(entry["transcript"] == "" and entry["audio_only"] is True for entry in output)
    assert_matches(output, expected_scores(classifier.model, cmt_processor, audio["array"], ""))


# ---------------------------------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------------------------------


def test_bad_audio_files_are_named(classifier, tmp_path, write_wav):
    with pytest.raises(FileNotFoundError, match="audio file '.*missing.wav': no such file"):
        classifier(str(tmp_path / "missing.wav"), text=TEXT)
    (tmp_path / "notes.wav").write_text("this is not audio")
    with pytest.raises(ValueError, match="Could not decode audio file '.*notes.wav'"):
        classifier(str(tmp_path / "notes.wav"), text=TEXT)
    empty = write_wav(tmp_path / "empty.wav", np.zeros(0, np.int16))
    with pytest.raises(ValueError, match="audio file '.*empty.wav' is empty"):
        classifier(str(empty), text=TEXT)
    corrupt = noise(8000)
    corrupt[100] = np.nan
    with pytest.raises(ValueError, match="audio file '.*nan.wav' contains NaN"):
        classifier(str(write_wav(tmp_path / "nan.wav", corrupt)), text=TEXT)


def test_bad_audio_arrays_are_named(classifier):
    min_samples = classifier.model.base_model.min_input_samples()
    with pytest.raises(ValueError, match="the audio array is empty"):
        classifier(np.zeros(0, np.float32), text=TEXT, sampling_rate=16000)
    corrupt = noise(8000)
    corrupt[5] = np.inf
    with pytest.raises(ValueError, match=r"input 1 \(audio array\) contains NaN or Inf"):
        classifier([noise(8000), corrupt], text=[TEXT, TEXT], sampling_rate=16000)
    with pytest.raises(ValueError, match=f"too short: {min_samples - 1} samples .* at least {min_samples}"):
        classifier(noise(min_samples - 1), text=TEXT, sampling_rate=16000)
    with pytest.raises(ValueError, match=r"1.0 s long, more than the 0.5 s limit \(max_audio_seconds\)"):
        classifier(noise(16000), text=TEXT, sampling_rate=16000, max_audio_seconds=0.5)
    assert classifier(noise(16000), text=TEXT, sampling_rate=16000, max_audio_seconds=None)


def test_low_rate_stereo_int16_is_resampled_and_downmixed(classifier, cmt_processor, tmp_path, write_wav):
    stereo = (np.stack([noise(8000, seed=4), noise(8000, seed=5)]) * 20000).astype(np.int16)  # (channels, samples)
    inputs = cmt_processor(audio=stereo, text=TEXT, sampling_rate=8000, channel_axis=0)
    with torch.no_grad():
        expected = classifier.model(**inputs).logits[0].softmax(-1).tolist()
    assert_matches(classifier({"array": stereo, "sampling_rate": 8000}, text=TEXT), expected)  # one utterance
    assert_matches(classifier({"array": stereo.T, "sampling_rate": 8000}, text=TEXT), expected)
    assert_matches(classifier(stereo, text=TEXT, sampling_rate=8000, channel_axis=0), expected)
    assert_matches(classifier(stereo.T, text=TEXT, sampling_rate=8000, channel_axis=-1), expected)
    path = write_wav(tmp_path / "stereo8k.wav", stereo, rate=8000)
    assert_matches(classifier(str(path), text=TEXT), expected)


def test_a_2d_array_is_a_batch_unless_channel_axis_says_otherwise(classifier):
    """Issue 14, item 5: a bare (batch, samples) array was averaged into one utterance."""
    batch = np.stack([noise(8000, seed=seed) for seed in range(3)])
    texts = [TEXT, "Excuse me, where is the station?", "What a lovely surprise!"]
    outputs = classifier(batch, text=texts, sampling_rate=16000)
    assert len(outputs) == 3
    for row, (output, text) in enumerate(zip(outputs, texts, strict=True)):
        single = classifier(batch[row], text=text, sampling_rate=16000)
        assert_matches(output, [as_label_scores(single)[label] for label in EMOTIONS])
    with pytest.raises(ValueError, match=r"Got 3 audio inputs \(a 2-D array is a batch; .* `channel_axis`\)"):
        classifier(batch, text=TEXT, sampling_rate=16000)
    with pytest.raises(ValueError, match=r"shape \(8000, 3\): .* look like \(samples, channels\)"):
        classifier(batch.T.copy(), text=texts, sampling_rate=16000)
    with pytest.raises(ValueError, match=r"shape \(12, 10\): as multi-channel audio, which axis .* ambiguous"):
        classifier({"array": np.zeros((12, 10), np.float32), "sampling_rate": 16000}, text=TEXT)


def test_bad_sampling_rates_are_named(classifier):
    audio = noise(8000)
    for rate, shown in (("16000", r"'16000' \(str\)"), (16000.5, r"16000.5 \(float\)"), (0, r"0 \(int\)")):
        with pytest.raises(ValueError, match=f"`sampling_rate` must be a positive whole number of Hz .* got {shown}"):
            classifier(audio, text=TEXT, sampling_rate=rate)
    with pytest.raises(ValueError, match=r"sampling rate of input 1 \(audio array\) must be a positive whole number"):
        classifier(
            [{"array": audio, "sampling_rate": 16000}, {"array": audio, "sampling_rate": 16000.5}], text=[TEXT] * 2
        )
    assert classifier(audio, text=TEXT, sampling_rate=16000.0) == classifier(audio, text=TEXT, sampling_rate=16000)


def test_bad_transcripts(classifier, cmt_processor, caplog):
    audio = {"array": noise(8000), "sampling_rate": 16000}
    with pytest.raises(ValueError, match="transcript of the audio array must be a string, got int"):
        classifier({**audio, "text": 42})
    with pytest.raises(ValueError, match="One audio input takes one transcript string as `text`, got int"):
        classifier(audio, text=5)
    with pytest.raises(ValueError, match="pass `text` as a list of 2 transcripts"):
        classifier([audio, audio], text=TEXT)
    long_text = " ".join([TEXT] * 40)
    output = classifier(audio, text=long_text)
    assert "The transcript of the audio array has" in caplog.text and "it is truncated" in caplog.text
    limit = classifier.default_max_text_length()
    assert limit == 128
    inputs = cmt_processor(audio=audio["array"], text=long_text, sampling_rate=16000, max_text_length=limit)
    assert inputs["input_ids"].shape[-1] == limit
    with torch.no_grad():
        expected = classifier.model(**inputs).logits[0].softmax(-1).tolist()
    assert_matches(output, expected)


@pytest.mark.parametrize("model_max_length", [512, VERY_LARGE_INTEGER], ids=["longer-than-the-tower", "unset"])
def test_a_tokenizer_limit_beyond_the_text_tower_is_capped(tokenizer_dir, model_max_length, caplog):
    """A transcript of 600 tokens with a tokenizer that allows more than the text tower's 128 positions (or sets no
    limit) is truncated to what the tower takes (it failed inside the embedding: `index 130 is out of bounds`)."""
    tokenizer = RobertaTokenizerFast.from_pretrained(str(tokenizer_dir))
    tokenizer.model_max_length = model_max_length
    feature_extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, return_attention_mask=True)
    processor = CMTProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)
    classifier = AudioTextClassificationPipeline(model=build_classifier(), processor=processor, device="cpu")
    long_text = " ".join(["word"] * 600)
    output = classifier(noise(8000), text=long_text, sampling_rate=16000)
    assert classifier.default_max_text_length() == 128
    assert "tokens, more than the 128 the text tower takes: it is truncated" in caplog.text
    inputs = processor(audio=noise(8000), text=long_text, sampling_rate=16000, max_text_length=128)
    with torch.no_grad():
        assert_matches(output, classifier.model(**inputs).logits[0].softmax(-1).tolist())


def test_an_empty_batch_gives_no_results(classifier):
    assert classifier([], text=[]) == []
    assert classifier([]) == []


# ---------------------------------------------------------------------------------------------------------------------
# Bad inputs in a batch, bad files
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 3])
def test_on_bad_inputs_return_keeps_the_good_results(classifier, tmp_path, write_wav, batch_size):
    """In `[good, missing, good]` the pipeline raised and the two good results were lost."""
    good = write_wav(tmp_path / "good.wav", (noise(9000) * 32767).astype(np.int16))
    items = [str(good), str(tmp_path / "missing.wav"), {"array": noise(100), "sampling_rate": 16000}, str(good)]
    texts = [TEXT, TEXT, TEXT, "What a lovely surprise!"]
    with pytest.raises(FileNotFoundError, match=r"input 1 \(audio file '.*missing.wav'\): no such file"):
        classifier(items, text=texts, batch_size=batch_size)
    outputs = classifier(items, text=texts, batch_size=batch_size, on_bad_inputs="return")
    assert len(outputs) == 4
    assert outputs[1] == {"error": f"input 1 (audio file {str(tmp_path / 'missing.wav')!r}): no such file."}
    assert outputs[2]["error"].startswith("input 2 (audio array) is too short: 100 samples")
    for index in (0, 3):
        single = classifier(str(good), text=texts[index])
        assert [entry["label"] for entry in outputs[index]] == [entry["label"] for entry in single]
        np.testing.assert_allclose([e["score"] for e in outputs[index]], [e["score"] for e in single], atol=1e-5)
    with pytest.raises(ValueError, match=r"`on_bad_inputs` must be one of \['error', 'return'\], got 'skip'"):
        classifier(items, text=texts, on_bad_inputs="skip")


def test_a_directory_is_not_an_audio_file(classifier, tmp_path):
    with pytest.raises(IsADirectoryError, match=r"audio file '.*' is a directory, not an audio file"):
        classifier(str(tmp_path), text=TEXT)


def test_a_truncated_wav_is_refused(classifier, tmp_path, write_truncated_wav):
    """A WAV cut short (the header declares 1 s, the file holds 0.25 s) was classified from the part that is left."""
    pcm = (noise(16000) * 32767).astype(np.int16)
    truncated = write_truncated_wav(tmp_path / "truncated.wav", pcm, keep=0.25)
    message = r"is truncated: its header declares 32000 bytes of audio, the file holds 8000 \(25%\)"
    with pytest.raises(ValueError, match=f"audio file '.*truncated.wav' {message}"):
        classifier(str(truncated), text=TEXT)
    with pytest.raises(ValueError, match=f"the audio bytes {message}"):
        classifier(truncated.read_bytes(), text=TEXT)
    # written to a pipe: the header leaves the data size unset
    streamed = write_truncated_wav(tmp_path / "streamed.wav", pcm, keep=1.0, declared=0xFFFFFFFF)
    assert classifier(str(streamed), text=TEXT)


def test_a_truncated_mp3_is_refused(classifier, tmp_path):
    encoders = pytest.importorskip("torchcodec.encoders")
    mp3 = tmp_path / "full.mp3"
    encoders.AudioEncoder(torch.from_numpy(noise(32000))[None], sample_rate=16000).to_file(str(mp3))
    assert classifier(str(mp3), text=TEXT)  # encoder padding is no truncation
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(mp3.read_bytes()[: mp3.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cut.mp3' is truncated: its header declares 2.\d+ s of audio, only 0.\d+"):
        classifier(str(cut), text=TEXT)


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------------


class PicklePayload:
    """Unpickling this creates the file `marker`: a stand-in for the `os.system` payload of a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_only_checkpoint_is_refused_unless_opted_in(checkpoint, tmp_path, cmt_processor, save_pickle_only):
    malicious = tmp_path / "malicious"
    cmt_processor.save_pretrained(malicious)
    (malicious / "config.json").write_text((checkpoint / "config.json").read_text())
    marker = tmp_path / "payload-ran"
    torch.save({"classifier.out_proj.weight": PicklePayload(marker)}, malicious / "pytorch_model.bin")
    refused = r"holds its weights only as a pickle \(pytorch_model.bin\), and loading a pickle can run any code"
    for load in (
        lambda: pipeline(TASK, model=str(malicious), device="cpu"),
        lambda: AutoModel.from_pretrained(malicious),
        lambda: CMTForSequenceClassification.from_pretrained(malicious),
    ):
        with pytest.raises(CMTCheckpointError, match=refused) as error:
            load()
        assert "`use_safetensors=False`" in str(error.value) and "`--allow_pickle`" in str(error.value)
    assert not marker.exists()

    model = CMTForSequenceClassification.from_pretrained(checkpoint)
    trusted = save_pickle_only(model, tmp_path / "trusted", cmt_processor)
    classifier = pipeline(TASK, model=str(trusted), device="cpu", model_kwargs={"use_safetensors": False})
    for name, tensor in classifier.model.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name


def test_a_truncated_safetensors_file_is_named(checkpoint, tmp_path, cmt_processor):
    damaged = tmp_path / "damaged"
    build_classifier().save_pretrained(damaged)
    cmt_processor.save_pretrained(damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CMTCheckpointError, match=r"safetensors weights of '.*damaged' are damaged or incomplete"):
        pipeline(TASK, model=str(damaged), device="cpu")


def test_only_cmt_classification_checkpoints_are_accepted(tmp_path, cmt_processor):
    bare = tmp_path / "bare"
    CMTModel(CMTConfig.from_preset("tiny")).save_pretrained(bare)
    cmt_processor.save_pretrained(bare)
    with pytest.raises(ValueError, match="was saved as CMTModel, which has no trained classification head"):
        pipeline(TASK, model=str(bare), device="cpu")

    hubert = tmp_path / "hubert"
    HubertModel(HubertConfig(**CMTConfig.from_preset("tiny").audio_config.to_dict())).save_pretrained(hubert)
    with pytest.raises(ValueError, match="needs a CMT classification checkpoint; .*hubert.* is a 'hubert' model"):
        pipeline(TASK, model=str(hubert), device="cpu")

    small_vocabulary = tmp_path / "small-vocabulary"  # the processor's tokenizer has 400 tokens
    build_classifier(text_config={"vocab_size": 100}).save_pretrained(small_vocabulary)
    cmt_processor.save_pretrained(small_vocabulary)
    with pytest.raises(ValueError, match=r"The tokenizer has \d+ tokens, more than the text tower's vocabulary"):
        pipeline(TASK, model=str(small_vocabulary), device="cpu")

    no_processor = tmp_path / "no-processor"
    build_classifier().save_pretrained(no_processor)
    with pytest.raises(ValueError, match="No tokenizer and feature extractor found"):
        pipeline(TASK, model=str(no_processor), device="cpu")


# ---------------------------------------------------------------------------------------------------------------------
# Saving and remote code
# ---------------------------------------------------------------------------------------------------------------------


def test_classification_checkpoints_carry_the_pipeline(checkpoint, tmp_path):
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["custom_pipelines"] == {
        TASK: {
            "impl": "pipeline_cmt.AudioTextClassificationPipeline",
            "pt": ["AutoModelForSequenceClassification"],
            "type": "multimodal",
        }
    }
    assert (checkpoint / "pipeline_cmt.py").is_file() and (checkpoint / "processing_cmt.py").is_file()
    CMTModel(CMTConfig.from_preset("tiny")).save_pretrained(tmp_path)
    assert "custom_pipelines" not in json.loads((tmp_path / "config.json").read_text())


WITHOUT_THE_PACKAGE = r"""
import json, sys
sys.modules["modeling_cmt"] = None  # everything must come from the checkpoint's own code
import numpy as np
from transformers import pipeline

classifier = pipeline("audio-text-classification", model=sys.argv[1], trust_remote_code=True, device="cpu")
"""
WITH_THE_PACKAGE = r"""
import json, sys
import numpy as np
import modeling_cmt  # the installed package registers the task
from transformers import pipeline

classifier = pipeline("audio-text-classification", model=sys.argv[1], device="cpu")
"""
CLASSIFY = r"""
audio = np.load(sys.argv[1] + "/audio.npy")
outputs = classifier([{"array": audio, "sampling_rate": 16000}] * 2, text=[sys.argv[2], ""], allow_audio_only=True)
remote = sorted(name for name in sys.modules if name.startswith("transformers_modules"))
print(json.dumps({"pipeline": type(classifier).__module__, "model": type(classifier.model).__module__, "remote": remote,
                  "outputs": outputs}))
"""


@pytest.mark.parametrize("installed", [True, False], ids=["with-package", "remote-code"])
def test_fresh_process_pipeline(classifier, checkpoint, tmp_path, fresh_python, installed):
    """`pipeline(task, model=path)` runs the installed code once the package is imported; without the package,
    `trust_remote_code=True` runs the code the checkpoint carries."""
    audio = noise(10000, seed=7)
    np.save(checkpoint / "audio.npy", audio)
    expected = [
        classifier({"array": audio, "sampling_rate": 16000}, text=TEXT),
        classifier({"array": audio, "sampling_rate": 16000}, allow_audio_only=True),
    ]
    script = (WITH_THE_PACKAGE if installed else WITHOUT_THE_PACKAGE) + CLASSIFY
    result = fresh_python(script, checkpoint, TEXT, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = json.loads(result.stdout.strip().splitlines()[-1])
    if installed:
        assert fresh["pipeline"] == "modeling_cmt.pipeline_cmt" and fresh["model"] == "modeling_cmt.modeling_cmt"
        assert fresh["remote"] == []  # no code from the checkpoint ran
    else:
        assert fresh["pipeline"].startswith("transformers_modules") and fresh["pipeline"].endswith("pipeline_cmt")
        assert fresh["model"].startswith("transformers_modules")
    for got, want in zip(fresh["outputs"], expected):
        assert [entry["label"] for entry in got] == [entry["label"] for entry in want]
        np.testing.assert_allclose([e["score"] for e in got], [e["score"] for e in want], atol=1e-6)
    assert fresh["outputs"][1][0]["audio_only"] is True
