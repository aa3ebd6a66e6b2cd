"""9. Export: the demo's best model exported to ONNX (`modeling_cmt.export`) and quantized to int8 (ONNX Runtime dynamic
quantization), against PyTorch eager, in one run: logit agreement on padded batches, latency (batch 1) and throughput
(batch 16) ratios from interleaved rounds, and the accuracy of each on the demo's held-out fold (the best model's
test session).

The model is `demo_output/best_model` (`make demo`; another folder with `CMT_DEMO_MODEL`). Smoke runs export a tiny
random classifier and score it on a few synthetic utterances (its accuracy says nothing).
"""

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from .corpora import synthetic_corpus
from .reporting import Result
from .settings import Settings
from .timing import interleaved, median, ratio_per_round


NAME = "export"
TITLE = "ONNX export and int8: ONNX Runtime vs PyTorch latency / throughput, logits, held-out accuracy"
DEMO_MODEL = Path(os.environ.get("CMT_DEMO_MODEL", Path(__file__).resolve().parents[1] / "demo_output" / "best_model"))
# int8 becomes the CPU default only if it changes neither UA nor WA by more than this (absolute) on the held-out fold.
NEGLIGIBLE = 0.005
THROUGHPUT_BATCH = 16


def _model(settings: Settings):
    from transformers import AutoModelForSequenceClassification, AutoProcessor, Wav2Vec2FeatureExtractor

    from cmt_training.build import build_bpe_tokenizer
    from modeling_cmt import CMTConfig, CMTForSequenceClassification, CMTProcessor

    if not settings.smoke:
        if not (DEMO_MODEL / "config.json").is_file():
            raise FileNotFoundError(f"{DEMO_MODEL} does not exist: run `make demo` first (or set CMT_DEMO_MODEL).")
        arguments = json.loads((DEMO_MODEL / "run_arguments.json").read_text())["DataArguments"]
        model = AutoModelForSequenceClassification.from_pretrained(DEMO_MODEL).eval()
        return model, AutoProcessor.from_pretrained(DEMO_MODEL), arguments["test_fold"], arguments["synthetic_size"]
    corpus = synthetic_corpus(settings, 40)
    tokenizer = build_bpe_tokenizer(list(corpus["session1"]["text"]), settings.cache_dir / "export_tokenizer")
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=True)
    # One layer everywhere: tracing for the export dominates a smoke run's time.
    config = CMTConfig.from_preset(
        "tiny",
        num_labels=4,
        num_cross_layers=1,
        audio_config={"num_hidden_layers": 1},
        text_config={"vocab_size": len(tokenizer), "num_hidden_layers": 1},
    )
    config.id2label = dict(enumerate(["angry", "happy", "neutral", "sad"]))
    config.label2id = {label: index for index, label in config.id2label.items()}
    return CMTForSequenceClassification(config).eval(), CMTProcessor(extractor, tokenizer), 1, 40


def _batches(processor, rows, batch_size: int):
    """Padded batches of the rows sorted by length (as length-grouped inference would), with their row indices."""
    order = np.argsort([len(audio["array"]) for audio in rows["audio"]])
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        audio = [np.asarray(rows["audio"][int(i)]["array"], dtype=np.float32) for i in indices]
        texts = [rows["text"][int(i)] for i in indices]
        yield indices, dict(processor(audio=audio, text=texts, sampling_rate=16000))


def _accuracy(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
    recalls = [np.mean(predictions[labels == c] == c) for c in range(num_labels) if np.any(labels == c)]
    return {"wa": float(np.mean(predictions == labels)), "ua": float(np.mean(recalls))}


def run(settings: Settings) -> Result:
    import onnxruntime

    from modeling_cmt.export import export_onnx, quantize_int8

    model, processor, fold, corpus_size = _model(settings)
    corpus = synthetic_corpus(settings, corpus_size)
    test = corpus[f"session{fold}"]
    rows = {"audio": test["audio"], "text": test["text"]}
    labels = np.asarray(test["label"])
    if model.config.id2label[0] != test.features["label"].names[0] and not settings.smoke:
        raise ValueError(f"The model's labels {model.config.id2label} are not the corpus's {test.features['label']}.")

    folder = Path(tempfile.mkdtemp(prefix="cmt-bench-export-"))
    export_onnx(model, processor, folder / "model.onnx")
    quantize_int8(folder / "model.onnx", folder / "model_int8.onnx")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = settings.threads or 0
    sessions = {
        name: onnxruntime.InferenceSession(str(folder / file), options, providers=["CPUExecutionProvider"])
        for name, file in (("onnx fp32", "model.onnx"), ("onnx int8", "model_int8.onnx"))
    }

    def run_onnx(name, inputs):
        return sessions[name].run(["logits"], {key: value.numpy() for key, value in inputs.items()})[0]

    def run_torch(inputs):
        with torch.inference_mode():
            return model(**inputs).logits.numpy()

    # --- accuracy on the held-out fold, and logit agreement on its padded batches -----------------------------------
    logits = {name: np.zeros((len(labels), model.config.num_labels), dtype=np.float32) for name in
              ("pytorch", "onnx fp32", "onnx int8")}  # fmt: skip
    for indices, inputs in _batches(processor, rows, THROUGHPUT_BATCH):
        logits["pytorch"][indices] = run_torch(inputs)
        for name in sessions:
            logits[name][indices] = run_onnx(name, inputs)
    accuracy = {name: _accuracy(values.argmax(-1), labels, model.config.num_labels) for name, values in logits.items()}
    agreement = float(np.mean(logits["onnx int8"].argmax(-1) == logits["onnx fp32"].argmax(-1)))
    fp32_error = float(np.abs(logits["onnx fp32"] - logits["pytorch"]).max())
    int8_error = float(np.abs(logits["onnx int8"] - logits["pytorch"]).max())

    # --- speed: interleaved rounds ------------------------------------------------------------------------------------
    lengths = [len(audio["array"]) for audio in rows["audio"]]
    median_row = int(np.argsort(lengths)[len(lengths) // 2])
    single = dict(processor(audio=[np.asarray(rows["audio"][median_row]["array"], dtype=np.float32)],
                            text=[rows["text"][median_row]], sampling_rate=16000))  # fmt: skip
    _, batch = next(_batches(processor, {key: value[: settings.pick(64, 8)] for key, value in rows.items()},
                             settings.pick(THROUGHPUT_BATCH, 4)))  # fmt: skip
    rounds = max(5, settings.repeats) if not settings.smoke else 2
    timings = {}
    for case, inputs in (("batch 1", single), (f"batch {len(batch['input_ids'])}", batch)):
        timings[case] = interleaved(
            {
                "pytorch": lambda inputs=inputs: run_torch(inputs),
                "onnx fp32": lambda inputs=inputs: run_onnx("onnx fp32", inputs),
                "onnx int8": lambda inputs=inputs: run_onnx("onnx int8", inputs),
            },
            settings.runtime,
            rounds=rounds,
            warmup=1,
        )

    result = Result(NAME, TITLE)
    result.add("ONNX fp32 vs PyTorch, max |logit difference| (held-out fold, padded batches)", fp32_error,
               target="<= 1e-4", met=fp32_error <= 1e-4)  # fmt: skip
    result.add("ONNX int8 vs PyTorch, max |logit difference|", int8_error)
    for case, times in timings.items():
        size = 1 if case == "batch 1" else len(batch["input_ids"])
        what = "latency" if size == 1 else "throughput"
        speedup = ratio_per_round(times["onnx fp32"], times["onnx int8"])
        result.add(f"{case}: int8 {what} gain over ONNX fp32", speedup, "x",
                   note=f"int8 {median(times['onnx int8']):.4f} s, fp32 {median(times['onnx fp32']):.4f} s")  # fmt: skip
        result.add(f"{case}: ONNX fp32 {what} gain over PyTorch eager", ratio_per_round(times["pytorch"], times["onnx fp32"]),
                   "x", note=f"PyTorch {median(times['pytorch']):.4f} s")  # fmt: skip
    change = {metric: accuracy["onnx int8"][metric] - accuracy["onnx fp32"][metric] for metric in ("ua", "wa")}
    negligible = all(abs(value) <= NEGLIGIBLE for value in change.values())
    result.add(f"held-out UA: PyTorch / ONNX fp32 / ONNX int8 (session {fold}, {len(labels)} utterances)",
               " / ".join(f"{accuracy[name]['ua']:.4f}" for name in ("pytorch", "onnx fp32", "onnx int8")))  # fmt: skip
    result.add("int8 accuracy change (UA, WA)", f"{change['ua']:+.4f}, {change['wa']:+.4f}",
               target=f"|change| <= {NEGLIGIBLE} for the CPU default", met=negligible,
               note=f"int8 and fp32 agree on {100 * agreement:.1f} % of predictions")  # fmt: skip
    result.details = {
        "model": str(DEMO_MODEL) if not settings.smoke else "tiny random",
        "test_fold": fold,
        "accuracy": accuracy,
        "agreement_int8_fp32": agreement,
        "seconds": timings,
        "padded_batch_shape": list(batch["input_values"].shape),
        "file_bytes": {path.name: path.stat().st_size for path in folder.glob("*.onnx")},
        "onnxruntime": onnxruntime.__version__,
    }
    return result
