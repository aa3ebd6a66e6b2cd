"""CMTProcessor: turns raw audio (any rate, int or float, mono or multi-channel) and transcripts into CMT inputs."""

from collections.abc import Sequence

import numpy as np
import torch
import torchaudio
from transformers import AutoFeatureExtractor, AutoTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils_base import LARGE_INTEGER
from transformers.utils import logging


logger = logging.get_logger(__name__)

# An axis of at most this many entries is taken for channels: it is a multi-channel item's channel axis, and a 2-D
# "batch" whose items are this short is (samples, channels) audio, refused rather than split into tiny items.
MAX_CHANNELS = 16


def check_sampling_rate(sampling_rate, what: str) -> int:
    """
    `sampling_rate` as an `int`, or a `ValueError` that starts with `what` (e.g. "The sampling rate of input 2") unless
    it is a positive whole number of Hz: a string (`"16000"`), a fraction (`16000.5`) or a bool is refused, a float
    with a whole value (`16000.0`) is taken.
    """
    number = isinstance(sampling_rate, (int, float, np.integer, np.floating)) and not isinstance(sampling_rate, bool)
    if not number or not float(sampling_rate).is_integer() or sampling_rate <= 0:
        raise ValueError(
            f"{what} must be a positive whole number of Hz such as 16000, got {sampling_rate!r} "
            f"({type(sampling_rate).__name__})."
        )
    return int(sampling_rate)


def check_waveform(
    waveform: np.ndarray,
    sampling_rate: int | None,
    name: str,
    max_audio_seconds: float | None = None,
    min_samples: int | None = None,
) -> None:
    """
    Raises a `ValueError` naming the audio (`name`) when its samples cannot go into the model: not numeric, empty,
    NaN or Inf, a sampling rate that is not a positive whole number, fewer than `min_samples` samples (the audio
    tower's front end needs `CMTConfig.min_input_samples()` at the model's rate) or longer than `max_audio_seconds`.
    The one value check of audio: the processor runs it on every item, the pipeline (and `cmt-predict`) on every
    input, so the model's `forward` needs none. `waveform` is `(samples,)` or `(channels, samples)` in either order.
    """
    if waveform.dtype == bool or waveform.dtype.kind not in "iuf":
        raise ValueError(f"{name}: expected numeric samples, got dtype {waveform.dtype}.")
    if waveform.size == 0:
        raise ValueError(f"{name} is empty (0 samples).")
    if waveform.dtype.kind == "f" and not np.isfinite(waveform).all():
        raise ValueError(f"{name} contains NaN or Inf samples.")
    if sampling_rate is None:
        return
    sampling_rate = check_sampling_rate(sampling_rate, f"The sampling rate of {name}")
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
            f"{name} is {seconds:.1f} s long, more than the {max_audio_seconds:g} s limit (max_audio_seconds). CMT "
            "classifies one utterance with its transcript: split long recordings into utterances, or raise the limit "
            "(attention cost grows with the square of the length)."
        )


def _to_mono_float(audio, name: str, channel_axis: int | None = None) -> np.ndarray:
    """
    One item as a 1-D float32 array: integers scaled to [-1, 1), channels averaged. A 2-D item is multi-channel; its
    channel axis is `channel_axis`, or else the one axis of at most `MAX_CHANNELS` entries (refused when both or
    neither are that short).
    """
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
        if channel_axis is None:
            short = [axis for axis, size in enumerate(audio.shape) if size <= MAX_CHANNELS]
            if len(short) != 1:
                raise ValueError(
                    f"{name} has shape {audio.shape}: as multi-channel audio, which axis holds the channels is "
                    "ambiguous. Pass `channel_axis` (0 for (channels, samples), -1 for (samples, channels)), or "
                    "pass a batch as a list of 1-D arrays."
                )
            channel_axis = short[0]
        if channel_axis not in (0, 1, -1, -2):
            raise ValueError(f"`channel_axis` must be 0 or -1 for 2-D audio, got {channel_axis!r}.")
        audio = audio.mean(axis=channel_axis)
    elif audio.ndim != 1:
        raise ValueError(f"{name} has shape {audio.shape}; expected (samples,) or (channels, samples).")
    return audio


def _audio_items(audio, channel_axis: int | None) -> list:
    """
    The items of a processor's `audio`. As transformers' feature extractors read it, a 2-D array or tensor is a batch
    `(batch, samples)`; it is one multi-channel item only when `channel_axis` says so. A 1-D array or a list of
    numbers is one item, any other list one item per entry.
    """
    if isinstance(audio, (np.ndarray, torch.Tensor)):
        if audio.ndim != 2 or channel_axis is not None:
            return [audio]
        if audio.shape[1] <= MAX_CHANNELS:
            raise ValueError(
                f"`audio` has shape {tuple(audio.shape)}: a 2-D array is read as a batch (batch, samples), but items "
                f"of {audio.shape[1]} samples look like (samples, channels) audio. For one multi-channel utterance "
                "pass `channel_axis` (0 for (channels, samples), -1 for (samples, channels))."
            )
        return list(audio)
    if isinstance(audio, Sequence) and len(audio) > 0 and np.isscalar(audio[0]):
        return [audio]
    return list(audio)


class CMTProcessor(ProcessorMixin):
    r"""
    Wraps a wav2vec2-style feature extractor and the text tower's tokenizer. Returns `input_values` and
    `audio_attention_mask` for the audio and `input_ids` and `attention_mask` for the transcript (two separate masks).

    Audio may come at any sampling rate (resampled with torchaudio to the feature extractor's rate), as float or
    integer PCM (int16 is scaled by 1/32768), one item or a batch. As in transformers' feature extractors, a 2-D array
    is a batch `(batch, samples)`; a multi-channel utterance is downmixed by averaging when `channel_axis` says where
    its channels are (or, in a list of items, when one axis is short enough to be the channels).

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

    def text_token_limit(self, config) -> int:
        """The longest transcript, in tokens, that both this tokenizer and the text tower of `config` (a `CMTConfig`)
        take: the tokenizer's `model_max_length` (when it has one) and the tower's position embeddings."""
        text_config = config.text_config
        positions = text_config.max_position_embeddings
        if "roberta" in text_config.model_type:
            positions -= text_config.pad_token_id + 1  # RoBERTa's positions start after the padding index
        return min(self.tokenizer.model_max_length, positions)

    def _prepare_audio(
        self, audio, sampling_rate: int | None, min_samples: int | None = None, channel_axis: int | None = None
    ) -> list[np.ndarray]:
        items = _audio_items(audio, channel_axis)
        if not items:
            raise ValueError("`audio` is an empty batch.")
        target_rate = self.feature_extractor.sampling_rate
        if sampling_rate is None:
            logger.warning_once(
                f"No `sampling_rate` given to CMTProcessor: assuming {target_rate} Hz. Pass it to avoid silent errors."
            )
            sampling_rate = target_rate
        sampling_rate = check_sampling_rate(sampling_rate, "`sampling_rate`")
        arrays = [_to_mono_float(item, f"Audio item {index}", channel_axis) for index, item in enumerate(items)]
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
        if isinstance(text, str):
            items = [text]
        elif isinstance(text, (list, tuple)) and text:
            items = list(text)
        else:
            raise ValueError(
                f"`text` must be a transcript string or a non-empty list of them, got {text!r} ({type(text).__name__})."
            )
        for index, item in enumerate(items):
            if not isinstance(item, str):
                raise ValueError(f"Transcript {index} must be a string, got {type(item).__name__}.")
        max_length = max_length or self.tokenizer.model_max_length
        if max_length >= LARGE_INTEGER:  # a tokenizer saved without `model_max_length`
            logger.warning_once(
                "The tokenizer has no `model_max_length`, so transcripts are not truncated: pass `max_text_length` "
                "(`processor.text_token_limit(model.config)` is what the text tower takes) or set "
                "`tokenizer.model_max_length`."
            )
            return self.tokenizer(items, padding=True, **tokenizer_kwargs)
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
        channel_axis: int | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Args:
            audio (`np.ndarray`, `torch.Tensor`, `list[float]` or a list of those):
                One waveform, a 2-D array `(batch, samples)`, or a list of waveforms (of any lengths).
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
            channel_axis (`int`, *optional*):
                Where the channels of multi-channel audio are: `0` for `(channels, samples)`, `-1` for
                `(samples, channels)`. With it, a 2-D `audio` array is one utterance, downmixed by averaging its
                channels; without it, a 2-D array is a batch.
        """
        if audio is None and text is None:
            raise ValueError("CMTProcessor needs `audio`, `text` or both.")
        features = {}
        if audio is not None:
            arrays = self._prepare_audio(audio, sampling_rate, min_audio_samples, channel_axis)
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
                read_as_batch = isinstance(audio, (np.ndarray, torch.Tensor)) and audio.ndim == 2
                hint = " (a 2-D array is a batch; for one multi-channel utterance pass `channel_axis`)" * read_as_batch
                raise ValueError(
                    f"Got {num_audio} audio items{hint} but {num_text} transcripts; pass one transcript per item."
                )
        return BatchFeature(features, tensor_type=return_tensors)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


__all__ = ["CMTProcessor", "check_sampling_rate", "check_waveform"]
