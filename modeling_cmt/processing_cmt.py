"""CMTProcessor: turns raw audio (any rate, int or float, mono or multi-channel) and transcripts into CMT inputs."""

from collections.abc import Sequence

import numpy as np
import torch
import torchaudio
from transformers import AutoFeatureExtractor, AutoTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging


logger = logging.get_logger(__name__)

# A 2-D array with one axis this short or shorter is read as (channels, samples) or (samples, channels).
MAX_CHANNELS = 16


def check_waveform(
    waveform: np.ndarray,
    sampling_rate: int | None,
    name: str,
    max_audio_seconds: float | None = None,
    min_samples: int | None = None,
) -> None:
    """
    Raises a `ValueError` naming the audio (`name`) when its samples cannot go into the model: not numeric, empty,
    NaN or Inf, a sampling rate that is not positive, fewer than `min_samples` samples (the audio tower's front end
    needs `CMTConfig.min_input_samples()` at the model's rate) or longer than `max_audio_seconds`. The one value
    check of audio: the processor runs it on every item, the pipeline (and `cmt-predict`) on every input, so the
    model's `forward` needs none. `waveform` is `(samples,)` or `(channels, samples)` in either order.
    """
    if waveform.dtype == bool or waveform.dtype.kind not in "iuf":
        raise ValueError(f"{name}: expected numeric samples, got dtype {waveform.dtype}.")
    if waveform.size == 0:
        raise ValueError(f"{name} is empty (0 samples).")
    if waveform.dtype.kind == "f" and not np.isfinite(waveform).all():
        raise ValueError(f"{name} contains NaN or Inf samples.")
    if sampling_rate is None:
        return
    if sampling_rate <= 0:
        raise ValueError(f"{name}: the sampling rate must be positive, got {sampling_rate}.")
    num_samples = max(waveform.shape)
    if min_samples is not None and num_samples < min_samples:
        raise ValueError(
            f"{name} is too short: {num_samples} samples at {sampling_rate} Hz "
            f"({1000 * num_samples / sampling_rate:.1f} ms), but the audio tower's convolutional front end needs at "
            f"least {min_samples} ({1000 * min_samples / sampling_rate:.1f} ms)."
        )
    seconds = num_samples / sampling_rate
    if max_audio_seconds is not None and seconds > max_audio_seconds:
        raise ValueError(
            f"{name} is {seconds:.1f} s long, more than max_audio_seconds={max_audio_seconds:g}. CMT classifies one "
            "utterance with its transcript: split long recordings into utterances, or raise `max_audio_seconds` "
            "(attention cost grows with the square of the length)."
        )


def _to_mono_float(audio, index: int) -> np.ndarray:
    """One item as a 1-D float32 array: integers scaled to [-1, 1), channels averaged."""
    name = f"Audio item {index}"
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    audio = np.asarray(audio)
    check_waveform(audio, None, name)
    if audio.dtype.kind == "i":
        audio = audio.astype(np.float32) / float(-np.iinfo(audio.dtype).min)
    elif audio.dtype.kind == "u":
        middle = (float(np.iinfo(audio.dtype).max) + 1.0) / 2.0
        audio = (audio.astype(np.float32) - middle) / middle
    audio = audio.astype(np.float32, copy=False)
    if audio.ndim == 2:
        channel_axis = int(np.argmin(audio.shape))
        if audio.shape[channel_axis] > MAX_CHANNELS:
            raise ValueError(
                f"{name} has shape {audio.shape}: a 2-D item is read as multi-channel audio, and neither axis looks "
                f"like channels (<= {MAX_CHANNELS}). Pass a batch as a list of 1-D arrays."
            )
        audio = audio.mean(axis=channel_axis)
    elif audio.ndim != 1:
        raise ValueError(f"{name} has shape {audio.shape}; expected (samples,) or (channels, samples).")
    return audio


def _is_single_item(audio) -> bool:
    if isinstance(audio, (np.ndarray, torch.Tensor)):
        return True
    return isinstance(audio, Sequence) and len(audio) > 0 and np.isscalar(audio[0])


class CMTProcessor(ProcessorMixin):
    r"""
    Wraps a wav2vec2-style feature extractor and the text tower's tokenizer. Returns `input_values` and
    `audio_attention_mask` for the audio and `input_ids` and `attention_mask` for the transcript (two separate masks).

    Audio may come at any sampling rate (resampled with torchaudio to the feature extractor's rate), as float or
    integer PCM (int16 is scaled by 1/32768), mono or multi-channel (downmixed by averaging; a 2-D item is read as
    `(channels, samples)` or `(samples, channels)`, whichever axis is short), one item or a list of items.

    Example:

    ```python
    >>> processor = CMTProcessor.from_pretrained("path/to/cmt")
    >>> inputs = processor(audio=waveform, sampling_rate=8000, text="I can't believe it!", return_tensors="pt")
    >>> logits = model(**inputs).logits
    ```
    """

    def __init__(self, feature_extractor, tokenizer):
        super().__init__(feature_extractor, tokenizer)

    @classmethod
    def from_audio_text_pretrained(cls, audio_model_name_or_path: str, text_model_name_or_path: str, **kwargs):
        """Builds the processor from the audio tower's feature extractor and the text tower's tokenizer."""
        feature_extractor = AutoFeatureExtractor.from_pretrained(audio_model_name_or_path, **kwargs)
        feature_extractor.return_attention_mask = True
        return cls(
            feature_extractor=feature_extractor,
            tokenizer=AutoTokenizer.from_pretrained(text_model_name_or_path, **kwargs),
        )

    @property
    def model_input_names(self) -> list[str]:
        return ["input_values", "audio_attention_mask", "input_ids", "attention_mask"]

    def check_model_config(self, config) -> None:
        """
        Raises a `ValueError` when this processor's outputs cannot go into a model with `config` (a `CMTConfig`):
        a tokenizer with more tokens than the text tower's vocabulary. Run once where a model meets its processor
        (the pipeline does), instead of checking token ids on every batch.
        """
        if config.modality == "audio":
            return
        vocab_size = config.text_config.vocab_size
        if len(self.tokenizer) > vocab_size:
            raise ValueError(
                f"The tokenizer has {len(self.tokenizer)} tokens, more than the text tower's vocabulary "
                f"({vocab_size}): was the text tokenized with this model's tokenizer? After adding tokens, call "
                "`model.resize_token_embeddings(len(tokenizer))`."
            )

    def _prepare_audio(self, audio, sampling_rate: int | None, min_samples: int | None = None) -> list[np.ndarray]:
        items = [audio] if _is_single_item(audio) else list(audio)
        if not items:
            raise ValueError("`audio` is an empty batch.")
        target_rate = self.feature_extractor.sampling_rate
        if sampling_rate is None:
            logger.warning_once(
                f"No `sampling_rate` given to CMTProcessor: assuming {target_rate} Hz. Pass it to avoid silent errors."
            )
            sampling_rate = target_rate
        if sampling_rate <= 0:
            raise ValueError(f"`sampling_rate` must be positive, got {sampling_rate}.")
        arrays = [_to_mono_float(item, index) for index, item in enumerate(items)]
        if sampling_rate != target_rate:
            arrays = [
                torchaudio.functional.resample(torch.from_numpy(array), sampling_rate, target_rate).numpy()
                for array in arrays
            ]
        if min_samples is not None:
            for index, array in enumerate(arrays):
                check_waveform(array, target_rate, f"Audio item {index}", min_samples=min_samples)
        return arrays

    def _prepare_text(self, text, max_length: int | None, **tokenizer_kwargs) -> dict:
        items = [text] if isinstance(text, str) else list(text)
        for index, item in enumerate(items):
            if not isinstance(item, str):
                raise ValueError(f"Transcript {index} must be a string, got {type(item).__name__}.")
        max_length = max_length or self.tokenizer.model_max_length
        encoded = self.tokenizer(items, padding=True, truncation=True, max_length=max_length, **tokenizer_kwargs)
        lengths = [len(ids) for ids in self.tokenizer(items, truncation=False)["input_ids"]]
        truncated = [index for index, length in enumerate(lengths) if length > max_length]
        if truncated:
            logger.warning(
                f"Transcripts {truncated} are longer than {max_length} tokens and were truncated to fit the text tower."
            )
        return encoded

    def __call__(
        self,
        audio=None,
        text: str | list[str] | None = None,
        sampling_rate: int | None = None,
        max_text_length: int | None = None,
        return_tensors: str | None = "pt",
        min_audio_samples: int | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Args:
            audio (`np.ndarray`, `torch.Tensor`, `list[float]` or a list of those):
                One waveform or a batch of waveforms.
            text (`str` or `list[str]`):
                One transcript or one per waveform.
            sampling_rate (`int`):
                Sampling rate of `audio`; it is resampled to the feature extractor's rate when they differ.
            max_text_length (`int`, *optional*):
                Token limit of the transcript (defaults to the tokenizer's `model_max_length`); longer text is
                truncated with a warning.
            return_tensors (`str`, *optional*, defaults to `"pt"`):
                `"pt"`, `"np"` or `None` (lists).
            min_audio_samples (`int`, *optional*):
                Refuse audio items shorter than this after resampling: the model's
                `config.min_input_samples()`, the shortest audio its convolutional front end turns into a frame.
                Every item is always checked for being numeric, non-empty and finite.
        """
        if audio is None and text is None:
            raise ValueError("CMTProcessor needs `audio`, `text` or both.")
        features = {}
        if audio is not None:
            arrays = self._prepare_audio(audio, sampling_rate, min_audio_samples)
            extracted = self.feature_extractor(
                arrays,
                sampling_rate=self.feature_extractor.sampling_rate,
                padding=True,
                return_attention_mask=True,
                return_tensors=return_tensors,
                **kwargs,
            )
            features["input_values"] = extracted["input_values"]
            features["audio_attention_mask"] = extracted["attention_mask"]
        if text is not None:
            encoded = self._prepare_text(text, max_text_length, return_tensors=return_tensors)
            features["input_ids"] = encoded["input_ids"]
            features["attention_mask"] = encoded["attention_mask"]
        if audio is not None and text is not None:
            num_audio, num_text = len(features["input_values"]), len(features["input_ids"])
            if num_audio != num_text:
                raise ValueError(
                    f"Got {num_audio} audio items but {num_text} transcripts; pass one transcript per item."
                )
        return BatchFeature(features, tensor_type=return_tensors)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


__all__ = ["CMTProcessor", "check_waveform"]
