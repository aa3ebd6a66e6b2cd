"""Long recordings with known segments, for the emotion-timeline tests and benchmark: utterances of the synthetic
corpus (its generator's text, voice, prosody and emotion) spoken by espeak-ng, joined by pauses that hold background
noise and non-speech noise bursts, with every utterance's true start, end, transcript and emotion.

Each utterance is rendered clean and trimmed to its first and last audible sample, so its boundaries are exact; the
noise is added afterwards over the whole recording. A stereo call puts two speakers on two channels (agent on the
left, customer on the right), taking turns, with a little cross-talk from each into the other.
"""

import shutil
import subprocess
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio

from hub_datasets.synthetic_emotion import sample_items


SAMPLING_RATE = 16000
ESPEAK_RATE = 22050
# Samples quieter than this (in [-1, 1]) at an utterance's edges are espeak-ng's own lead-in and tail silence.
AUDIBLE = 1e-3
NOISE_DB = -50.0  # background noise (dBFS of its RMS): about 25-35 dB below the speech
BURST_DB = -30.0  # peak RMS of the non-speech noise bursts
CROSS_TALK = 10 ** (-30 / 20)
CHANNEL_NAMES = ("agent", "customer")


@dataclass
class TrueSegment:
    start: float
    end: float
    text: str
    label: str
    speaker: str
    channel: int = 0


def render_utterance(item: dict) -> np.ndarray:
    """One item of `sample_items` spoken by espeak-ng with its voice and prosody, at 16 kHz, trimmed to audible."""
    if shutil.which("espeak-ng") is None:
        raise FileNotFoundError("Long test recordings are rendered with espeak-ng: `apt-get install espeak-ng`.")
    command = [
        "espeak-ng", "-m", "-v", item["speaker"],
        "-p", str(item["pitch"]), "-s", str(item["rate"]), "-a", str(item["amplitude"]),
        "--stdout", f"<speak>{item['ssml']}</speak>",
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, check=True).stdout
    data = output[output.find(b"data") + 8 :]  # a streaming WAV header (unknown length) precedes the samples
    samples = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.float32) / 32768
    waveform = torchaudio.functional.resample(torch.from_numpy(samples), ESPEAK_RATE, SAMPLING_RATE).numpy()
    audible = np.flatnonzero(np.abs(waveform) > AUDIBLE)
    return waveform[audible[0] : audible[-1] + 1]


def _noise_burst(rng: np.random.Generator, seconds: float, level_db: float) -> np.ndarray:
    """Non-speech noise: a short burst of white noise with a fade, as a rustle or a keyboard."""
    length = int(seconds * SAMPLING_RATE)
    noise = rng.standard_normal(length).astype(np.float32)
    return 10 ** (level_db / 20) * noise * np.hanning(length).astype(np.float32)


def build_recording(
    num_utterances: int = 12,
    seed: int = 0,
    pause_seconds: tuple[float, float] = (0.8, 2.0),
    channels: int = 1,
    burst_probability: float = 0.4,
    repeat_to_seconds: float | None = None,
    noise_db: float = NOISE_DB,
    burst_db: float = BURST_DB,
) -> tuple[np.ndarray, list[TrueSegment]]:
    """
    A recording of `num_utterances` synthetic-corpus utterances (seed `seed`) joined by pauses, with background
    noise at `noise_db` dBFS throughout and, in some pauses, a noise burst peaking at `burst_db`. Returns the waveform (`(samples,)`, or `(2, samples)` for `channels=2`) at 16 kHz
    and its true segments. With `repeat_to_seconds`, the rendered utterances are reused in turn until the recording
    is that long (for memory benchmarks on hour-long audio without rendering thousands of utterances).
    """
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}.")
    rng = np.random.default_rng(seed)
    items = sample_items("emotion", max(num_utterances, 10), seed, 0.3)[:num_utterances]
    rendered = [render_utterance(item) for item in items]
    pieces: list[list[np.ndarray]] = [[] for _ in range(channels)]
    segments = []
    position = 0
    index = 0
    while True:
        if index >= len(items) and (repeat_to_seconds is None or position / SAMPLING_RATE >= repeat_to_seconds):
            break
        pause = np.zeros(int(rng.uniform(*pause_seconds) * SAMPLING_RATE), dtype=np.float32)
        if rng.random() < burst_probability:
            burst = _noise_burst(rng, min(0.4, len(pause) / SAMPLING_RATE / 2), burst_db)
            offset = (len(pause) - len(burst)) // 2
            pause[offset : offset + len(burst)] += burst
        item, speech = items[index % len(items)], rendered[index % len(items)]
        channel = index % channels
        start = position + len(pause)
        for target in range(channels):
            pieces[target].append(pause)
            pieces[target].append(speech if target == channel else CROSS_TALK * speech)
        segments.append(
            TrueSegment(
                start / SAMPLING_RATE,
                (start + len(speech)) / SAMPLING_RATE,
                item["text"],
                item["label"],
                CHANNEL_NAMES[channel] if channels == 2 else item["speaker"],
                channel,
            )
        )
        position = start + len(speech)
        index += 1
    tail = np.zeros(int(pause_seconds[1] * SAMPLING_RATE), dtype=np.float32)
    waveform = np.stack([np.concatenate([*channel_pieces, tail]) for channel_pieces in pieces])
    waveform += 10 ** (noise_db / 20) * rng.standard_normal(waveform.shape).astype(np.float32)
    return (waveform[0] if channels == 1 else waveform), segments


def write_wav(path: str | Path, waveform: np.ndarray, rate: int = SAMPLING_RATE) -> Path:
    """16-bit PCM WAV of a `(samples,)` or `(channels, samples)` float waveform in [-1, 1]."""
    samples = np.clip(np.round(np.atleast_2d(waveform) * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as file:
        file.setnchannels(samples.shape[0])
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(samples.T.tobytes())
    return Path(path)


def _srt_time(seconds: float) -> str:
    milliseconds = round(seconds * 1000)
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d},{rest % 1000:03d}"


def write_srt(path: str | Path, segments: list[TrueSegment]) -> Path:
    """The true segments as an SRT transcript."""
    blocks = [
        f"{number}\n{_srt_time(segment.start)} --> {_srt_time(segment.end)}\n{segment.text}\n"
        for number, segment in enumerate(segments, start=1)
    ]
    Path(path).write_text("\n".join(blocks), encoding="utf-8")
    return Path(path)


def as_records(segments: list[TrueSegment]) -> list[dict]:
    return [asdict(segment) for segment in segments]
