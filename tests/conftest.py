"""Shared fixtures: tiny random-weight configs, a tokenizer built locally (no downloads), WAV files and fresh
processes. The one source of the test builders: test modules take these fixtures instead of writing their own."""

import json
import os
import struct
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    RobertaTokenizerFast,
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2Processor,
)


SENTENCES = [
    "I can't believe you did that, it is wonderful!",
    "This is terrible and I am so angry right now.",
    "The meeting is at ten in the morning.",
    "I feel sad and tired, nothing went well today.",
    "What a lovely surprise, thank you so much.",
    "Excuse me, where is the station?",
]
# Every dropout and every random masking of the tiny preset off: training steps are deterministic.
NO_DROPOUT = {
    "audio_config": {
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "feat_proj_dropout": 0.0,
        "mask_time_prob": 0.0,
        "layerdrop": 0.0,
    },
    "text_config": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    "cross_hidden_dropout": 0.0,
    "cross_attention_dropout": 0.0,
    "classifier_dropout": 0.0,
}


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    """Six short transcripts of different lengths and moods."""
    return list(SENTENCES)


@pytest.fixture(scope="session")
def tiny_config():
    """A factory: the `tiny` preset with 4 labels; keyword arguments override it (`audio_config` / `text_config`
    dicts key by key, as `CMTConfig.from_preset` merges them)."""
    from modeling_cmt import CMTConfig

    def make(**overrides):
        return CMTConfig.from_preset("tiny", **{"num_labels": 4, **overrides})

    return make


@pytest.fixture(scope="session")
def no_dropout_config():
    """A factory: the `tiny` preset (layer-norm feature encoder: padding-invariant towers) with 4 labels and every
    dropout, SpecAugment mask and layerdrop off; keyword arguments override it as in `tiny_config`."""
    from modeling_cmt import CMTConfig, merge_config_values

    def make(**overrides):
        return CMTConfig.from_preset("tiny", **merge_config_values({"num_labels": 4, **NO_DROPOUT}, overrides))

    return make


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A byte-level BPE tokenizer in RoBERTa layout (<s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4), vocab < 1000."""
    directory = tmp_path_factory.mktemp("tokenizer")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        SENTENCES * 4, vocab_size=400, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    )
    bpe.save_model(str(directory))
    tokenizer = RobertaTokenizerFast.from_pretrained(str(directory), model_max_length=128)
    assert tokenizer.decode(tokenizer(SENTENCES[0])["input_ids"], skip_special_tokens=True) == SENTENCES[0]
    tokenizer.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    return RobertaTokenizerFast.from_pretrained(str(tokenizer_dir))


@pytest.fixture
def feature_extractor():
    from modeling_cmt import SAMPLING_RATE

    return Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLING_RATE, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )


@pytest.fixture
def processor(feature_extractor, tokenizer):
    from modeling_cmt import CMTProcessor

    return CMTProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)


@pytest.fixture
def make_batch(processor):
    """Processor output for `lengths` seconds-free sample counts and the first transcripts, deterministic."""

    def make(lengths=(8000, 5600, 4000), texts=None, seed=0):
        generator = np.random.default_rng(seed)
        audio = [generator.standard_normal(length).astype(np.float32) * 0.1 for length in lengths]
        texts = texts if texts is not None else SENTENCES[: len(lengths)]
        return processor(audio=audio, text=texts, sampling_rate=16000, return_tensors="pt")

    return make


def _write_wav(path, samples, rate: int = 16000):
    """A WAV file: int16 samples as 16-bit PCM (`(samples,)` or `(channels, samples)`), anything else as 32-bit float
    (IEEE), so NaNs survive."""
    samples = np.asarray(samples)
    if samples.dtype == np.int16:
        channels = 1 if samples.ndim == 1 else samples.shape[0]
        with wave.open(str(path), "wb") as file:
            file.setnchannels(channels)
            file.setsampwidth(2)
            file.setframerate(rate)
            file.writeframes(samples.T.tobytes() if samples.ndim == 2 else samples.tobytes())
        return path
    data = samples.astype("<f4")
    with open(path, "wb") as file:
        file.write(b"RIFF" + struct.pack("<I", 36 + data.nbytes) + b"WAVE")
        file.write(b"fmt " + struct.pack("<IHHIIHH", 16, 3, 1, rate, rate * 4, 4, 32))
        file.write(b"data" + struct.pack("<I", data.nbytes) + data.tobytes())
    return path


@pytest.fixture(scope="session")
def write_wav():
    """`write_wav(path, samples, rate=16000) -> path`: int16 as 16-bit PCM, floats as 32-bit float WAV."""
    return _write_wav


def _wav_header(num_bytes: int, rate: int = 16000) -> bytes:
    """A 16-bit mono PCM WAV header whose data chunk declares `num_bytes` (0xFFFFFFFF: unset, as streamed WAVs)."""
    riff_size = min(36 + num_bytes, 0xFFFFFFFF)
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", riff_size) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", num_bytes)


@pytest.fixture(scope="session")
def write_truncated_wav():
    """`write_truncated_wav(path, samples, keep=0.25, declared=None) -> path`: a 16 kHz int16 WAV whose header declares
    all of `samples` (or `declared` bytes) but whose file holds only the first `keep` of them, as a copy cut short
    leaves it."""

    def write(path, samples, keep: float = 0.25, declared: int | None = None):
        data = np.asarray(samples, dtype=np.int16).tobytes()
        path.write_bytes(_wav_header(len(data) if declared is None else declared) + data[: int(len(data) * keep)])
        return path

    return write


@pytest.fixture(scope="session")
def save_pickle_only():
    """`save_pickle_only(model, path, processor=None) -> path`: a checkpoint whose weights are only the pickle
    `pytorch_model.bin` (as older checkpoints are), with the model's config and, if given, the processor."""

    def save(model, path, processor=None):
        model.config.save_pretrained(path)
        if processor is not None:
            processor.save_pretrained(path)
        torch.save(model.state_dict(), Path(path) / "pytorch_model.bin")
        return path

    return save


@pytest.fixture(scope="session")
def fresh_python():
    """`fresh_python(code, *args, cwd) -> CompletedProcess`: runs `code` in a new interpreter in `cwd`, offline, with
    a Hugging Face cache of its own in `cwd` and no PYTHONPATH; the code decides whether the package may be imported."""

    def run(code: str, *args, cwd) -> subprocess.CompletedProcess:
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        env.update(HF_HUB_OFFLINE="1", HF_HOME=str(Path(cwd) / "hf_home"), TRANSFORMERS_VERBOSITY="error")
        return subprocess.run(
            [sys.executable, "-c", code, *map(str, args)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    return run


@pytest.fixture(scope="session")
def asr_checkpoint(tmp_path_factory):
    """A tiny random CTC model with a character vocabulary: it transcribes gibberish, deterministically."""
    path = tmp_path_factory.mktemp("tiny-asr")
    vocab = {
        "<pad>": 0,
        "<unk>": 1,
        "|": 2,
        **{char: index + 3 for index, char in enumerate("abcdefghijklmnopqrstuvwxyz")},
    }
    (path / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(path / "vocab.json"), word_delimiter_token="|")
    feature_extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, return_attention_mask=True)
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(16, 16, 16),
        conv_kernel=(10, 8, 4),
        conv_stride=(5, 8, 8),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        pad_token_id=0,
    )
    model = Wav2Vec2ForCTC(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(50)  # sharper logits: characters rather than all blanks
    model.save_pretrained(path)
    Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
