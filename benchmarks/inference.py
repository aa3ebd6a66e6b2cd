"""7. Inference: the `audio-text-classification` pipeline against calling the model directly on tensors the processor
already made, at batch 1 (latency) and batch 32 (throughput), and `torch.compile` on and off.

The pipeline gets what a user has: 16 kHz waveforms (dicts with `array` and `sampling_rate`) and transcripts; it
checks, normalises, tokenizes, pads, runs the model and post-processes. The direct call gets the processor's output
and runs the model under `torch.inference_mode`. Both are timed in interleaved rounds on the same real utterances of
the synthetic corpus (batch 1: the median-length one; batch 32: the first 32 of a session, padded together).

`torch.compile` (inductor; `eager` backend in smoke runs, which only traces) is measured on the direct batch-1 call:
the first call (compilation), a call with a new length (recompilation with dynamic shapes), and steady latency.
"""

import numpy as np
import torch
from transformers import Wav2Vec2FeatureExtractor, pipeline

from cmt_training.build import build_bpe_tokenizer
from cmt_training.data import SAMPLING_RATE
from modeling_cmt import CMTProcessor

from .corpora import synthetic_corpus
from .models import build_classifier
from .profiles import top_operators
from .reporting import Result
from .settings import Settings
from .timing import interleaved, median, ratio_per_round, timed


NAME = "inference"
TITLE = "Pipeline latency and throughput vs direct model calls; torch.compile"
TARGET = 0.15
TASK = "audio-text-classification"


def utterances(settings: Settings, count: int) -> tuple[list[np.ndarray], list[str]]:
    corpus = synthetic_corpus(settings, settings.pick(2000, 40))
    rows = corpus["session1"].select(range(count))
    waveforms = [np.asarray(audio["array"], dtype=np.float32) for audio in rows["audio"]]
    return waveforms, list(rows["text"])


def run(settings: Settings) -> Result:
    import modeling_cmt  # noqa: F401 - registers the pipeline task

    runtime = settings.runtime
    batch_size = settings.pick(32, 4)
    waveforms, texts = utterances(settings, batch_size)
    tokenizer = build_bpe_tokenizer(texts, settings.cache_dir / "inference_tokenizer")
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=SAMPLING_RATE, do_normalize=True, return_attention_mask=True)
    processor = CMTProcessor(feature_extractor=extractor, tokenizer=tokenizer)
    model = build_classifier(settings.preset, runtime).eval()
    classifier = pipeline(TASK, model=model, processor=processor, device=runtime.device)

    single = int(np.argsort([len(w) for w in waveforms])[len(waveforms) // 2])
    cases = {
        "batch 1": ([waveforms[single]], [texts[single]]),
        f"batch {batch_size}": (waveforms, texts),
    }
    result = Result(NAME, TITLE)
    details = {"batch_size": batch_size, "seconds": {}}
    for case, (audio, text) in cases.items():
        inputs = runtime.to_device(processor(audio=audio, text=text, sampling_rate=SAMPLING_RATE))
        items = [{"array": waveform, "sampling_rate": SAMPLING_RATE} for waveform in audio]

        def direct(inputs=inputs):
            with torch.inference_mode(), runtime.autocast():
                return model(**inputs).logits

        def through_pipeline(items=items, text=text):
            with runtime.autocast():
                return classifier(items, text=text, batch_size=len(items))

        rounds = settings.repeats if len(items) > 1 else max(5, settings.repeats)
        times = interleaved({"pipeline": through_pipeline, "direct": direct}, runtime, rounds=rounds, warmup=1)
        overhead = ratio_per_round(times["pipeline"], times["direct"]) - 1
        per_item = median(times["pipeline"]) / len(items)
        result.add(
            f"{case}: pipeline overhead over the direct call",
            100 * overhead,
            "%",
            target=f"<= {100 * TARGET:.0f} %",
            met=overhead <= TARGET,
            note=f"pipeline {median(times['pipeline']):.3f} s, direct {median(times['direct']):.3f} s"
            + (f"; {1 / per_item:.2f} utt/s" if len(items) > 1 else ""),
        )
        details["seconds"][case] = times
        details[f"padded_seconds_{case}"] = inputs["input_values"].shape[-1] / SAMPLING_RATE
    details["profile_pipeline_batch_1"] = top_operators(
        lambda: classifier({"array": waveforms[single], "sampling_rate": SAMPLING_RATE}, text=texts[single]),
        runtime,
    )

    # torch.compile on the direct batch-1 call
    backend = settings.pick("inductor", "eager")
    audio, text = cases["batch 1"]
    inputs = runtime.to_device(processor(audio=audio, text=text, sampling_rate=SAMPLING_RATE))
    shorter = runtime.to_device(
        processor(audio=[audio[0][: int(0.8 * len(audio[0]))]], text=text, sampling_rate=SAMPLING_RATE)
    )
    compiled = torch.compile(model, backend=backend)

    def call(module, batch):
        def run_once():
            with torch.inference_mode(), runtime.autocast():
                return module(**batch).logits

        return run_once

    first = timed(call(compiled, inputs), runtime)
    recompile = timed(call(compiled, shorter), runtime)
    times = interleaved(
        {"compiled": call(compiled, inputs), "eager": call(model, inputs)}, runtime, rounds=max(5, settings.repeats)
    )
    speedup = ratio_per_round(times["eager"], times["compiled"])
    result.add(f"torch.compile ({backend}) batch-1 speedup, steady state", speedup, "x", note="default only if > 1")
    result.add(f"torch.compile ({backend}) first call / new length", f"{first:.1f} / {recompile:.1f}", "s")
    details["compile"] = {
        "backend": backend,
        "first_call_seconds": first,
        "new_length_call_seconds": recompile,
        "rounds": times,
        "speedup": speedup,
    }
    result.details = details
    return result
