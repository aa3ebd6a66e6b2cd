"""The audio tower's speed patches: FFT positional convolution and chunked frozen feature encoder give the tower's own
results, keep its parameters, survive copies, and can be subclassed."""

import copy

import pytest
import torch
from transformers import HubertConfig, HubertModel

from modeling_cmt import CMTForSequenceClassification
from modeling_cmt.tower_patches import (
    CMTHubertFeatureEncoder,
    CMTHubertPositionalConvEmbedding,
    fft_grouped_conv1d,
    patch_audio_tower,
)


@pytest.mark.parametrize(
    ("batch", "channels", "frames", "kernel", "groups"),
    [(2, 768, 249, 128, 16), (3, 32, 7, 16, 4), (1, 8, 1, 4, 2), (2, 12, 40, 5, 3)],
)
def test_fft_grouped_conv1d_equals_conv1d_values_and_gradients(batch, channels, frames, kernel, groups):
    inputs = torch.randn(batch, channels, frames, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(channels, channels // groups, kernel, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(channels, dtype=torch.float64, requires_grad=True)
    padding = kernel // 2
    expected = torch.nn.functional.conv1d(inputs, weight, bias, padding=padding, groups=groups)
    actual = fft_grouped_conv1d(inputs, weight, bias, padding, groups)  # float32 inside
    assert actual.shape == expected.shape and actual.dtype == torch.float32
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual.double(), expected, rtol=0, atol=2e-6 * scale)
    probe = torch.randn_like(expected)
    expected_grads = torch.autograd.grad((expected * probe).sum(), (inputs, weight, bias))
    actual_grads = torch.autograd.grad((actual.double() * probe).sum(), (inputs, weight, bias))
    for got, want in zip(actual_grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=2e-6 * want.abs().max().item())


def test_fft_positional_conv_keeps_parameters_and_trains_like_the_tower(make_batch, no_dropout_config):
    fft = CMTForSequenceClassification(no_dropout_config(positional_conv_implementation="fft")).train()
    conv = CMTForSequenceClassification(no_dropout_config(positional_conv_implementation="conv")).train()
    assert type(fft.cmt.audio_model.encoder.pos_conv_embed) is CMTHubertPositionalConvEmbedding
    assert type(conv.cmt.audio_model.encoder.pos_conv_embed).__name__ == "HubertPositionalConvEmbedding"
    assert fft.state_dict().keys() == conv.state_dict().keys()
    conv.load_state_dict(fft.state_dict())
    batch = {**make_batch(), "labels": torch.tensor([0, 1, 3])}
    fft_loss, conv_loss = fft(**batch).loss, conv(**batch).loss
    torch.testing.assert_close(fft_loss, conv_loss, rtol=1e-5, atol=1e-6)
    fft_loss.backward()
    conv_loss.backward()
    for (name, got), (_, want) in zip(fft.named_parameters(), conv.named_parameters()):
        if want.grad is not None:
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-6, msg=name)
    copied = copy.deepcopy(fft)  # the swapped class survives copies (Trainer, EMA, pickling)
    assert type(copied.cmt.audio_model.encoder.pos_conv_embed) is CMTHubertPositionalConvEmbedding


def test_frozen_feature_encoder_runs_in_chunks_with_the_same_results(make_batch, no_dropout_config):
    chunked = CMTForSequenceClassification(no_dropout_config(feature_encoder_chunk_samples=5000))
    whole = CMTForSequenceClassification(no_dropout_config(feature_encoder_chunk_samples=None))
    whole.load_state_dict(chunked.state_dict())
    assert chunked.state_dict().keys() == whole.state_dict().keys()
    encoder = chunked.cmt.audio_model.feature_extractor
    assert type(encoder) is CMTHubertFeatureEncoder
    calls = []
    encoder.conv_layers[0].register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    batch = {**make_batch(), "labels": torch.tensor([0, 1, 3])}  # 8000 / 5600 / 4000 samples, padded to 8000

    with torch.no_grad():  # inference: one item per chunk (5000 samples < one padded item)
        torch.testing.assert_close(chunked.eval()(**batch).logits, whole.eval()(**batch).logits, rtol=0, atol=1e-6)
    assert calls == [1, 1, 1]

    calls.clear()  # training with the feature encoder trainable: the whole batch at once (its gradient is needed)
    chunked.train()(**batch).loss.backward()
    assert calls == [3]

    calls.clear()  # fine-tuning default: frozen feature encoder, chunks, same loss and gradients
    for model in (chunked, whole):
        model.zero_grad()
        model.freeze_feature_encoder()
    chunked_loss, whole_loss = chunked.train()(**batch).loss, whole.train()(**batch).loss
    assert calls == [1, 1, 1]
    torch.testing.assert_close(chunked_loss, whole_loss, rtol=0, atol=1e-6)
    chunked_loss.backward()
    whole_loss.backward()
    for (name, got), (_, want) in zip(chunked.named_parameters(), whole.named_parameters()):
        if want.grad is not None:
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-7, msg=name)


class LoggingPositionalConv(CMTHubertPositionalConvEmbedding):
    """A user's subclass of a patched class: it must reach the tower's forward, not call itself forever."""

    def forward(self, hidden_states):
        self.calls = getattr(self, "calls", 0) + 1
        return super().forward(hidden_states)


class LoggingFeatureEncoder(CMTHubertFeatureEncoder):
    def forward(self, input_values):
        self.calls = getattr(self, "calls", 0) + 1
        return super().forward(input_values)


@pytest.mark.parametrize("implementation", ["auto", "fft"])
def test_subclasses_of_the_patched_classes_reach_the_tower_forward(tiny_config, implementation):
    audio_config = tiny_config().audio_config
    reference = HubertModel(HubertConfig(**audio_config.to_dict())).eval()
    patched = copy.deepcopy(reference)
    patch_audio_tower(patched, positional_conv_implementation=implementation, feature_encoder_chunk_samples=3000)
    patched.encoder.pos_conv_embed.__class__ = LoggingPositionalConv  # "auto" on CPU: the tower's own convolution
    patched.feature_extractor.__class__ = LoggingFeatureEncoder  # 3000-sample chunks: one item each
    audio = torch.randn(2, 4000)
    with torch.no_grad():
        expected, actual = reference(audio).last_hidden_state, patched(audio).last_hidden_state
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert patched.encoder.pos_conv_embed.calls == 1 and patched.feature_extractor.calls == 1
