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


def _to_mono_float(audio, index: int) -> np.ndarray:
    """One item as a 1-D float32 array: integers scaled to [-1, 1), channels averaged."""
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    audio = np.asarray(audio)
    if audio.dtype == bool or audio.dtype.kind not in "iuf":
        raise ValueError(f"Audio item {index}: expected numeric samples, got dtype {audio.dtype}.")
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
                f"Audio item {index} has shape {audio.shape}: a 2-D item is read as multi-channel audio, and neither "
                f"axis looks like channels (<= {MAX_CHANNELS}). Pass a batch as a list of 1-D arrays."
            )
        audio = audio.mean(axis=channel_axis)
    elif audio.ndim != 1:
        raise ValueError(f"Audio item {index} has shape {audio.shape}; expected (samples,) or (channels, samples).")
    if audio.size == 0:
        raise ValueError(f"Audio item {index} is empty (0 samples).")
    if not np.isfinite(audio).all():
        raise ValueError(f"Audio item {index} contains NaN or Inf samples.")
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

    def _prepare_audio(self, audio, sampling_rate: int | None) -> list[np.ndarray]:
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
        """
        if audio is None and text is None:
            raise ValueError("CMTProcessor needs `audio`, `text` or both.")
        features = {}
        if audio is not None:
            arrays = self._prepare_audio(audio, sampling_rate)
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


__all__ = ["CMTProcessor"]
