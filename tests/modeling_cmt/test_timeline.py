"""Emotion timelines of long recordings (modeling_cmt/timeline.py): Silero VAD segments against the known boundaries of
a recording made here (espeak-ng utterances of the synthetic corpus joined by pauses, background noise and noise
bursts), texts from SRT / WebVTT / JSON transcripts and from a tiny random Whisper, stereo calls, `cmt-timeline`,
and bad input."""

import csv
import json
import sys

import numpy as np
import pytest
import torch
from transformers import pipeline

from benchmarks.recordings import build_recording, write_srt, write_wav
from modeling_cmt import CMTForSequenceClassification
from modeling_cmt.timeline import (
    Cue,
    EmotionTimeline,
    Recording,
    StreamingVAD,
    VADOptions,
    detect_speech,
    main,
    read_transcript,
)


pytest.importorskip("silero_vad", reason="the timeline extra (silero-vad) is not installed")
TOLERANCE = 0.3


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """12 utterances with known boundaries, as a WAV file with its SRT transcript."""
    folder = tmp_path_factory.mktemp("recording")
    waveform, truth = build_recording(12, seed=0)
    return write_wav(folder / "call.wav", waveform), write_srt(folder / "call.srt", truth), truth


@pytest.fixture(scope="module")
def stereo_recording(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stereo")
    waveform, truth = build_recording(8, seed=1, channels=2)
    return write_wav(folder / "stereo.wav", waveform), truth


@pytest.fixture
def classifier(tiny_config, processor):
    import modeling_cmt  # noqa: F401 - registers the task

    model = CMTForSequenceClassification(tiny_config(id2label={0: "ang", 1: "hap", 2: "neu", 3: "sad"})).eval()
    return pipeline("audio-text-classification", model=model, processor=processor)


@pytest.fixture
def checkpoint(classifier, tmp_path):
    path = tmp_path / "checkpoint"
    classifier.model.save_pretrained(path)
    classifier.processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    """A tiny random Whisper built here: it says random words of a small BPE vocabulary (the plumbing is tested)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizerFast,
    )

    path = tmp_path_factory.mktemp("tiny-whisper")
    special = [
        "<|endoftext|>",
        "<|startoftranscript|>",
        "<|en|>",
        "<|transcribe|>",
        "<|translate|>",
        "<|notimestamps|>",
    ]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["hello there how are you", "the meeting is at ten"] * 4, vocab_size=300, min_frequency=1)
    bpe.save_model(str(path))
    vocab = json.loads((path / "vocab.json").read_text())
    # Whisper's special tokens come after the text tokens, <|notimestamps|> last: the ASR pipeline reads every id
    # above it as a timestamp.
    vocab.update({token: len(vocab) + offset for offset, token in enumerate(special)})
    (path / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = WhisperTokenizerFast(
        vocab=str(path / "vocab.json"),
        merges=str(path / "merges.txt"),
        **dict.fromkeys(("bos_token", "eos_token", "unk_token", "pad_token"), special[0]),
        additional_special_tokens=special[1:],
    )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in special}
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_source_positions=1500, max_target_positions=16, pad_token_id=ids[special[0]],
        bos_token_id=ids[special[0]], eos_token_id=ids[special[0]], decoder_start_token_id=ids[special[1]],
    )  # fmt: skip
    model = WhisperForConditionalGeneration(config)
    with torch.no_grad():  # only whole words can win: no bytes, no special tokens
        embeddings = model.model.decoder.embed_tokens.weight
        words = torch.zeros(len(tokenizer), dtype=torch.bool)
        words[[i for t, i in vocab.items() if t.lstrip("Ġ").isalpha() and len(t.lstrip("Ġ")) >= 3]] = True
        embeddings.mul_(20)[~words] = 0
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids[special[1]], eos_token_id=ids[special[0]], pad_token_id=ids[special[0]],
        max_length=8, no_timestamps_token_id=ids[special[-1]],
    )  # fmt: skip
    model.save_pretrained(path)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer).save_pretrained(
        path
    )
    return path


def boundary_hits(segments, truth) -> float:
    """Share of true starts and ends within TOLERANCE of the segment that overlaps the utterance most."""
    hits = 0
    for utterance in truth:
        overlaps = [min(s.end, utterance.end) - max(s.start, utterance.start) for s in segments]
        found = segments[int(np.argmax(overlaps))]
        hits += abs(found.start - utterance.start) <= TOLERANCE
        hits += abs(found.end - utterance.end) <= TOLERANCE
    return hits / (2 * len(truth))


# --- voice activity --------------------------------------------------------------------------------------------------


def test_streaming_vad_gives_silero_probabilities_block_by_block(recording):
    from silero_vad import load_silero_vad

    waveform = Recording(recording[0]).read(0, 1000)[0]
    whole = load_silero_vad(sequence=True).audio_forward(waveform)
    detector = StreamingVAD()
    for start in range(0, len(waveform), 7777):  # blocks that cut frames anywhere
        detector.feed(waveform[start : start + 7777])
    probabilities, power = detector.finish()
    assert probabilities.shape == whole.shape == power.shape
    np.testing.assert_allclose(probabilities, whole, atol=1e-6)


def test_silero_import_keeps_the_thread_count():
    torch.set_num_threads(2)
    StreamingVAD()
    assert torch.get_num_threads() == 2


def test_file_and_array_give_the_same_segments(recording):
    path, _, _ = recording
    from_file, duration = detect_speech(Recording(path), VADOptions(block_seconds=5))
    array = Recording(path).read(0, 1000)[0]
    from_array, _ = detect_speech(Recording((array * 32767).astype(np.int16), 16000))
    assert duration == pytest.approx(len(array) / 16000)
    np.testing.assert_allclose(from_file[0], from_array[0], atol=0.04)


# --- segments, texts, predictions ------------------------------------------------------------------------------------


def test_segments_match_the_known_utterances_and_take_their_text(recording, classifier):
    path, transcript, truth = recording
    result = EmotionTimeline(classifier)(path, transcript=transcript)

    assert abs(len(result.segments) - len(truth)) <= 1
    assert boundary_hits(result.segments, truth) >= 0.9
    for utterance in truth:  # its text went to the segment that holds it, and to no other
        holders = [s for s in result.segments if min(s.end, utterance.end) - max(s.start, utterance.start) > 0]
        assert len(holders) == 1 and utterance.text in holders[0].transcript
    for segment in result.segments:
        assert segment.text_source == "transcript" and segment.error is None and segment.label in result.labels
        assert sum(segment.scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert segment.label == max(segment.scores, key=segment.scores.get)
    summary = result.summary()
    assert summary["segments"] == len(result.segments) and summary["failed_segments"] == 0
    assert sum(summary["share_of_speech_time"].values()) == pytest.approx(1.0)
    assert summary["speech_seconds"] == pytest.approx(sum(s.seconds for s in result.segments), abs=1e-2)


def test_each_segment_is_classified_as_the_pipeline_classifies_it_alone(recording, classifier):
    path, transcript, _ = recording
    result = EmotionTimeline(classifier, batch_size=4)(path, transcript=transcript)
    segment = result.segments[3]
    audio = Recording(path).read(segment.start, segment.end)[0]
    alone = classifier({"array": audio, "sampling_rate": 16000}, text=segment.transcript)
    assert {entry["label"]: entry["score"] for entry in alone} == pytest.approx(segment.scores, abs=1e-4)


def test_stereo_calls_are_two_speakers_without_cross_talk(stereo_recording, classifier):
    path, truth = stereo_recording
    cues = [Cue(u.start, u.end, u.text, u.speaker) for u in truth]
    result = EmotionTimeline(classifier)(path, transcript=cues, channels="separate")
    assert boundary_hits(result.segments, truth) >= 0.9
    # the other channel's leak is not a segment: every segment is its own speaker's utterance
    assert [(s.channel, s.transcript) for s in result.segments] == [(u.speaker, u.text) for u in truth]
    assert set(result.summary()["by_channel"]) == {"agent", "customer"}

    mixed = EmotionTimeline(classifier, allow_audio_only=True)(path, channels="mix")
    assert {s.channel for s in mixed.segments} == {None}


def test_asr_transcribes_segments_with_a_tiny_whisper(recording, classifier, tiny_whisper):
    path, _, truth = recording
    asr = pipeline("automatic-speech-recognition", model=str(tiny_whisper))
    waveform, _ = build_recording(3, seed=2)
    result = EmotionTimeline(classifier, asr_model=asr)(waveform, sampling_rate=16000)
    assert len(result.segments) == 3
    for segment in result.segments:
        assert segment.text_source == "asr" and isinstance(segment.transcript, str) and segment.transcript
        assert segment.error is None and segment.label in result.labels


@pytest.mark.parametrize("kind", ["vtt", "json-list", "json-chunks", "json-segments"])
def test_transcript_formats(tmp_path, recording, kind):
    _, _, truth = recording
    if kind == "vtt":
        path = tmp_path / "t.vtt"
        lines = ["WEBVTT", ""]
        for u in truth[:2]:
            lines += [f"00:00:{u.start:06.3f} --> 00:00:{u.end:06.3f}", f"<v Agent>{u.text}", ""]
        path.write_text("\n".join(lines))
    else:
        path = tmp_path / "t.json"
        rows = [{"start": u.start, "end": u.end, "text": u.text} for u in truth[:2]]
        data = {
            "json-list": rows,
            "json-segments": {"text": "...", "segments": rows},
            "json-chunks": {"text": "...", "chunks": [{"timestamp": [r["start"], r["end"]], "text": r["text"]}
                                                        for r in rows]},
        }[kind]  # fmt: skip
        path.write_text(json.dumps(data))
    cues = read_transcript(path)
    assert [c.text for c in cues] == [u.text for u in truth[:2]]
    assert cues[1].start == pytest.approx(truth[1].start, abs=1e-3)
    assert cues[1].end == pytest.approx(truth[1].end, abs=1e-3)
    if kind == "vtt":
        assert cues[0].speaker == "Agent"


# --- command line ----------------------------------------------------------------------------------------------------


def test_cmt_timeline_writes_rows_plot_and_summary(recording, checkpoint, tmp_path, capsys):
    path, transcript, truth = recording
    output, plot, summary = tmp_path / "call.csv", tmp_path / "call.png", tmp_path / "summary.json"
    argv = [str(checkpoint), str(path), "--transcript", str(transcript), "--output", str(output)]
    assert main([*argv, "--plot", str(plot), "--summary", str(summary), "--device", "cpu"]) == 0
    with open(output, newline="") as file:
        rows = list(csv.DictReader(file))
    assert 0 < len(rows) <= len(truth)
    assert list(rows[0])[:9] == ["recording", "segment", "channel", "start", "end", "transcript", "text_source",
                                 "label", "score"]  # fmt: skip
    assert {f"score_{label}" for label in ("ang", "hap", "neu", "sad")} <= set(rows[0])
    assert " ".join(row["transcript"] for row in rows) == " ".join(u.text for u in truth)
    assert plot.stat().st_size > 10_000
    assert json.loads(summary.read_text())[0]["segments"] == len(rows)
    assert f"{len(rows)} segments (0 failed)" in capsys.readouterr().out

    jsonl = tmp_path / "call.jsonl"
    assert main([str(checkpoint), str(path), "--output", str(jsonl), "--allow_audio_only", "--device", "cpu"]) == 0
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) == len(rows)
    assert records[0]["text_source"] == "transcript"  # the sidecar call.srt beside call.wav


# --- bad input -------------------------------------------------------------------------------------------------------


def test_no_speech_is_said_clearly(tmp_path, checkpoint, write_wav):
    noise = write_wav(
        tmp_path / "noise.wav", (np.random.default_rng(0).standard_normal(16000 * 5) * 100).astype(np.int16)
    )
    output = tmp_path / "out.csv"
    assert main([str(checkpoint), str(noise), "--output", str(output), "--allow_audio_only", "--device", "cpu"]) == 0
    rows = list(csv.DictReader(open(output, newline="")))
    assert (
        len(rows) == 1 and rows[0]["error"].startswith("no speech found in") and "5.0 s of audio" in rows[0]["error"]
    )


def test_transcript_past_the_audio(recording, classifier, tmp_path):
    path, _, truth = recording
    late = [Cue(u.start + 1000, u.end + 1000, u.text) for u in truth]
    with pytest.raises(ValueError, match="all its 12 cues start after the recording ends"):
        EmotionTimeline(classifier)(path, transcript=late)
    some = [Cue(u.start, u.end, u.text) for u in truth] + [Cue(900, 901, "Too late.")]
    result = EmotionTimeline(classifier)(path, transcript=some)
    assert any("1 of 13 cues start after the audio ends" in warning for warning in result.warnings)
    assert all(segment.error is None for segment in result.segments)


def test_segments_without_text_fail_alone(recording, classifier):
    path, _, truth = recording
    result = EmotionTimeline(classifier)(path, transcript=[Cue(truth[0].start, truth[0].end, truth[0].text)])
    assert result.segments[0].error is None and result.segments[0].label
    assert result.segments[1:] and all("no transcript" in segment.error for segment in result.segments[1:])
    with pytest.raises(ValueError, match="Segments need text"):
        EmotionTimeline(classifier)(path)


def test_corrupt_truncated_and_empty_files_keep_earlier_rows(recording, checkpoint, tmp_path, capsys):
    path, transcript, truth = recording
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 50)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.wav"
    data = path.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # the header still says the full length
    output = tmp_path / "batch.jsonl"
    argv = [str(checkpoint), str(path), str(corrupt), str(empty), str(truncated), "--output", str(output)]
    assert main([*argv, "--allow_audio_only", "--device", "cpu"]) == 1
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    by_recording = {}
    for row in rows:
        by_recording.setdefault(row["recording"], []).append(row)
    assert len(by_recording[str(path)]) >= len(truth) - 1  # the good recording before the bad ones is kept
    assert "Could not decode" in by_recording[str(corrupt)][0]["error"]
    assert "is empty (0 bytes)" in by_recording[str(empty)][0]["error"]
    cut = by_recording[str(truncated)]
    assert 4 <= len(cut) <= 7 and all(row["error"] is None for row in cut)  # the first half is read
    assert "2 recording(s) failed" in capsys.readouterr().out


def test_bad_transcript_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"nope": 1}')
    with pytest.raises(ValueError, match="Could not read transcript"):
        read_transcript(bad)
    backwards = tmp_path / "backwards.json"
    backwards.write_text('[{"start": 3, "end": 1, "text": "x"}]')
    with pytest.raises(ValueError, match="cue 1: invalid times"):
        read_transcript(backwards)
    with pytest.raises(ValueError, match="expected .srt, .vtt, .json"):
        read_transcript(tmp_path / "t.txt" if (tmp_path / "t.txt").write_text("x") else None)


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "silero_vad", None)
    with pytest.raises(ImportError, match=r"cmt-speech\[timeline\]"):
        StreamingVAD()
