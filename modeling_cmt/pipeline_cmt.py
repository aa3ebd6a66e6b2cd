"""AudioTextClassificationPipeline: emotion or sentiment of an utterance from its audio and its transcript with a CMT
classification checkpoint, registered as the `"audio-text-classification"` task.

A checkpoint saved from `CMTForSequenceClassification` carries this file and lists it under `custom_pipelines` in its
config.json, so `pipeline("audio-text-classification", model=path, trust_remote_code=True)` works where the
`modeling_cmt` package is not installed.
"""

import io
import os
import re
import struct
import types
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import Pipeline, pipeline
from transformers.utils import logging

from .processing_cmt import CMTProcessor, _audio_items, _to_mono_float, check_sampling_rate, check_waveform


logger = logging.get_logger(__name__)

TASK = "audio-text-classification"
FUNCTIONS_TO_APPLY = ("softmax", "sigmoid", "none")
# CMU-MOSEI sentiment is annotated in [-3, 3]; the 7-class view rounds into that range.
SENTIMENT_BOUND = 3.0
PREPROCESS_PARAMETERS = ("sampling_rate", "channel_axis", "allow_audio_only", "max_audio_seconds", "max_text_length")
POSTPROCESS_PARAMETERS = ("top_k", "function_to_apply", "sentiment_views")
# What happens to an input that cannot be classified: raise an error naming it, or return `{"error": message}` in its
# place (as `datasets`' readers take `on_bad_files`).
ON_BAD_INPUTS = ("error", "return")
# Per-item values that travel beside the tensors from `preprocess` to `postprocess`.
METADATA_KEYS = ("input_name", "transcript", "transcript_source", "error")
# A decoder may end a little before the duration a header declares (MP3 encoder padding is ~0.1 s); a file that
# decodes to less than this much short of it, and to under 90 % of it, is truncated.
TRUNCATION_TOLERANCE_SECONDS = 0.25


@dataclass
class AudioTextInput:
    """One utterance as the pipeline sees it: audio in any accepted form, its transcript (None = not given) and the
    name used in error messages."""

    audio: Any
    text: Any = None
    sampling_rate: int | None = None
    name: str = "the audio input"


def _describe(audio, index: int | None) -> str:
    """How error messages name an input: its file when it has one, else its kind and, in a list, its index."""
    if isinstance(audio, (str, os.PathLike)):
        what = f"audio file {os.fspath(audio)!r}"
    elif isinstance(audio, dict) and audio.get("path"):
        what = f"audio file {audio['path']!r}"
    elif isinstance(audio, bytes):
        what = "audio bytes"
    elif isinstance(audio, (dict, np.ndarray, torch.Tensor, list, tuple)):
        what = "audio array"
    elif hasattr(audio, "get_all_samples"):
        what = "decoded audio"
    else:
        what = f"audio {type(audio).__name__}"
    if index is not None:
        return f"input {index} ({what})"
    return what if what.startswith("audio file") else f"the {what}"


def as_audio_text_input(item, text=None, index: int | None = None) -> AudioTextInput:
    """
    Normalises one pipeline input: a path, bytes, a `{"array"|"raw", "sampling_rate"}` dict, a bare array, a decoded
    `datasets` audio object, or a row dict with `audio` and `text`. An explicit `text` replaces the item's own.
    """
    if isinstance(item, AudioTextInput):
        return item if text is None else AudioTextInput(item.audio, text, item.sampling_rate, item.name)
    sampling_rate = None
    if isinstance(item, dict) and "audio" in item:
        audio, row_text, sampling_rate = item["audio"], item.get("text"), item.get("sampling_rate")
    elif isinstance(item, dict):
        audio, row_text = item, item.get("text")
    else:
        audio, row_text = item, None
    return AudioTextInput(
        audio=audio,
        text=text if text is not None else row_text,
        sampling_rate=sampling_rate,
        name=_describe(audio, index),
    )


class RowDataset(torch.utils.data.Dataset):
    """A `datasets.Dataset` (or any sized, indexable collection of rows with `audio` and `text`) as pipeline input."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> AudioTextInput:
        return as_audio_text_input(self.rows[index], index=index)


def _wav_bytes_missing(source) -> tuple[int, int] | None:
    """For a RIFF WAV file (a path or its bytes) that ends before its `data` chunk does: (bytes the header declares,
    bytes present). FFmpeg decodes such a file without a word, up to where it ends."""
    with open(source, "rb") if isinstance(source, (str, os.PathLike)) else io.BytesIO(source) as file:
        size = file.seek(0, os.SEEK_END)
        file.seek(0)
        header = file.read(12)
        if header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return None
        while len(chunk := file.read(8)) == 8:
            chunk_id, chunk_size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"data":
                present = size - file.tell()
                if chunk_size in (0, 0xFFFFFFFF) or present >= chunk_size:  # streamed WAVs leave the size unset
                    return None
                return chunk_size, present
            file.seek(chunk_size + chunk_size % 2, os.SEEK_CUR)
    return None


def _check_complete(decoder, samples, source, name: str) -> None:
    """Refuses audio that decodes to less than its header declares (a file cut short by an interrupted copy or
    download): classifying the part that is there would give a confident answer about an utterance the model never
    heard in full."""
    missing = _wav_bytes_missing(source) if isinstance(source, (str, os.PathLike, bytes)) else None
    if missing is not None:
        declared, present = missing
        reason = f"its header declares {declared} bytes of audio, the file holds {present} ({present / declared:.0%})"
    else:
        declared = decoder.metadata.duration_seconds_from_header
        decoded = samples.data.shape[-1] / samples.sample_rate
        if not declared or declared - decoded <= TRUNCATION_TOLERANCE_SECONDS or decoded >= 0.9 * declared:
            return
        reason = f"its header declares {declared:.2f} s of audio, only {decoded:.2f} s decode"
    raise ValueError(
        f"{name} is truncated: {reason}. Copy or download it again; to classify the part that is there, decode it "
        "yourself and pass the samples as an array."
    )


def _decode(source, name: str) -> tuple[np.ndarray, int]:
    """Decodes a file path or encoded bytes with torchcodec (any format FFmpeg reads): `(channels, samples)`, rate."""
    try:  # kept out of the remote-code import check: only files and bytes need torchcodec
        from torchcodec.decoders import AudioDecoder
    except (ImportError, RuntimeError) as error:
        raise ImportError(
            f"Decoding {name} needs torchcodec and FFmpeg's shared libraries (`pip install torchcodec`, "
            "`apt-get install ffmpeg`); or pass the waveform as an array."
        ) from error

    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        raise IsADirectoryError(f"{name} is a directory, not an audio file: pass the audio files in it.")
    if isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
        raise FileNotFoundError(f"{name}: no such file.")
    try:
        decoder = AudioDecoder(source)
        samples = decoder.get_all_samples()
    except (RuntimeError, ValueError) as error:
        reason = re.sub(r"^.*?\.cpp:\d+, ", "", str(error)).strip()
        if "No audio frames were decoded" in reason:
            raise ValueError(f"{name} is empty: it holds no audio frames.") from error
        raise ValueError(f"Could not decode {name}: {reason}") from error
    _check_complete(decoder, samples, source, name)
    return samples.data.numpy(), int(samples.sample_rate)


def read_audio(
    item: AudioTextInput, default_rate: int, sampling_rate: int | None = None, channel_axis: int | None = None
) -> tuple[np.ndarray, int]:
    """
    The waveform of `item` as a 1-D float32 NumPy array and its sampling rate. Files and bytes are decoded at their
    own rate, and their channels averaged; arrays (any numeric dtype) take `item.sampling_rate`, then
    `sampling_rate`, then `default_rate` (with a warning), and a 2-D array is one multi-channel utterance whose
    channels are on `channel_axis` (or on its one short axis).
    """
    audio, name = item.audio, item.name
    rate = item.sampling_rate
    if isinstance(audio, (str, os.PathLike, bytes)):
        waveform, rate = _decode(audio, name)
        return _to_mono_float(waveform, name, channel_axis=0), rate
    if hasattr(audio, "get_all_samples"):  # a torchcodec AudioDecoder, as `datasets` 5 decodes audio columns
        samples = audio.get_all_samples()
        _check_complete(audio, samples, None, name)
        return _to_mono_float(samples.data.numpy(), name, channel_axis=0), int(samples.sample_rate)
    if isinstance(audio, dict):
        array = audio.get("array", audio.get("raw"))
        if array is None:
            if audio.get("bytes") is not None:
                waveform, rate = _decode(audio["bytes"], name)
                return _to_mono_float(waveform, name, channel_axis=0), rate
            if audio.get("path"):
                waveform, rate = _decode(audio["path"], name)
                return _to_mono_float(waveform, name, channel_axis=0), rate
            raise ValueError(
                f"{name}: an audio dict needs `array` (or `raw`) and `sampling_rate`, or a `path`; got keys "
                f"{sorted(audio)}."
            )
        audio, rate = array, audio.get("sampling_rate", rate)
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    elif isinstance(audio, (list, tuple)):
        audio = np.asarray(audio)
    if not isinstance(audio, np.ndarray):
        raise TypeError(
            f"{name}: expected a file path, bytes, a NumPy array or torch tensor, a dict with `array` and "
            f"`sampling_rate`, or a row dict with `audio` and `text`; got {type(audio).__name__}."
        )
    rate = rate if rate is not None else sampling_rate
    if rate is None:
        logger.warning(
            f"No sampling rate given for {name}: assuming the feature extractor's {default_rate} Hz. Pass "
            "`sampling_rate=` or a {'array': ..., 'sampling_rate': ...} dict to avoid silent errors."
        )
        rate = default_rate
    return _to_mono_float(audio, name, channel_axis), check_sampling_rate(rate, f"The sampling rate of {name}")


def check_classification_model(model) -> None:
    """Raises a `ValueError` unless `model` is a CMT checkpoint with a trained classification / regression head."""
    config = model.config
    source = getattr(model, "name_or_path", "") or type(model).__name__
    if getattr(config, "model_type", None) != "cmt":
        raise ValueError(
            f"The audio-text-classification pipeline needs a CMT classification checkpoint; {source!r} is a "
            f"{getattr(config, 'model_type', type(model).__name__)!r} model ({type(model).__name__})."
        )
    if not type(model).__name__.endswith("ForSequenceClassification"):
        raise ValueError(
            f"The audio-text-classification pipeline needs CMTForSequenceClassification; got {type(model).__name__} "
            f"from {source!r}."
        )
    architectures = getattr(config, "architectures", None) or []
    if architectures and not any(name.endswith("ForSequenceClassification") for name in architectures):
        raise ValueError(
            f"{source!r} was saved as {architectures[0]}, which has no trained classification head: loading it as "
            "CMTForSequenceClassification would predict from random head weights. Fine-tune a classification "
            "checkpoint (examples/run_finetune.py) and point the pipeline at it."
        )


class AudioTextClassificationPipeline(Pipeline):
    """
    Classifies utterances (speech emotion recognition, sentiment analysis) from the audio and its transcript with
    [`CMTForSequenceClassification`].

    Inputs, one or a list of:
        - a path to an audio file (any format FFmpeg decodes, through torchcodec), or the file's bytes;
        - `{"array": waveform, "sampling_rate": rate}` (or `"raw"` for `"array"`, as the transformers audio
          pipelines take it);
        - a bare waveform (NumPy array or torch tensor) at `sampling_rate=` or, with a warning, at the feature
          extractor's rate; a 2-D array is a batch `(batch, samples)`, as transformers' feature extractors read it,
          unless `channel_axis` says it is one multi-channel utterance;
        - a dataset row: a dict with `audio` (any of the above, or a decoded `datasets` audio object) and `text`.
    Audio of any rate, integer or float, is resampled by [`CMTProcessor`]. Multi-channel audio is downmixed: decoded
    files, and 2-D arrays in an audio dict (one utterance; the channels are on `channel_axis`, or on the one short
    axis).

    The transcript comes from `text=` (a string, or one string per item of a list) or from the row's `text`. When it
    is missing or blank, `asr_model` transcribes the audio; without one the pipeline raises, unless
    `allow_audio_only=True`, which classifies with an empty transcript (the text tower sees only `<s></s>`).

    Parameters (at construction or per call):
        top_k (`int`, *optional*): how many labels to return, best first; all labels by default.
        function_to_apply (`str`, *optional*): `"softmax"`, `"sigmoid"` or `"none"`; defaults to `"none"` for
            regression heads, `"sigmoid"` for multi-label heads and `"softmax"` otherwise.
        sampling_rate (`int`, *optional*): rate of bare waveforms.
        channel_axis (`int`, *optional*): where the channels of a multi-channel array are (`0`: `(channels, samples)`,
            `-1`: `(samples, channels)`); with it, a bare 2-D array is one utterance rather than a batch.
        asr_model (model id, path, or an `automatic-speech-recognition` pipeline): transcribes items without a
            transcript.
        allow_audio_only (`bool`, *optional*, defaults to `False`): classify items without a transcript from audio
            alone instead of raising.
        max_audio_seconds (`float`, *optional*, defaults to 60): longer audio is refused with an error (`None`: no
            limit). CMT is trained on single utterances paired with their transcript, so long recordings should be
            segmented into utterances first rather than chunked here.
        max_text_length (`int`, *optional*): token limit of the transcript; defaults to what the text tower takes.
            Longer transcripts are truncated with a warning.
        sentiment_views (`bool`, *optional*, defaults to `True`): for regression heads, add the CMU-MOSEI views of
            the score (see below).
        on_bad_inputs (`str`, *optional*, defaults to `"error"`): what to do with an input that cannot be classified
            (a missing or undecodable file, audio that is too short, no transcript, ...): `"error"` raises an error
            naming it; `"return"` puts `{"error": message}` in its place and classifies the others.

    Returns, per input:
        - classification heads: a list of `{"label": str, "score": float}`, best first;
        - regression heads (`num_labels=1`): `{"score": float}`, with `sentiment_views` also `"sentiment_class"`
          (`int` in [-3, 3]: `round(clip(score, -3, 3))`, halves to even, the Acc7 view) and `"polarity"`
          (`"positive"` if score > 0, `"negative"` if < 0, `"neutral"` if exactly 0: the Acc2 view).
    When the pipeline chose the transcript (ASR or audio-only), every returned dict also has `"transcript"` (the text
    the model read; ASR output is stripped of surrounding whitespace) and `"audio_only"` (`True` when it is empty).
    With `on_bad_inputs="return"`, an input that failed gives `{"error": message}`, the message naming the input.

    Example:

    ```python
    >>> from transformers import pipeline

    >>> classifier = pipeline("audio-text-classification", model="path/to/cmt-iemocap", trust_remote_code=True)
    >>> classifier("utterance.wav", text="I can't believe you did that!")
    [{'label': 'hap', 'score': 0.81}, {'label': 'neu', 'score': 0.11}, ...]
    >>> classifier(["a.wav", "b.flac"], text=["First transcript.", "Second one."], batch_size=8, top_k=1)
    ```
    """

    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = None
    _load_tokenizer = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_classification_model(self.model)
        if self.processor is not None:
            self.tokenizer = getattr(self.processor, "tokenizer", None)
            self.feature_extractor = getattr(self.processor, "feature_extractor", None)
        if self.tokenizer is None or self.feature_extractor is None:
            missing = " and ".join(
                part
                for part, component in (("tokenizer", self.tokenizer), ("feature extractor", self.feature_extractor))
                if component is None
            )
            raise ValueError(
                f"No {missing} found for {self.model.name_or_path!r}: save the CMTProcessor beside the weights "
                "(`processor.save_pretrained(path)`) or pass `processor=` (or `tokenizer=` and `feature_extractor=`)."
            )
        self.processor = CMTProcessor(feature_extractor=self.feature_extractor, tokenizer=self.tokenizer)
        self.processor.check_model_config(self.model.config)
        self.model.eval()

    @classmethod
    def custom_pipelines(cls) -> dict:
        """
        The `custom_pipelines` entry of config.json that points `pipeline()` at this class (as transformers'
        `Pipeline.save_pretrained` writes it): classification checkpoints carry it with this file, so
        `pipeline(task, model=path, trust_remote_code=True)` works where the package is not installed.
        """
        return {
            TASK: {
                "impl": f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}",
                "pt": ["AutoModelForSequenceClassification"],
                "type": "multimodal",
            }
        }

    # --- parameters --------------------------------------------------------------------------------------------------

    def _sanitize_parameters(self, asr_model=None, on_bad_inputs=None, **kwargs):
        unknown = sorted(set(kwargs) - set(PREPROCESS_PARAMETERS) - set(POSTPROCESS_PARAMETERS))
        if unknown:
            accepted = PREPROCESS_PARAMETERS + POSTPROCESS_PARAMETERS
            accepted += ("asr_model", "on_bad_inputs", "text", "batch_size")
            raise TypeError(
                f"AudioTextClassificationPipeline got unexpected arguments {unknown}; it accepts {sorted(accepted)}."
            )
        preprocess_params = {key: kwargs[key] for key in PREPROCESS_PARAMETERS if key in kwargs}
        postprocess_params = {key: kwargs[key] for key in POSTPROCESS_PARAMETERS if key in kwargs}
        if asr_model is not None:
            preprocess_params["asr_pipeline"] = self._asr_pipeline(asr_model)
        if on_bad_inputs is not None:
            if on_bad_inputs not in ON_BAD_INPUTS:
                raise ValueError(f"`on_bad_inputs` must be one of {list(ON_BAD_INPUTS)}, got {on_bad_inputs!r}.")
            preprocess_params["on_bad_inputs"] = postprocess_params["on_bad_inputs"] = on_bad_inputs

        top_k = postprocess_params.get("top_k")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"`top_k` must be a positive integer or None (all labels), got {top_k!r}.")
        function_to_apply = postprocess_params.get("function_to_apply")
        if function_to_apply is not None and function_to_apply not in FUNCTIONS_TO_APPLY:
            raise ValueError(
                f"Invalid value for `function_to_apply`: {function_to_apply!r}. Valid options are "
                f"{list(FUNCTIONS_TO_APPLY)}."
            )
        max_audio_seconds = preprocess_params.get("max_audio_seconds")
        if max_audio_seconds is not None and not max_audio_seconds > 0:
            raise ValueError(f"`max_audio_seconds` must be positive or None (no limit), got {max_audio_seconds!r}.")
        if preprocess_params.get("sampling_rate") is not None:
            preprocess_params["sampling_rate"] = check_sampling_rate(
                preprocess_params["sampling_rate"], "`sampling_rate`"
            )
        return preprocess_params, {}, postprocess_params

    def _asr_pipeline(self, asr_model):
        """An `automatic-speech-recognition` pipeline from an id or path (loaded once, from safetensors weights only:
        for a pickle you trust, pass a pipeline object), or the callable given."""
        if isinstance(asr_model, (str, os.PathLike)):
            loaded = self.__dict__.setdefault("_asr_pipelines", {})
            key = os.fspath(asr_model)
            if key not in loaded:
                loaded[key] = pipeline(
                    "automatic-speech-recognition",
                    model=key,
                    device=self.device,
                    model_kwargs={"use_safetensors": True},
                )
            return loaded[key]
        if callable(asr_model):
            return asr_model
        raise TypeError(
            f"`asr_model` must be a model id or path, or an automatic-speech-recognition pipeline; got "
            f"{type(asr_model).__name__}."
        )

    def default_max_text_length(self) -> int:
        """The longest transcript (in tokens) the tokenizer and the text tower's position embeddings both take."""
        return self.processor.text_token_limit(self.model.config)

    # --- calling -----------------------------------------------------------------------------------------------------

    def __call__(self, inputs, text: str | list[str] | None = None, **kwargs):
        """
        Classify one utterance or a list of them. See the class docstring for the accepted inputs and parameters.

        Args:
            inputs: an audio file path, bytes, `{"array", "sampling_rate"}` dict, waveform, or row dict with `audio`
                and `text`; or a list of those (batched by `batch_size`; returns a list), a `datasets.Dataset` with
                `audio` and `text` columns or a generator (both return an iterator).
            text (`str` or `list[str]`, *optional*):
                The transcript, or one per item of a list; overrides the items' own `text`.
        """
        array_batch = isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim == 2
        if array_batch and kwargs.get("channel_axis") is None:
            inputs = _audio_items(inputs, None)  # (batch, samples), as transformers' feature extractors read it
        if isinstance(inputs, list):
            if not inputs:
                return []
            if text is not None and (isinstance(text, str) or len(text) != len(inputs)):
                hint = " (a 2-D array is a batch; for one multi-channel utterance pass `channel_axis`)" * array_batch
                raise ValueError(
                    f"Got {len(inputs)} audio inputs{hint}: pass `text` as a list of {len(inputs)} transcripts (or "
                    "put each transcript in its input dict)."
                )
            texts = text if text is not None else [None] * len(inputs)
            inputs = [
                as_audio_text_input(item, item_text, index)
                for index, (item, item_text) in enumerate(zip(inputs, texts))
            ]
        elif isinstance(inputs, (types.GeneratorType, torch.utils.data.Dataset)) or hasattr(inputs, "column_names"):
            if text is not None:
                raise ValueError("With a dataset or generator input, put each transcript in its item (a `text` key).")
            if hasattr(inputs, "column_names"):
                inputs = RowDataset(inputs)  # a `datasets.Dataset`: classified lazily, row by row or in batches
        else:
            if text is not None and not isinstance(text, str):
                raise ValueError(f"One audio input takes one transcript string as `text`, got {type(text).__name__}.")
            inputs = as_audio_text_input(inputs, text)
        return super().__call__(inputs, **kwargs)

    def preprocess(
        self,
        inputs,
        sampling_rate: int | None = None,
        channel_axis: int | None = None,
        asr_pipeline=None,
        allow_audio_only: bool = False,
        max_audio_seconds: float | None = 60.0,
        max_text_length: int | None = None,
        on_bad_inputs: str = "error",
    ) -> dict:
        item = as_audio_text_input(inputs)
        try:
            return self._prepare(
                item, sampling_rate, channel_axis, asr_pipeline, allow_audio_only, max_audio_seconds, max_text_length
            )
        except Exception as error:  # whatever fails, with "return" it is that input's result
            if on_bad_inputs == "error":
                raise
            message = str(error) if item.name in str(error) else f"{item.name}: {error}"
            return self._placeholder(item.name, message)

    def _prepare(
        self, item, sampling_rate, channel_axis, asr_pipeline, allow_audio_only, max_audio_seconds, max_text_length
    ) -> dict:
        name = item.name
        target_rate = self.feature_extractor.sampling_rate
        waveform, rate = read_audio(item, target_rate, sampling_rate, channel_axis)
        check_waveform(waveform, rate, name, max_audio_seconds)

        transcript, source = item.text, "given"
        if transcript is not None and not isinstance(transcript, str):
            raise ValueError(f"The transcript of {name} must be a string, got {type(transcript).__name__}.")
        if transcript is None or not transcript.strip():
            state = "is empty" if transcript is not None else "is missing"
            if asr_pipeline is not None:
                transcript, source = asr_pipeline({"raw": waveform, "sampling_rate": rate})["text"].strip(), "asr"
            elif allow_audio_only:
                transcript, source = "", "none"
            else:
                raise ValueError(
                    f"The transcript of {name} {state}: pass `text=`, `asr_model=` to transcribe the audio, or "
                    "`allow_audio_only=True` to classify from the audio alone."
                )

        max_text_length = max_text_length or self.default_max_text_length()
        num_tokens = len(self.tokenizer(transcript)["input_ids"])
        if num_tokens > max_text_length:
            logger.warning(
                f"The transcript of {name} has {num_tokens} tokens, more than the {max_text_length} the text tower "
                "takes: it is truncated."
            )
        try:
            model_inputs = self.processor(
                audio=waveform,
                text=transcript,
                sampling_rate=rate,
                max_text_length=max_text_length,
                return_tensors="pt",
            )
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from error

        resampled = model_inputs["input_values"][0].numpy()
        check_waveform(resampled, target_rate, name, min_samples=self.model.config.min_input_samples())
        return {
            **model_inputs,
            "input_name": name,
            "transcript": transcript,
            "transcript_source": source,
            "error": None,
        }

    def _placeholder(self, name: str, message: str) -> dict:
        """What a failed input carries through the batch: the smallest inputs the model takes (silence as short as the
        audio front end allows, an empty transcript), so batches keep their shape, and the error for `postprocess`."""
        if "_placeholder_inputs" not in self.__dict__:
            rate = self.feature_extractor.sampling_rate
            silence = np.zeros(self.model.config.min_input_samples(), dtype=np.float32)
            self._placeholder_inputs = self.processor(audio=silence, text="", sampling_rate=rate, return_tensors="pt")
        return {
            **self._placeholder_inputs,
            "input_name": name,
            "transcript": "",
            "transcript_source": "given",
            "error": message,
        }

    def _forward(self, model_inputs: dict) -> dict:
        tensors = {key: value for key, value in model_inputs.items() if key not in METADATA_KEYS}
        logits = self.model(**tensors).logits  # (batch, num_labels)
        return {"logits": logits, **{key: model_inputs[key] for key in METADATA_KEYS}}

    def postprocess(
        self,
        model_outputs: dict,
        top_k: int | None = None,
        function_to_apply: str | None = None,
        sentiment_views=True,
        on_bad_inputs: str = "error",
    ) -> list[dict] | dict:
        if model_outputs["error"] is not None:
            return {"error": model_outputs["error"]}
        config = self.model.config
        logits = model_outputs["logits"][0].float()  # (num_labels,)
        if not torch.isfinite(logits).all():
            message = f"The model returned NaN or Inf scores for {model_outputs['input_name']}."
            if on_bad_inputs == "return":
                return {"error": message}
            raise ValueError(message)
        regression = config.num_labels == 1 or config.problem_type == "regression"
        if function_to_apply is None:
            if regression:
                function_to_apply = "none"
            elif config.problem_type == "multi_label_classification":
                function_to_apply = "sigmoid"
            else:
                function_to_apply = "softmax"
        if function_to_apply == "softmax":
            scores = logits.softmax(-1)
        elif function_to_apply == "sigmoid":
            scores = logits.sigmoid()
        else:
            scores = logits

        extra = {}
        if model_outputs["transcript_source"] != "given":
            transcript = model_outputs["transcript"]
            extra = {"transcript": transcript, "audio_only": not transcript.strip()}

        if config.num_labels == 1:
            score = scores.item()
            result = {"score": score}
            if regression and sentiment_views and function_to_apply == "none":
                result["sentiment_class"] = int(np.round(np.clip(score, -SENTIMENT_BOUND, SENTIMENT_BOUND)))
                result["polarity"] = "positive" if score > 0 else "negative" if score < 0 else "neutral"
            return {**result, **extra}

        top_k = config.num_labels if top_k is None else min(top_k, config.num_labels)
        if regression:  # several regression targets keep their label order
            ids = list(range(top_k))
        else:
            ids = scores.topk(top_k).indices.tolist()
        return [{"label": config.id2label[index], "score": scores[index].item(), **extra} for index in ids]


__all__ = ["AudioTextClassificationPipeline", "AudioTextInput"]
