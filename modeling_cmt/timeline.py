"""Emotion timelines of long recordings: a call or a meeting, minutes or hours long, split into utterances by a
voice-activity detector, each utterance given its own transcript and classified by a CMT checkpoint.

    cmt-timeline path/to/checkpoint call.wav --transcript call.srt --output call.csv --plot call.png
    cmt-timeline path/to/checkpoint call.wav --asr_model openai/whisper-small --channels separate --output call.jsonl

1. **Segments.** Silero VAD (the `silero-vad` package, whose ONNX models ship in its wheel and run offline) reads
   the recording block by block (`block_seconds` of audio decoded at a time by torchcodec), so memory stays bounded
   on hour-long files: what is kept is one speech probability per 32 ms frame. Speech regions closer than
   `min_silence_seconds` are one segment; longer ones are cut at their longest pause so no segment exceeds
   `max_segment_seconds`.
2. **Transcripts.** Each segment's text comes from a transcript with timestamps (SRT, WebVTT, or JSON: a list of
   `{"start", "end", "text"}`, Whisper's `{"segments": [...]}` or the `chunks` of a transformers ASR pipeline run
   with `return_timestamps=True`; every cue goes to the segment it overlaps most), else from an
   `automatic-speech-recognition` pipeline run on the segment, else (`allow_audio_only=True`) it is empty.
3. **Classification.** Every segment goes through the `audio-text-classification` pipeline with its own text, in
   batches; a segment that fails is kept as a row with its error.

Stereo call recordings can be read as two speakers (`channels="separate"`: VAD and classification per channel, agent
on the left and customer on the right by default) instead of being downmixed (`channels="mix"`, the default).

This module is not part of the remote code a checkpoint carries: it needs the `timeline` extra
(`pip install "cmt-speech[timeline]"`: silero-vad, onnxruntime, webvtt-py; matplotlib for plots).
"""

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio

from .configuration_cmt import SAMPLING_RATE
from .processing_cmt import check_waveform


# Silero VAD's 16 kHz model reads frames of 512 samples, each with the 64 samples before it as context.
VAD_FRAME = 512
VAD_CONTEXT = 64
VAD_STATE_SHAPE = (1, 1, 128)
VAD_FRAMES_PER_CALL = 512
# Cross-talk is judged against the other channels' loudest frame within +-10 frames (0.32 s), so that the pauses
# between the other speaker's words do not let the leak through.
CROSSTALK_FRAMES = 10
CHANNEL_MODES = ("mix", "separate")
DEFAULT_CHANNEL_NAMES = ("agent", "customer")
TRANSCRIPT_FORMATS = (".srt", ".vtt", ".json")
OUTPUT_FORMATS = (".csv", ".jsonl")
INSTALL_HINT = 'install the `timeline` extra: pip install "cmt-speech[timeline]"'


def _require(module: str, purpose: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as error:
        raise ImportError(f"{purpose} needs the `{module}` package: {INSTALL_HINT}.") from error


# ---------------------------------------------------------------------------------------------------------------------
# Audio, read block by block
# ---------------------------------------------------------------------------------------------------------------------


class Recording:
    """
    A recording read in blocks at 16 kHz, as `(channels, samples)` float32: a file or encoded bytes (decoded by
    torchcodec, one block at a time, so an hour of audio is never in memory at once), or an array with its rate.
    """

    def __init__(self, audio, sampling_rate: int | None = None, name: str | None = None):
        self.audio = audio
        if isinstance(audio, (str, os.PathLike)):
            self.name = name or f"audio file {os.fspath(audio)!r}"
            if not os.path.isfile(audio):
                raise FileNotFoundError(f"{self.name}: no such file.")
            if os.path.getsize(audio) == 0:
                raise ValueError(f"{self.name} is empty (0 bytes).")
            self.decoder = self._open(audio)
        elif isinstance(audio, bytes):
            self.name = name or "the audio bytes"
            if not audio:
                raise ValueError(f"{self.name} are empty (0 bytes).")
            self.decoder = self._open(audio)
        else:
            self.name = name or "the audio array"
            self.decoder = None
            array = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
            if sampling_rate is None:
                raise ValueError(f"{self.name}: an array needs its `sampling_rate`.")
            check_waveform(array, sampling_rate, self.name)
            if array.ndim == 1:
                array = array[None]
            elif array.ndim == 2 and array.shape[0] > array.shape[1]:
                array = array.T  # (samples, channels)
            elif array.ndim != 2:
                raise ValueError(f"{self.name} has shape {array.shape}; expected (samples,) or (channels, samples).")
            if array.dtype.kind in "iu":
                info = np.iinfo(array.dtype)
                array = (array.astype(np.float32) - (info.max + info.min + 1) / 2) / ((info.max - info.min + 1) / 2)
            array = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
            if sampling_rate != SAMPLING_RATE:
                array = torchaudio.functional.resample(array, sampling_rate, SAMPLING_RATE)
            self.array = array.numpy()

    def _open(self, source):
        from torchcodec.decoders import AudioDecoder

        try:
            decoder = AudioDecoder(source, sample_rate=SAMPLING_RATE)
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"Could not decode {self.name}: {_decoder_reason(error)}") from error
        return decoder

    @property
    def num_channels(self) -> int:
        if self.decoder is None:
            return self.array.shape[0]
        return self.decoder.metadata.num_channels

    def blocks(self, seconds: float) -> Iterator[np.ndarray]:
        """Consecutive `(channels, samples)` blocks of `seconds` each (the last one shorter) covering the recording."""
        length = int(seconds * SAMPLING_RATE)
        if self.decoder is None:
            for start in range(0, self.array.shape[1], length):
                yield self.array[:, start : start + length]
            return
        start = 0.0
        while True:
            block = self._decode(start, start + seconds)
            if block.shape[1]:
                yield block
            if block.shape[1] < length:
                return
            start += seconds

    def read(self, start: float, end: float) -> np.ndarray:
        """`(channels, samples)` from `start` to `end` seconds."""
        if self.decoder is None:
            return self.array[:, round(start * SAMPLING_RATE) : round(end * SAMPLING_RATE)]
        return self._decode(start, end)

    def _decode(self, start: float, end: float) -> np.ndarray:
        try:
            samples = self.decoder.get_samples_played_in_range(start, end)
        except (RuntimeError, ValueError) as error:
            reason = _decoder_reason(error)
            if "No audio frames were decoded" in reason or "beyond" in reason or "after" in reason:
                return np.zeros((self.num_channels, 0), dtype=np.float32)
            raise ValueError(f"Could not decode {self.name} at {start:.1f}-{end:.1f} s: {reason}") from error
        return samples.data.numpy()


def _decoder_reason(error: Exception) -> str:
    message = str(error)
    return message.split(".cpp:", 1)[-1].split(", ", 1)[-1].strip() if ".cpp:" in message else message.strip()


# ---------------------------------------------------------------------------------------------------------------------
# Voice activity
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class VADOptions:
    """
    Segmentation settings.

    Args:
        threshold (`float`, defaults to 0.5): speech probability above which a frame is speech (Silero's default).
        min_speech_seconds (`float`, defaults to 0.25): shorter speech regions are dropped.
        min_silence_seconds (`float`, defaults to 0.3): pauses shorter than this stay inside a segment, so that
            commas and breaths do not split an utterance (0.3 s kept the most boundaries within 0.3 s in
            `benchmarks/timeline.py`'s comparison; 0.5 s merged utterances through noise bursts).
        speech_pad_seconds (`float`, defaults to 0.05): padding added around every segment.
        max_segment_seconds (`float`, defaults to 30): longer speech is cut at its longest pause (CMT classifies
            utterances; the pipeline refuses audio over 60 s).
        block_seconds (`float`, defaults to 60): audio decoded at a time.
        crosstalk_db (`float`, defaults to 10): with separate channels, a frame of one channel that is this much
            quieter than another channel's is the other speaker leaking in (echo, cross-talk), not speech.
    """

    threshold: float = 0.5
    min_speech_seconds: float = 0.25
    min_silence_seconds: float = 0.3
    speech_pad_seconds: float = 0.05
    max_segment_seconds: float = 30.0
    block_seconds: float = 60.0
    crosstalk_db: float = 10.0

    def __post_init__(self):
        if not 0 < self.threshold < 1:
            raise ValueError(f"The VAD threshold must be in (0, 1), got {self.threshold}.")
        for name in ("min_speech_seconds", "min_silence_seconds", "speech_pad_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        if self.max_segment_seconds <= 1:
            raise ValueError(f"`max_segment_seconds` must be > 1, got {self.max_segment_seconds}.")
        if self.block_seconds * SAMPLING_RATE < VAD_FRAME:
            raise ValueError(f"`block_seconds` must hold one VAD frame (32 ms), got {self.block_seconds}.")


class StreamingVAD:
    """Silero VAD's speech probability of every 32 ms frame, fed block by block. It runs Silero's batched ("sequence")
    ONNX model, which gives the streaming model's probabilities (to 1e-6) in one ONNX Runtime call per 512 frames
    instead of one Python call per frame; its recurrent state and each frame's context carry over between blocks."""

    def __init__(self):
        threads = torch.get_num_threads()
        silero_vad = _require("silero_vad", "Voice-activity detection")
        torch.set_num_threads(threads)  # importing silero_vad sets torch's thread count to 1 for the whole process
        self.session = silero_vad.load_silero_vad(sequence=True).session
        self.hidden = np.zeros(VAD_STATE_SHAPE, dtype=np.float32)
        self.cell = np.zeros(VAD_STATE_SHAPE, dtype=np.float32)
        self.context = np.zeros(VAD_CONTEXT, dtype=np.float32)
        self.remainder = np.zeros(0, dtype=np.float32)
        self.probabilities: list[np.ndarray] = []
        self.power_db: list[np.ndarray] = []
        self.num_samples = 0

    def feed(self, samples: np.ndarray):
        """Adds mono 16 kHz samples; whole frames are scored now, the rest waits for the next block."""
        self.num_samples += len(samples)
        buffer = np.concatenate([self.remainder, samples.astype(np.float32, copy=False)])
        num_frames = len(buffer) // VAD_FRAME
        self.remainder = buffer[num_frames * VAD_FRAME :]
        frames = buffer[: num_frames * VAD_FRAME].reshape(num_frames, VAD_FRAME)
        for first in range(0, num_frames, VAD_FRAMES_PER_CALL):
            block = frames[first : first + VAD_FRAMES_PER_CALL]  # (frames, 512)
            contexts = np.concatenate([self.context[None], block[:-1, -VAD_CONTEXT:]])  # (frames, 64)
            self.context = block[-1, -VAD_CONTEXT:].copy()
            values, self.hidden, self.cell = self.session.run(
                ["speech_probs", "hn", "cn"],
                {"input": np.concatenate([contexts, block], axis=1), "h": self.hidden, "c": self.cell},
            )
            self.probabilities.append(np.asarray(values, dtype=np.float32).reshape(-1))
            self.power_db.append(10 * np.log10(np.mean(block**2, axis=1) + 1e-10))

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Scores the last, zero-padded frame; returns the speech probability and the power (dB) of every frame."""
        if len(self.remainder):
            tail = np.zeros(VAD_FRAME, dtype=np.float32)
            tail[: len(self.remainder)] = self.remainder
            counted = self.num_samples
            self.remainder = np.zeros(0, dtype=np.float32)
            self.feed(tail)
            self.num_samples = counted
        if not self.probabilities:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32)
        return np.concatenate(self.probabilities), np.concatenate(self.power_db)


def speech_regions(probabilities: np.ndarray, num_samples: int, options: VADOptions) -> list[tuple[float, float]]:
    """Frame probabilities to `(start, end)` seconds of speech, with Silero's own hysteresis and cutting rules."""
    from silero_vad import get_speech_timestamps_from_probs

    regions = get_speech_timestamps_from_probs(
        probabilities.tolist(),
        sampling_rate=SAMPLING_RATE,
        threshold=options.threshold,
        min_speech_duration_ms=int(1000 * options.min_speech_seconds),
        max_speech_duration_s=options.max_segment_seconds,
        min_silence_duration_ms=int(1000 * options.min_silence_seconds),
        speech_pad_ms=int(1000 * options.speech_pad_seconds),
        audio_length_samples=num_samples,
    )
    return [(region["start"] / SAMPLING_RATE, region["end"] / SAMPLING_RATE) for region in regions]


def detect_speech(
    recording: Recording, options: VADOptions | None = None, channels: str = "mix"
) -> tuple[list[list[tuple[float, float]]], float]:
    """
    Speech regions of `recording`, one list per channel (`channels="separate"`) or one for the downmix (`"mix"`),
    and the recording's duration in seconds. Reads the recording once, block by block.
    """
    options = options or VADOptions()
    detectors = None
    for block in recording.blocks(options.block_seconds):
        lanes = block if channels == "separate" else block.mean(axis=0, keepdims=True)
        if detectors is None:
            detectors = [StreamingVAD() for _ in lanes]
        for detector, lane in zip(detectors, lanes):
            detector.feed(lane)
    if detectors is None:
        raise ValueError(f"{recording.name} holds no audio frames.")
    num_samples = detectors[0].num_samples
    probabilities, power_db = zip(*(detector.finish() for detector in detectors))
    if len(detectors) > 1:
        # A frame much quieter than another channel's nearby loudest is that speaker leaking into this channel
        # (echo, cross-talk): Silero hears speech at any level, so the leak alone would make segments.
        window = np.lib.stride_tricks.sliding_window_view
        nearby = [window(np.pad(p, CROSSTALK_FRAMES, mode="edge"), 2 * CROSSTALK_FRAMES + 1).max(-1) for p in power_db]
        probabilities = [
            np.where(power < np.max([n for other, n in enumerate(nearby) if other != lane], axis=0)
                     - options.crosstalk_db, 0.0, p)
            for lane, (p, power) in enumerate(zip(probabilities, power_db))
        ]  # fmt: skip
    regions = [speech_regions(lane, num_samples, options) for lane in probabilities]
    return regions, num_samples / SAMPLING_RATE


# ---------------------------------------------------------------------------------------------------------------------
# Transcripts with timestamps
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Cue:
    """One timed line of a transcript."""

    start: float
    end: float
    text: str
    speaker: str | None = None


def _cue_seconds(timestamp) -> float:
    hours, minutes, seconds, milliseconds = timestamp.to_tuple()
    return 3600 * hours + 60 * minutes + seconds + milliseconds / 1000


def read_transcript(path: str | Path) -> list[Cue]:
    """
    The cues of an SRT, WebVTT (voice tags `<v Name>` become the speaker) or JSON transcript. JSON may be a list of
    `{"start", "end", "text"[, "speaker"]}`, an object with such `"segments"` (Whisper's output), or an object with
    `"chunks"` of `{"timestamp": [start, end], "text"}` (a transformers ASR pipeline with `return_timestamps=True`).
    """
    path = Path(path)
    name = f"transcript {os.fspath(path)!r}"
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file.")
    suffix = path.suffix.lower()
    if suffix not in TRANSCRIPT_FORMATS:
        raise ValueError(f"{name}: expected {', '.join(TRANSCRIPT_FORMATS)}, got {suffix or 'no extension'}.")
    try:
        if suffix == ".json":
            cues = _json_cues(json.loads(path.read_text(encoding="utf-8")))
        else:
            webvtt = _require("webvtt", "Reading SRT / WebVTT transcripts")
            captions = webvtt.from_srt(str(path)) if suffix == ".srt" else webvtt.read(str(path))
            cues = [
                Cue(_cue_seconds(c.start_time), _cue_seconds(c.end_time), " ".join(c.text.split()), c.voice)
                for c in captions
            ]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise ValueError(f"Could not read {name}: {type(error).__name__}: {error}") from error
    except Exception as error:  # webvtt's own parse errors
        if type(error).__module__.startswith("webvtt"):
            raise ValueError(f"Could not read {name}: {error}") from error
        raise
    for number, cue in enumerate(cues, start=1):
        if not (np.isfinite(cue.start) and np.isfinite(cue.end)) or cue.start < 0 or cue.end < cue.start:
            raise ValueError(f"{name}, cue {number}: invalid times {cue.start} --> {cue.end}.")
    if not cues:
        raise ValueError(f"{name} holds no cues.")
    return cues


def _json_cues(data) -> list[Cue]:
    if isinstance(data, dict) and "chunks" in data:
        return [Cue(float(c["timestamp"][0]), float(c["timestamp"][1]), c["text"].strip()) for c in data["chunks"]]
    if isinstance(data, dict) and "segments" in data:
        data = data["segments"]
    if not isinstance(data, list):
        raise ValueError("expected a list of {start, end, text}, or an object with `segments` or `chunks`")
    return [Cue(float(c["start"]), float(c["end"]), str(c["text"]).strip(), c.get("speaker")) for c in data]


def assign_cues(
    cues: list[Cue], segments: list["TimelineSegment"], duration: float, name: str = "the transcript"
) -> tuple[list[str | None], list[str]]:
    """
    The text of every segment (None where no cue overlaps it) and warnings. Every cue goes to the segment it
    overlaps most (of the same speaker, when cues and segments both name one); cues after the end of the audio are
    left out with a warning, and a transcript none of whose cues overlap the audio is refused.
    """
    warnings = []
    past_end = [cue for cue in cues if cue.start >= duration]
    if len(past_end) == len(cues):
        raise ValueError(
            f"{name} does not fit the audio: all its {len(cues)} cues start after the recording ends "
            f"({duration:.1f} s; the first starts at {cues[0].start:.1f} s). Is it the transcript of this recording?"
        )
    if past_end:
        warnings.append(
            f"{name}: {len(past_end)} of {len(cues)} cues start after the audio ends ({duration:.1f} s), from "
            f"{past_end[0].start:.1f} s on; they were left out."
        )
    texts: list[list[str]] = [[] for _ in segments]
    unplaced = 0
    for cue in cues:
        if cue.start >= duration:
            continue
        overlaps = [
            min(cue.end, segment.end) - max(cue.start, segment.start)
            if cue.speaker is None or segment.channel is None or cue.speaker.lower() == segment.channel.lower()
            else 0.0
            for segment in segments
        ]
        best = int(np.argmax(overlaps)) if overlaps else -1
        if best < 0 or overlaps[best] <= 0:
            unplaced += 1
            continue
        texts[best].append(cue.text)
    if unplaced:
        warnings.append(f"{name}: {unplaced} cue(s) overlap no speech segment and were not used.")
    return [" ".join(parts) if parts else None for parts in texts], warnings


# ---------------------------------------------------------------------------------------------------------------------
# The timeline
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class TimelineSegment:
    """One utterance of the recording: where it is, what was said (and where the text came from), what CMT says."""

    start: float
    end: float
    channel: str | None = None
    transcript: str | None = None
    text_source: str = "none"  # "transcript", "asr" or "none" (classified from the audio alone)
    label: str | None = None
    score: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class Timeline:
    """The segments of one recording with their predictions; `summary()` gives the share of time per label."""

    source: str
    duration: float
    labels: list[str]
    segments: list[TimelineSegment]
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Duration, speech time, segment counts and, per label (and per channel), its share of classified speech
        time."""
        classified = [segment for segment in self.segments if segment.error is None and segment.label is not None]

        def shares(segments):
            total = sum(segment.seconds for segment in segments)
            return {
                label: (sum(s.seconds for s in segments if s.label == label) / total if total else 0.0)
                for label in self.labels
            }

        summary = {
            "source": self.source,
            "duration_seconds": round(self.duration, 3),
            "speech_seconds": round(sum(segment.seconds for segment in self.segments), 3),
            "segments": len(self.segments),
            "failed_segments": sum(segment.error is not None for segment in self.segments),
            "share_of_speech_time": shares(classified),
            "warnings": self.warnings,
        }
        channels = sorted({segment.channel for segment in self.segments if segment.channel is not None})
        if channels:
            summary["by_channel"] = {
                channel: shares([s for s in classified if s.channel == channel]) for channel in channels
            }
        if not self.segments:
            summary["message"] = no_speech_message(self.source, self.duration)
        return summary

    def records(self) -> list[dict[str, Any]]:
        """One flat dict per segment (the CSV / JSONL rows), or one row saying that no speech was found."""
        columns = output_columns(self.labels)
        if not self.segments:
            row = dict.fromkeys(columns)
            row.update(recording=self.source, error=no_speech_message(self.source, self.duration))
            return [row]
        rows = []
        for number, segment in enumerate(self.segments, start=1):
            row = dict.fromkeys(columns)
            row.update(
                recording=self.source,
                segment=number,
                channel=segment.channel,
                start=round(segment.start, 3),
                end=round(segment.end, 3),
                transcript=segment.transcript,
                text_source=segment.text_source,
                label=segment.label,
                score=segment.score,
                error=segment.error,
            )
            row.update({f"score_{label}": value for label, value in segment.scores.items()})
            rows.append(row)
        return rows

    def plot(self, path: str | Path) -> Path:
        """A PNG: segments coloured by label over time (one lane per channel) above one score strip per label."""
        return plot_timeline(self, path)


def no_speech_message(source: str, duration: float) -> str:
    return f"no speech found in {source} ({duration:.1f} s of audio): nothing to classify."


def output_columns(labels: list[str]) -> list[str]:
    return [
        "recording", "segment", "channel", "start", "end", "transcript", "text_source", "label", "score",
        *[f"score_{label}" for label in labels], "error",
    ]  # fmt: skip


def _labels(classifier) -> list[str]:
    config = classifier.model.config
    return [config.id2label[index] for index in range(config.num_labels)]


class EmotionTimeline:
    """
    Emotion timelines of long recordings with a CMT classification pipeline.

    Args:
        classifier: an `audio-text-classification` pipeline (or a checkpoint path / Hub id, loaded with `pipeline`).
        asr_model (*optional*): an `automatic-speech-recognition` pipeline or a model id / path; transcribes
            segments that no supplied transcript covers.
        allow_audio_only (`bool`, defaults to `False`): classify segments without any text from the audio alone
            (an empty transcript) instead of failing them.
        vad (`VADOptions`, *optional*): segmentation settings.
        batch_size (`int`, defaults to 8): segments per forward pass.

    Example:

    ```python
    >>> from modeling_cmt.timeline import EmotionTimeline

    >>> timeline = EmotionTimeline("path/to/cmt-checkpoint", asr_model="openai/whisper-small")
    >>> result = timeline("call.wav", channels="separate")
    >>> result.summary()["share_of_speech_time"]
    {'ang': 0.12, 'hap': 0.31, 'neu': 0.48, 'sad': 0.09}
    >>> result.plot("call.png")
    ```
    """

    def __init__(
        self,
        classifier,
        asr_model=None,
        allow_audio_only: bool = False,
        vad: VADOptions | None = None,
        batch_size: int = 8,
        device: str | None = None,
    ):
        from transformers import pipeline

        from .pipeline_cmt import TASK

        if isinstance(classifier, (str, os.PathLike)):
            classifier = pipeline(TASK, model=os.fspath(classifier), device=device)
        self.classifier = classifier
        if isinstance(asr_model, (str, os.PathLike)):
            asr_model = pipeline("automatic-speech-recognition", model=os.fspath(asr_model), device=device)
        self.asr = asr_model
        self.allow_audio_only = allow_audio_only
        self.vad = vad or VADOptions()
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
        self.batch_size = batch_size
        self.labels = _labels(classifier)

    def __call__(
        self,
        audio,
        transcript: str | Path | list[Cue] | None = None,
        sampling_rate: int | None = None,
        channels: str = "mix",
        channel_names: tuple[str, ...] | None = None,
        name: str | None = None,
    ) -> Timeline:
        """
        The timeline of one recording.

        Args:
            audio: a file path (any format FFmpeg decodes), its bytes, or a waveform (`(samples,)` or
                `(channels, samples)`) with `sampling_rate`.
            transcript (*optional*): an SRT / WebVTT / JSON transcript file, or a list of `Cue`.
            channels (`str`, defaults to `"mix"`): `"mix"` downmixes; `"separate"` treats every channel as a speaker.
            channel_names (*optional*): speaker names of the channels (default `agent`, `customer` for stereo,
                `channel 1`, ... otherwise).
            name (*optional*): how the recording is named in rows and messages (default: the file path).
        """
        if channels not in CHANNEL_MODES:
            raise ValueError(f"`channels` must be one of {list(CHANNEL_MODES)}, got {channels!r}.")
        if transcript is None and self.asr is None and not self.allow_audio_only:
            raise ValueError(
                "Segments need text: pass `transcript=` (SRT / WebVTT / JSON with timestamps), `asr_model=` to "
                "transcribe them, or `allow_audio_only=True` to classify them from the audio alone."
            )
        recording = Recording(audio, sampling_rate, name=None)
        source = name or (os.fspath(audio) if isinstance(audio, (str, os.PathLike)) else recording.name)
        cues = transcript if isinstance(transcript, list) or transcript is None else read_transcript(transcript)

        # --- segments ------------------------------------------------------------------------------------------------
        regions, duration = detect_speech(recording, self.vad, channels)
        names = self._channel_names(channels, len(regions), channel_names)
        segments = sorted(
            (
                TimelineSegment(start, end, channel=names[lane])
                for lane, lane_regions in enumerate(regions)
                for start, end in lane_regions
            ),
            key=lambda segment: (segment.start, segment.channel or ""),
        )
        lanes = {names[lane]: lane for lane in range(len(regions))}
        timeline = Timeline(source, duration, self.labels, segments)
        if not segments:
            return timeline

        # --- texts ---------------------------------------------------------------------------------------------------
        if cues is not None:
            described = "the transcript" if isinstance(transcript, list) else f"transcript {os.fspath(transcript)!r}"
            texts, warnings = assign_cues(cues, segments, duration, described)
            timeline.warnings += warnings
            for segment, text in zip(segments, texts):
                if text is not None:
                    segment.transcript, segment.text_source = text, "transcript"

        # --- classify, batch by batch --------------------------------------------------------------------------------
        for first in range(0, len(segments), self.batch_size):
            batch = segments[first : first + self.batch_size]
            waveforms = [self._segment_audio(recording, segment, lanes, channels) for segment in batch]
            for segment, waveform in zip(batch, waveforms):
                if segment.transcript is None and waveform is not None:
                    self._transcribe(segment, waveform)
            self._classify([s for s, w in zip(batch, waveforms) if w is not None and s.error is None],
                           [w for s, w in zip(batch, waveforms) if w is not None and s.error is None])  # fmt: skip
        return timeline

    @staticmethod
    def _channel_names(channels: str, count: int, names: tuple[str, ...] | None) -> list[str | None]:
        if channels == "mix":
            return [None]
        if names is None:
            names = DEFAULT_CHANNEL_NAMES if count == 2 else tuple(f"channel {lane + 1}" for lane in range(count))
        if len(names) != count:
            raise ValueError(f"Got {len(names)} channel names for {count} channels: {list(names)}.")
        return list(names)

    @staticmethod
    def _segment_audio(recording: Recording, segment: TimelineSegment, lanes: dict, channels: str):
        try:
            block = recording.read(segment.start, segment.end)
            waveform = block[lanes[segment.channel]] if channels == "separate" else block.mean(axis=0)
            check_waveform(waveform, SAMPLING_RATE, f"segment {segment.start:.2f}-{segment.end:.2f} s")
        except ValueError as error:
            segment.error = str(error)
            return None
        return waveform

    def _transcribe(self, segment: TimelineSegment, waveform: np.ndarray):
        if self.asr is not None:
            try:
                text = self.asr({"raw": waveform, "sampling_rate": SAMPLING_RATE})["text"].strip()
            except Exception as error:  # an ASR failure is this segment's error, not the recording's
                segment.error = f"ASR failed: {type(error).__name__}: {error}"
                return
            segment.transcript, segment.text_source = text, "asr"
        elif self.allow_audio_only:
            segment.transcript, segment.text_source = "", "none"
        else:
            segment.error = (
                "no transcript: no cue of the transcript overlaps this segment (pass asr_model= or "
                "allow_audio_only=True to classify such segments)"
            )

    def _classify(self, segments: list[TimelineSegment], waveforms: list[np.ndarray]):
        if not segments:
            return
        items = [{"array": waveform, "sampling_rate": SAMPLING_RATE} for waveform in waveforms]
        texts = [segment.transcript for segment in segments]
        try:
            predictions = self.classifier(items, text=texts, batch_size=self.batch_size, allow_audio_only=True)
        except Exception:  # find the failing segments one by one; the others keep their predictions
            predictions = []
            for item, text in zip(items, texts):
                try:
                    predictions.append(self.classifier(item, text=text, allow_audio_only=True))
                except Exception as error:
                    predictions.append(error)
        for segment, prediction in zip(segments, predictions):
            if isinstance(prediction, Exception):
                segment.error = f"{type(prediction).__name__}: {prediction}"
            elif isinstance(prediction, dict):  # a regression head
                segment.score = prediction["score"]
                segment.label = prediction.get("polarity")
            else:
                segment.label, segment.score = prediction[0]["label"], prediction[0]["score"]
                segment.scores = {entry["label"]: entry["score"] for entry in prediction}


# ---------------------------------------------------------------------------------------------------------------------
# Plot
# ---------------------------------------------------------------------------------------------------------------------


def plot_timeline(timeline: Timeline, path: str | Path) -> Path:
    """Segments coloured by label (one lane per channel) over one score strip per label (bar height = score; the
    winning label's bar is solid), with the summary above."""
    plt = _require("matplotlib.pyplot", "Plotting a timeline")
    colors = dict(zip(timeline.labels, plt.get_cmap("tab10").colors))
    lanes = sorted({segment.channel or "" for segment in timeline.segments}) or [""]
    figure, axes = plt.subplots(
        2, 1, figsize=(12, 2.2 + 0.45 * (len(lanes) + len(timeline.labels))), sharex=True,
        gridspec_kw={"height_ratios": [len(lanes) + 0.6, len(timeline.labels)]},
    )  # fmt: skip
    lane_axis, strip_axis = axes
    for segment in timeline.segments:
        lane = lanes.index(segment.channel or "")
        color = colors.get(segment.label, "lightgrey")
        lane_axis.broken_barh([(segment.start, segment.seconds)], (lane + 0.1, 0.8), color=color,
                              hatch="//" if segment.error else None, edgecolor="white")  # fmt: skip
    lane_axis.set_yticks([lane + 0.5 for lane in range(len(lanes))], [lane or "speech" for lane in lanes])
    lane_axis.set_ylim(0, len(lanes))
    handles = [plt.Rectangle((0, 0), 1, 1, color=color) for color in colors.values()]
    lane_axis.legend(handles, list(colors), ncol=len(colors), loc="lower right", bbox_to_anchor=(1, 1), frameon=False)
    summary = timeline.summary()
    shares = ", ".join(f"{label} {100 * share:.0f} %" for label, share in summary["share_of_speech_time"].items())
    lane_axis.set_title(
        f"{Path(timeline.source).name}: {summary['segments']} segments, "
        f"{summary['speech_seconds']:.0f} s of speech in {summary['duration_seconds']:.0f} s"
        + (f"\nshare of speech time: {shares}" if timeline.segments else "\nno speech found"),
        loc="left", fontsize=10,
    )  # fmt: skip
    for row, label in enumerate(timeline.labels):  # one strip per label: its score over time, 0 to 1 of the strip
        base = len(timeline.labels) - 1 - row
        strip_axis.axhline(base, color="lightgrey", linewidth=0.5)
        for segment in timeline.segments:
            score = segment.scores.get(label, 0.0)
            strip_axis.fill_between([segment.start, segment.end], base, base + 0.9 * score, color=colors[label],
                                    alpha=0.35 + 0.65 * (segment.label == label), linewidth=0)  # fmt: skip
    strip_axis.set_yticks(
        [len(timeline.labels) - 1 - row + 0.45 for row in range(len(timeline.labels))],
        [f"score {label}" for label in timeline.labels],
    )
    strip_axis.set_ylim(0, len(timeline.labels))
    strip_axis.set_xlabel("time (s)")
    strip_axis.set_xlim(0, max(timeline.duration, 1e-3))
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Command line: cmt-timeline
# ---------------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cmt-timeline",
        description="Emotion timelines of long recordings: VAD segments, a transcript per segment, CMT per segment.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", help="Checkpoint folder or Hub id of a CMT classification model.")
    parser.add_argument("recordings", nargs="+", help="Audio files (any format FFmpeg decodes).")
    parser.add_argument("--output", "-o", required=True, help="Segments as .csv or .jsonl (one row per segment).")
    parser.add_argument(
        "--transcript",
        help="SRT / WebVTT / JSON transcript with timestamps (one recording). Without it, <recording>.srt / .vtt / "
        ".json beside each recording is used when it exists.",
    )
    parser.add_argument("--asr_model", help="ASR model id or path that transcribes segments without a transcript.")
    parser.add_argument("--allow_audio_only", action="store_true", help="Classify segments without text from audio.")
    parser.add_argument("--channels", choices=CHANNEL_MODES, default="mix", help="Downmix, or one speaker a channel.")
    parser.add_argument(
        "--channel_names", help="Comma-separated speaker names of the channels (default agent,customer)."
    )
    parser.add_argument("--plot", help="Timeline PNG (a folder when several recordings are given).")
    parser.add_argument("--summary", help="Write the recordings' summaries (share of time per label) as JSON here.")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    for option, value in asdict(VADOptions()).items():
        parser.add_argument(f"--{option}" if option != "threshold" else "--vad_threshold", type=float, default=value,
                            dest=option)  # fmt: skip
    args = parser.parse_args(argv)
    if Path(args.output).suffix.lower() not in OUTPUT_FORMATS:
        parser.error(f"--output must end in {' or '.join(OUTPUT_FORMATS)}, got {args.output!r}.")
    if args.transcript and len(args.recordings) > 1:
        parser.error("--transcript goes with one recording; for several, put <name>.srt / .vtt / .json beside each.")
    return args


def sidecar_transcript(recording: str) -> Path | None:
    for suffix in TRANSCRIPT_FORMATS:
        candidate = Path(recording).with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def write_rows(path: Path, rows: list[dict], columns: list[str]):
    if path.suffix.lower() == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=columns)
            writer.writeheader()
            writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)
    else:
        with open(path, "w", encoding="utf-8") as file:
            file.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main(argv: list[str] | None = None) -> int:
    from .predict import resolve_device

    args = parse_args(argv)
    vad = VADOptions(**{option: getattr(args, option) for option in asdict(VADOptions())})
    timeline = EmotionTimeline(
        args.model,
        asr_model=args.asr_model,
        allow_audio_only=args.allow_audio_only,
        vad=vad,
        batch_size=args.batch_size,
        device=resolve_device(args.device),
    )
    channel_names = tuple(args.channel_names.split(",")) if args.channel_names else None
    output = Path(args.output)
    columns = output_columns(timeline.labels)
    rows, summaries, failed = [], [], []
    for recording in args.recordings:
        transcript = args.transcript or sidecar_transcript(recording)
        try:
            result = timeline(recording, transcript=transcript, channels=args.channels, channel_names=channel_names)
        except (OSError, ValueError) as error:  # this recording fails; the others (and earlier rows) are kept
            failed.append(recording)
            row = dict.fromkeys(columns)
            row.update(recording=recording, error=str(error))
            rows.append(row)
            print(f"cmt-timeline: {recording}: {error}", file=sys.stderr)
            continue
        rows += result.records()
        summary = result.summary()
        summaries.append(summary)
        for warning in result.warnings:
            print(f"cmt-timeline: warning: {warning}", file=sys.stderr)
        if not result.segments:
            print(f"cmt-timeline: {summary['message']}")
        else:
            shares = ", ".join(f"{k} {100 * v:.0f} %" for k, v in summary["share_of_speech_time"].items())
            print(f"cmt-timeline: {recording}: {summary['segments']} segments ({summary['failed_segments']} failed), "
                  f"{summary['speech_seconds']:.1f} s of speech in {summary['duration_seconds']:.1f} s; {shares}")  # fmt: skip
        if args.plot:
            plot = Path(args.plot) / f"{Path(recording).stem}.png" if len(args.recordings) > 1 else Path(args.plot)
            result.plot(plot)
        write_rows(output, rows, columns)  # after every recording, so an interrupted run keeps what was done
    write_rows(output, rows, columns)
    if args.summary:
        Path(args.summary).write_text(json.dumps(summaries, indent=1), encoding="utf-8")
    print(f"cmt-timeline: {len(rows)} rows in {output}" + (f"; {len(failed)} recording(s) failed" if failed else ""))
    segment_errors = any(row["error"] and row["segment"] is not None for row in rows)
    return 1 if failed or segment_errors else 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "Cue",
    "EmotionTimeline",
    "Recording",
    "StreamingVAD",
    "Timeline",
    "TimelineSegment",
    "VADOptions",
    "assign_cues",
    "detect_speech",
    "plot_timeline",
    "read_transcript",
]
