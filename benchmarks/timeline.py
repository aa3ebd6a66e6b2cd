"""10. Long recordings: how well the voice-activity detector finds the utterances of recordings with known segments
(`benchmarks/recordings.py`), against the detectors one would otherwise use, and the peak memory and speed of a
whole emotion timeline (`modeling_cmt.timeline`) on a 10-minute and a 1-hour recording.

VAD comparison: Silero VAD (what the timeline uses), WebRTC's GMM VAD (`webrtcvad-wheels`, most aggressive mode 3)
and an energy threshold (12 dB over the 10th percentile of frame power), each turned into segments by the same rules
(Silero's hysteresis, 0.3 s minimum pause). Score: the share of true starts and ends within 0.3 s, over three noise
conditions (background noise / noise-burst level in dBFS) and five recordings of 16 utterances each.

Memory: each timeline runs in a fresh process; its peak resident memory over what the process held before the call
(the classifier loaded) is the figure. The recordings are 16 kHz WAV files made by repeating 40 rendered utterances
with pauses; transcripts come from an SRT file of their true segments.
"""

import json
import os
import time
from pathlib import Path

import numpy as np

from .isolation import peak_memory, reset_peak_memory, run_isolated
from .reporting import Result
from .settings import Settings


NAME = "timeline"
TITLE = "Long recordings: VAD boundaries vs WebRTC VAD and an energy threshold; timeline peak memory and speed"
DEMO_MODEL = Path(os.environ.get("CMT_DEMO_MODEL", Path(__file__).resolve().parents[1] / "demo_output" / "best_model"))
CONDITIONS = {
    "quiet (-50 / -30)": (-50.0, -30.0),
    "noisy (-35 / -30)": (-35.0, -30.0),
    "bursts (-40 / -20)": (-40.0, -20.0),
}
TOLERANCE = 0.3
MIB = 1024**2


def boundary_hits(found: list[tuple[float, float]], truth) -> float:
    """Share of true starts and ends within TOLERANCE of the found segment that overlaps the utterance most."""
    hits = 0
    for utterance in truth:
        overlaps = [min(end, utterance.end) - max(start, utterance.start) for start, end in found]
        if not overlaps or max(overlaps) <= 0:
            continue
        start, end = found[int(np.argmax(overlaps))]
        hits += (abs(start - utterance.start) <= TOLERANCE) + (abs(end - utterance.end) <= TOLERANCE)
    return hits / (2 * len(truth))


def _frames(waveform: np.ndarray) -> np.ndarray:
    from modeling_cmt.timeline import VAD_FRAME

    return waveform[: len(waveform) // VAD_FRAME * VAD_FRAME].reshape(-1, VAD_FRAME)


def webrtc_decisions(waveform: np.ndarray, mode: int = 3) -> np.ndarray:
    """WebRTC VAD's 30 ms decisions, read at Silero's 32 ms frames (the decision under each frame's centre)."""
    import webrtcvad

    detector = webrtcvad.Vad(mode)
    pcm = (np.clip(waveform, -1, 1) * 32767).astype("<i2")
    step = 480
    decisions = [detector.is_speech(pcm[i : i + step].tobytes(), 16000) for i in range(0, len(pcm) - step + 1, step)]
    centres = (np.arange(len(_frames(waveform))) * 512 + 256) // step
    return np.asarray(decisions + [False], dtype=np.float32)[np.minimum(centres, len(decisions))]


def energy_decisions(waveform: np.ndarray) -> np.ndarray:
    power = 10 * np.log10(np.mean(_frames(waveform) ** 2, axis=1) + 1e-10)
    return (power > np.percentile(power, 10) + 12).astype(np.float32)


def compare_detectors(settings: Settings) -> dict:
    from modeling_cmt.timeline import StreamingVAD, VADOptions, speech_regions

    from .recordings import build_recording

    options = VADOptions()
    scores = {}
    conditions = dict(list(CONDITIONS.items())[: settings.pick(3, 1)])
    for condition, (noise_db, burst_db) in conditions.items():
        for seed in range(settings.pick(5, 1)):
            waveform, truth = build_recording(settings.pick(16, 4), seed=seed, noise_db=noise_db, burst_db=burst_db)
            detector = StreamingVAD()
            detector.feed(waveform)
            probabilities, _ = detector.finish()
            decisions = {"silero": probabilities, "energy": energy_decisions(waveform)}
            try:
                decisions["webrtc"] = webrtc_decisions(waveform)
            except ImportError:
                pass
            for name, frames in decisions.items():
                found = speech_regions(frames, len(waveform), options)
                scores.setdefault(name, {}).setdefault(condition, []).append(boundary_hits(found, truth))
    return scores


def make_recording(folder: Path, seconds: float) -> tuple[Path, Path, int]:
    """A WAV of `seconds` (repeating 40 rendered utterances) and its SRT; cached by length."""
    from .recordings import build_recording, write_srt, write_wav

    wav, srt = folder / f"recording_{seconds:.0f}s.wav", folder / f"recording_{seconds:.0f}s.srt"
    if not (wav.is_file() and srt.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        waveform, truth = build_recording(40, seed=0, repeat_to_seconds=seconds)
        write_wav(wav, waveform)
        write_srt(srt, truth)
        (folder / f"recording_{seconds:.0f}s.json").write_text(json.dumps({"segments": len(truth)}))
    return wav, srt, json.loads((folder / f"recording_{seconds:.0f}s.json").read_text())["segments"]


def timeline_peak(model: str | None, wav: str, srt: str, settings: Settings) -> dict:
    """In a fresh process: load the classifier, then run one timeline; the peak memory that the call added."""
    import torch
    from transformers import pipeline

    import modeling_cmt  # noqa: F401 - registers the task
    from modeling_cmt.timeline import EmotionTimeline

    torch.set_num_threads(settings.threads or torch.get_num_threads())
    if model is None:
        from .export import _model

        classifier_model, processor, _, _ = _model(settings)
        classifier = pipeline("audio-text-classification", model=classifier_model, processor=processor)
    else:
        classifier = pipeline("audio-text-classification", model=model)
    timeline = EmotionTimeline(classifier, batch_size=16)
    baseline = reset_peak_memory(settings.runtime)
    started = time.perf_counter()
    result = timeline(wav, transcript=srt)
    seconds = time.perf_counter() - started
    return {
        "peak_added_bytes": peak_memory(settings.runtime) - baseline,
        "baseline_bytes": baseline,
        "seconds": seconds,
        "duration": result.duration,
        "segments": len(result.segments),
        "failed": sum(segment.error is not None for segment in result.segments),
    }


def run(settings: Settings) -> Result:
    result = Result(NAME, TITLE)

    # --- VAD against the alternatives ---------------------------------------------------------------------------------
    scores = compare_detectors(settings)
    for name, by_condition in scores.items():
        means = {condition: float(np.mean(values)) for condition, values in by_condition.items()}
        worst = min(means.values())
        result.add(
            f"VAD {name}: boundaries within {TOLERANCE} s (worst condition)", 100 * worst, "%",
            target=">= 90 %" if name == "silero" else "", met=worst >= 0.9 if name == "silero" else None,
            note="; ".join(f"{condition} {100 * value:.1f} %" for condition, value in means.items()),
        )  # fmt: skip

    # --- peak memory and speed on a short and a long recording -------------------------------------------------------
    model = None if settings.smoke else str(DEMO_MODEL)
    if model is not None and not (DEMO_MODEL / "config.json").is_file():
        raise FileNotFoundError(f"{DEMO_MODEL} does not exist: run `make demo` first (or set CMT_DEMO_MODEL).")
    lengths = settings.pick((600.0, 3600.0), (60.0, 120.0))
    measured = {}
    for seconds in lengths:
        wav, srt, true_segments = make_recording(settings.cache_dir / "long_recordings", seconds)
        measured[seconds] = {**run_isolated(timeline_peak, model, str(wav), str(srt), settings), "true": true_segments}
    short, long = (measured[seconds] for seconds in lengths)
    for seconds, values in measured.items():
        result.add(
            f"{seconds / 60:.0f}-minute recording: peak memory added by the timeline",
            values["peak_added_bytes"] / MIB, "MiB",
            note=f"{values['segments']} segments ({values['true']} true, {values['failed']} failed), "
            f"{values['seconds']:.0f} s = {values['seconds'] / values['duration']:.3f} x real time",
        )  # fmt: skip
    growth = long["peak_added_bytes"] / max(short["peak_added_bytes"], 1)
    audio_growth = lengths[1] / lengths[0]
    result.add(
        f"peak growth for {audio_growth:.0f}x the audio", growth, "x", target="bounded: far below the audio growth",
        met=growth < audio_growth / 3,
        note=f"a {lengths[1] / 60:.0f}-minute 16 kHz float32 waveform alone would be {lengths[1] * 16000 * 4 / MIB:.0f} MiB",
    )  # fmt: skip
    result.details = {
        "vad_scores": scores,
        "timelines": {str(seconds): values for seconds, values in measured.items()},
        "model": model or "tiny random",
    }
    return result
