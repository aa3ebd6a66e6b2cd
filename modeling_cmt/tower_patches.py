"""Speed patches of the audio tower that leave its parameters, state-dict keys and outputs unchanged.

- The convolutional positional embedding of wav2vec2-family towers (a grouped convolution with a long kernel) can run
  through real FFTs, which on CUDA devices is far cheaper than cuDNN's grouped 1-D convolutions.
- The convolutional feature encoder runs over the batch in chunks when no gradient flows through it, which bounds
  the memory its first, widest layers need for a moment.

[`patch_audio_tower`] gives the tower's modules subclasses that only override `forward` (the classes below), so the
tower is still the transformers model: checkpoints, `from_pretrained`, copies and pickles are unaffected. Each
subclass reaches the tower's own `forward` through `super()`, so subclassing it further is safe.
"""

import torch
from torch import nn
from transformers.models.hubert.modeling_hubert import HubertFeatureEncoder, HubertPositionalConvEmbedding
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2FeatureEncoder, Wav2Vec2PositionalConvEmbedding


# CUDA batches are larger and cuDNN convolutions lose speed on small chunks: chunks are this many times longer there.
CUDA_CHUNK_FACTOR = 4


def fft_grouped_conv1d(
    inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int, groups: int
) -> torch.Tensor:
    """
    `nn.functional.conv1d(inputs, weight, bias, padding=padding, groups=groups)` (stride 1, no dilation) computed
    with real FFTs in float32: each group's channels are mixed per frequency by one complex matrix product. For the
    long kernels of wav2vec2-family positional embeddings (128 taps, 16 groups) this is far cheaper than a direct
    convolution, whose cuDNN kernels run grouped 1-D convolutions slowly. Returns float32, `(batch, out, frames)`.
    """
    batch, channels, frames = inputs.shape
    out_channels, group_channels, kernel = weight.shape
    padded = frames + 2 * padding
    length = padded - kernel + 1
    if length < 1:
        raise ValueError(f"The input has {frames} frames; a {kernel}-tap kernel with padding {padding} needs more.")
    size = 1 << (padded - 1).bit_length()  # >= padded: circular wrap-around never reaches the kept outputs
    with torch.autocast(inputs.device.type, enabled=False):
        spectrum = torch.fft.rfft(nn.functional.pad(inputs.float(), (padding, padding)), n=size)
        # cross-correlation (what conv1d computes) = convolution with the flipped kernel
        kernel_spectrum = torch.fft.rfft(weight.float().flip(-1), n=size)
        spectrum = spectrum.view(batch, groups, group_channels, -1).permute(1, 3, 2, 0)  # (groups, freq, in, batch)
        kernel_spectrum = kernel_spectrum.view(groups, out_channels // groups, group_channels, -1).permute(0, 3, 1, 2)
        mixed = torch.matmul(kernel_spectrum, spectrum)  # (groups, freq, out / groups, batch)
        mixed = mixed.permute(3, 0, 2, 1).reshape(batch, out_channels, -1)
        outputs = torch.fft.irfft(mixed, n=size)[..., kernel - 1 : kernel - 1 + length]
        if bias is not None:
            outputs = outputs + bias.float()[:, None]
    return outputs


class FFTPositionalConvMixin:
    """
    The forward of a wav2vec2-family convolutional positional embedding with the convolution done by FFT. With
    `positional_conv_implementation="auto"` it is used on CUDA devices only (oneDNN's direct convolution is faster on
    CPU) and the tower's own forward runs elsewhere.
    """

    positional_conv_implementation = "auto"

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.positional_conv_implementation == "auto" and hidden_states.device.type != "cuda":
            return super().forward(hidden_states)
        dtype = hidden_states.dtype
        hidden_states = hidden_states.transpose(1, 2)  # (batch, hidden, frames)
        if self.batch_norm is not None:
            hidden_states = self.batch_norm(hidden_states)
        conv = self.conv
        hidden_states = fft_grouped_conv1d(hidden_states, conv.weight, conv.bias, conv.padding[0], conv.groups)
        hidden_states = self.activation(self.padding(hidden_states.to(dtype)))
        return hidden_states.transpose(1, 2)  # (batch, frames, hidden)


class CMTHubertPositionalConvEmbedding(FFTPositionalConvMixin, HubertPositionalConvEmbedding):
    """HuBERT's positional convolution with the FFT forward (same parameters and state-dict keys)."""


class CMTWav2Vec2PositionalConvEmbedding(FFTPositionalConvMixin, Wav2Vec2PositionalConvEmbedding):
    """wav2vec 2.0's positional convolution with the FFT forward (same parameters and state-dict keys)."""


class ChunkedFeatureEncoderMixin:
    """
    A wav2vec2-family convolutional feature encoder that, when no gradient flows through it (frozen, as in
    fine-tuning, or at inference), runs over the batch in chunks of at most `chunk_samples` padded samples
    (`CUDA_CHUNK_FACTOR` times more on CUDA devices). Its first layers hold large activations (512 channels at a fifth
    of the sampling rate, before and after the norm and GELU) that are freed right after; chunking caps that
    transient peak instead of letting it grow with the batch. Every operation is per item (convolutions, per-item
    GroupNorm or per-frame LayerNorm), so chunked and whole-batch outputs are the same.
    """

    chunk_samples: int | None = None

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        chunk_samples = self.chunk_samples
        if chunk_samples is not None and input_values.is_cuda:
            chunk_samples *= CUDA_CHUNK_FACTOR
        tower_forward = super().forward
        needs_grad = torch.is_grad_enabled() and (
            input_values.requires_grad or (self._requires_grad and self.training)
        )
        if chunk_samples is None or needs_grad or input_values.numel() <= chunk_samples:
            return tower_forward(input_values)
        items = max(1, chunk_samples // input_values.shape[-1])
        return torch.cat([tower_forward(part) for part in input_values.split(items)])  # (batch, channels, frames)


class CMTHubertFeatureEncoder(ChunkedFeatureEncoderMixin, HubertFeatureEncoder):
    """HuBERT's feature encoder, run in batch chunks when frozen (same parameters and state-dict keys)."""


class CMTWav2Vec2FeatureEncoder(ChunkedFeatureEncoderMixin, Wav2Vec2FeatureEncoder):
    """wav2vec 2.0's feature encoder, run in batch chunks when frozen (same parameters and state-dict keys)."""


FFT_POSITIONAL_CONV_CLASSES = {
    HubertPositionalConvEmbedding: CMTHubertPositionalConvEmbedding,
    Wav2Vec2PositionalConvEmbedding: CMTWav2Vec2PositionalConvEmbedding,
}
CHUNKED_FEATURE_ENCODER_CLASSES = {
    HubertFeatureEncoder: CMTHubertFeatureEncoder,
    Wav2Vec2FeatureEncoder: CMTWav2Vec2FeatureEncoder,
}


def _fft_applies(module: nn.Module) -> bool:
    """The FFT forward computes stride-1, undilated convolutions with numeric padding."""
    conv = getattr(module, "conv", None)
    return (
        isinstance(conv, nn.Conv1d)
        and isinstance(conv.padding, tuple)
        and conv.stride[0] == 1
        and conv.dilation[0] == 1
    )


def _swap_module_classes(model: nn.Module, classes: dict, accepts=lambda module: True, **attributes) -> int:
    """
    In place, gives each submodule whose exact type is a key of `classes` (and that `accepts`) the mapped subclass,
    which only overrides `forward`, and sets `attributes` on it: parameters, buffers, state-dict keys and checkpoints
    are untouched, and copies and pickles keep the new class. Returns how many modules changed.
    """
    changed = 0
    for module in model.modules():
        new_class = classes.get(type(module))
        if new_class is not None and accepts(module):
            module.__class__ = new_class
            for name, value in attributes.items():
                setattr(module, name, value)
            changed += 1
    return changed


def patch_audio_tower(
    audio_model: nn.Module,
    positional_conv_implementation: str = "auto",
    feature_encoder_chunk_samples: int | None = None,
) -> None:
    """
    Applies the speed patches to a wav2vec2-family tower in place, as `CMTConfig.positional_conv_implementation`
    (`"conv"`: none) and `feature_encoder_chunk_samples` (`None`: none) ask. Other tower classes are left as they are.
    """
    if positional_conv_implementation != "conv":
        _swap_module_classes(
            audio_model,
            FFT_POSITIONAL_CONV_CLASSES,
            _fft_applies,
            positional_conv_implementation=positional_conv_implementation,
        )
    if feature_encoder_chunk_samples is not None:
        _swap_module_classes(audio_model, CHUNKED_FEATURE_ENCODER_CLASSES, chunk_samples=feature_encoder_chunk_samples)


__all__ = [
    "CMTHubertFeatureEncoder",
    "CMTHubertPositionalConvEmbedding",
    "CMTWav2Vec2FeatureEncoder",
    "CMTWav2Vec2PositionalConvEmbedding",
    "fft_grouped_conv1d",
    "patch_audio_tower",
]
