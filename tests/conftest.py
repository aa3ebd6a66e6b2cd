"""Shared fixtures: tiny random-weight towers and a tokenizer built locally (no downloads)."""

import numpy as np
import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import RobertaTokenizerFast, Wav2Vec2FeatureExtractor


SENTENCES = [
    "I can't believe you did that, it is wonderful!",
    "This is terrible and I am so angry right now.",
    "The meeting is at ten in the morning.",
    "I feel sad and tired, nothing went well today.",
    "What a lovely surprise, thank you so much.",
    "Excuse me, where is the station?",
]


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
    return Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
