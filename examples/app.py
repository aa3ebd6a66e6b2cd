"""A web demo of a CMT checkpoint (Gradio): upload or record audio, type its transcript (or let an ASR model write it),
and see the label scores, the cross-attention of the audio frames over the words, and, for long recordings, the
emotion timeline.

    python examples/app.py                                   # demo_output/best_model (after `make demo`)
    python examples/app.py --model path/or/hub-id --asr_model openai/whisper-small --port 7860
    make app

Space-ready: a Hugging Face Space runs `app.py` with `CMT_MODEL=<hub id>` set (and `examples/explain.py` beside it).
The same function is the page's API: `gradio_client.Client(url).predict(handle_file("a.wav"), "text", None, False,
api_name="/classify")`.
"""

import argparse
import importlib.util
import os
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np
from transformers import pipeline

import modeling_cmt  # noqa: F401 - registers the audio-text-classification task
from modeling_cmt.pipeline_cmt import as_audio_text_input, read_audio
from modeling_cmt.timeline import EmotionTimeline, VADOptions


DEFAULT_MODEL = Path("demo_output") / "best_model"
# Audio longer than this is read as a recording and segmented (the pipeline itself refuses audio over 60 s).
LONG_AUDIO_SECONDS = 30.0
TIMELINE_COLUMNS = ["start", "end", "channel", "transcript", "text_source", "label", "score", "error"]


def _explain_module():
    """examples/explain.py (a script beside this one, not an installed package)."""
    spec = importlib.util.spec_from_file_location("cmt_explain", Path(__file__).resolve().parent / "explain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CMTDemo:
    """What the page calls: one classifier (and optional ASR) loaded once, one function per submit."""

    def __init__(self, model: str, asr_model: str | None = None, device: str = "cpu"):
        self.classifier = pipeline("audio-text-classification", model=model, device=device)
        self.asr = pipeline("automatic-speech-recognition", model=asr_model, device=device) if asr_model else None
        self.timeline = EmotionTimeline(self.classifier, asr_model=self.asr, allow_audio_only=True, vad=VADOptions())
        self.explain = _explain_module()
        self.model_name = model

    def classify(self, audio: str | None, transcript: str | None, transcript_file: str | None, long_recording: bool):
        """Scores, heatmap PNG, timeline PNG, timeline rows and a status line for one submitted recording."""
        if not audio:
            raise gr.Error("No audio: upload a file or record something first.")
        if os.path.getsize(audio) == 0:
            raise gr.Error("The uploaded audio file is empty (0 bytes).")
        try:
            default_rate = self.classifier.feature_extractor.sampling_rate
            waveform, rate = read_audio(as_audio_text_input(audio), default_rate)
        except (ValueError, OSError, ImportError) as error:
            raise gr.Error(str(error)) from error
        seconds = max(waveform.shape) / rate
        if long_recording or transcript_file or seconds > LONG_AUDIO_SECONDS:
            return self._timeline(audio, transcript_file, seconds)
        return self._utterance(waveform, rate, (transcript or "").strip(), seconds)

    def _utterance(self, waveform, rate: int, transcript: str, seconds: float):
        source = "typed"
        if not transcript and self.asr is not None:
            mono = waveform if waveform.ndim == 1 else waveform.mean(axis=int(np.argmin(waveform.shape)))
            transcript, source = (
                self.asr({"raw": mono.astype(np.float32), "sampling_rate": rate})["text"].strip(),
                "ASR",
            )
        try:
            scores = self.classifier(
                {"array": waveform, "sampling_rate": rate}, text=transcript, allow_audio_only=True
            )
        except ValueError as error:
            raise gr.Error(str(error)) from error
        heatmap = None
        if transcript and self.classifier.model.config.modality == "both":
            explanation = self.explain.explain(
                self.classifier.model,
                self.classifier.processor,
                {"array": waveform, "sampling_rate": rate},
                transcript,
            )
            heatmap = Path(tempfile.mkdtemp(prefix="cmt-app-")) / "cross_attention.png"
            self.explain.plot(explanation, heatmap)
        best = scores[0]
        text_note = f'transcript ({source}): "{transcript}"' if transcript else "no transcript: audio only"
        status = f"**{best['label']}** ({best['score']:.2f}) for {seconds:.1f} s of audio; {text_note}."
        labels = {entry["label"]: entry["score"] for entry in scores}
        return labels, str(heatmap) if heatmap else None, None, gr.update(value=None, visible=False), status

    def _timeline(self, audio: str, transcript_file: str | None, seconds: float):
        try:
            result = self.timeline(audio, transcript=transcript_file)
        except (ValueError, OSError) as error:
            raise gr.Error(str(error)) from error
        summary = result.summary()
        if not result.segments:
            return {}, None, None, gr.update(value=None, visible=False), f"**{summary['message']}**"
        image = result.plot(Path(tempfile.mkdtemp(prefix="cmt-app-")) / "timeline.png")
        rows = [[row[column] for column in TIMELINE_COLUMNS] for row in result.records()]
        failed = f", {summary['failed_segments']} failed" if summary["failed_segments"] else ""
        status = (
            f"{summary['segments']} segments{failed}: {summary['speech_seconds']:.1f} s of speech in {seconds:.1f} s. "
            "Scores: share of speech time per label." + "".join(f"\n\n{warning}" for warning in result.warnings)
        )
        rows_update = gr.update(value=rows, headers=TIMELINE_COLUMNS, visible=True)
        return summary["share_of_speech_time"], None, str(image), rows_update, status


def build_app(demo: CMTDemo) -> gr.Blocks:
    with gr.Blocks(title="CMT: emotion from speech and its transcript") as app:
        gr.Markdown(
            f"# CMT: speech emotion from audio + transcript\nModel: `{demo.model_name}`. Upload or record an "
            "utterance and type what is said (or leave it empty: "
            + ("the ASR model transcribes it" if demo.asr else "audio only")
            + f"). Recordings over {LONG_AUDIO_SECONDS:.0f} s are split into utterances and shown as a timeline."
        )
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio")
                transcript = gr.Textbox(
                    label="Transcript", placeholder="What is said in the recording", elem_id="text"
                )
                transcript_file = gr.File(
                    label="Transcript with timestamps (SRT / WebVTT / JSON), for long recordings",
                    file_types=[".srt", ".vtt", ".json"], type="filepath",
                )  # fmt: skip
                long_recording = gr.Checkbox(label="Long recording: segment it and draw the timeline")
                submit = gr.Button("Classify", variant="primary", elem_id="submit")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                scores = gr.Label(label="Scores", elem_id="scores")
                heatmap = gr.Image(label="Cross-attention: audio frames x words", type="filepath", elem_id="heatmap")
                timeline = gr.Image(label="Emotion timeline", type="filepath", elem_id="timeline")
                rows = gr.Dataframe(label="Segments", visible=False, elem_id="segments")
        submit.click(
            demo.classify,
            inputs=[audio, transcript, transcript_file, long_recording],
            outputs=[scores, heatmap, timeline, rows, status],
            api_name="classify",
        )
    return app


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("CMT_MODEL", str(DEFAULT_MODEL)),
                        help="CMT checkpoint folder or Hub id (default: $CMT_MODEL, else demo_output/best_model).")  # fmt: skip
    parser.add_argument("--asr_model", default=os.environ.get("CMT_ASR_MODEL"), help="ASR for empty transcripts.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.model == str(DEFAULT_MODEL) and not DEFAULT_MODEL.is_dir():
        parser.error(f"{DEFAULT_MODEL} does not exist: run `make demo` first, or pass --model.")
    build_app(CMTDemo(args.model, args.asr_model, args.device)).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
