"""Why do aligned items stay hard? Two measurements on the synthetic corpus's aligned items (two sentiment words of
opposite polarity, the class follows the stressed one):

- `--audio_model_name_or_path TOWER`: does the audio tower's output tell *which* of the two words is stressed?
  A logistic regression (5-fold cross-validation over utterances) predicts the stressed slot (first or second
  sentiment word) from each layer's frame states, summarised two ways: the mean over all frames (what an
  utterance-level head such as Shallow-Fusion's sees) and the means over the first and the second half of the
  utterance (a crude alignment in time). Chance is about 0.5.
- `--model_name_or_path CHECKPOINT --test_fold K`: does a fine-tuned CMT fit aligned items on its *training*
  split? Accuracy by item type on the fold's train and test splits: low on train too means the signal is not
  extracted (optimisation or representation), high on train and low on test means it does not generalise.

    python examples/probe_aligned.py --audio_model_name_or_path demo_output/runs/towers/hubert --output stress.json
    python examples/probe_aligned.py --model_name_or_path study_output/runs/cmt_pt_plus_tapt/fold1_lr0.002/fold_1 \
        --test_fold 1 --output fit.json
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from transformers import HubertModel, Wav2Vec2FeatureExtractor

import hub_datasets
from modeling_cmt import SAMPLING_RATE


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--audio_model_name_or_path", help="A HubertModel checkpoint: the stressed-slot probe.")
    source.add_argument("--model_name_or_path", help="A fine-tuned CMT classification checkpoint: the fit probe.")
    parser.add_argument(
        "--test_fold", type=int, choices=range(1, 6), help="With --model_name_or_path: the fold it was trained on."
    )
    parser.add_argument("--synthetic_size", type=int, default=1000, help="Size of the synthetic corpus read.")
    parser.add_argument("--sessions", default="2,3,4,5", help="Sessions whose aligned items the stress probe reads.")
    parser.add_argument("--max_audio_seconds", type=float, default=6.0)
    parser.add_argument("--cache_dir", help="Where the synthetic corpus is cached.")
    parser.add_argument("--output", required=True, help="JSON file for the results (refused if it exists).")
    args = parser.parse_args(argv)
    if args.model_name_or_path and args.test_fold is None:
        parser.error("--model_name_or_path needs --test_fold (the fold the checkpoint was trained on).")
    flag, folder, model_type = (
        ("--audio_model_name_or_path", args.audio_model_name_or_path, "hubert")
        if args.audio_model_name_or_path
        else ("--model_name_or_path", args.model_name_or_path, "cmt")
    )
    config = Path(folder) / "config.json"
    if not config.is_file():
        parser.error(f"{flag} {folder}: no config.json there; give a saved checkpoint folder.")
    found = json.loads(config.read_text()).get("model_type")
    if found != model_type:
        parser.error(f"{flag} {folder} is a {found!r} checkpoint; this probe needs a {model_type!r} one.")
    sessions = args.sessions.split(",")
    if not all(session.strip() in {"1", "2", "3", "4", "5"} for session in sessions):
        parser.error(f"--sessions must be comma-separated sessions 1-5, got {args.sessions!r}.")
    return args


def stressed_slot(row) -> int:
    """0 when the first of the two sentiment words is stressed, 1 when the second is: every aligned template puts the
    first in the sentence's first half and the second in its second half."""
    return int(row["stressed_word_index"] >= len(row["text"].split()) / 2)


def stress_probe(args, corpus) -> dict:
    model = HubertModel.from_pretrained(args.audio_model_name_or_path).eval()
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=SAMPLING_RATE, do_normalize=True)
    features, slots = None, []
    for session in args.sessions.split(","):
        for row in corpus[f"session{session.strip()}"].with_format("numpy"):
            if row["item_type"] != "aligned":
                continue
            waveform = np.asarray(row["audio"]["array"], dtype=np.float32)[
                : int(args.max_audio_seconds * SAMPLING_RATE)
            ]
            inputs = torch.tensor(extractor(waveform, sampling_rate=SAMPLING_RATE)["input_values"][0])[None]
            with torch.no_grad():
                states = [layer[0].numpy() for layer in model(inputs, output_hidden_states=True).hidden_states]
            half = [len(layer) // 2 for layer in states]
            summaries = {
                "mean": [layer.mean(0) for layer in states],
                "halves": [np.concatenate([s[:h].mean(0), s[h:].mean(0)]) for s, h in zip(states, half)],
            }
            if features is None:
                features = {kind: [[] for _ in states] for kind in summaries}
            for kind, per_layer in summaries.items():
                for layer, vector in enumerate(per_layer):
                    features[kind][layer].append(vector)
            slots.append(stressed_slot(row))
    slots = np.asarray(slots)
    # 5-fold cross-validation, fewer folds on a small corpus (each fold needs both slots)
    folds = min(5, int(np.bincount(slots, minlength=2).min()))
    if folds < 2:
        raise SystemExit(
            f"probe_aligned: error: sessions {args.sessions} have {len(slots)} aligned items, too few with each "
            "stressed slot for cross-validation; use a larger --synthetic_size or more --sessions."
        )
    accuracy = {
        kind: [
            float(cross_val_score(
                make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)), np.stack(layer), slots, cv=folds
            ).mean())
            for layer in per_layer
        ]
        for kind, per_layer in features.items()
    }  # fmt: skip
    for kind, values in accuracy.items():
        print(f"stressed slot from the {kind} of the frame states, by layer: " + ", ".join(f"{v:.3f}" for v in values))
    return {"probe": "stressed_slot", "items": len(slots), "cv_folds": folds,
            "majority": float(max(slots.mean(), 1 - slots.mean())),
            "accuracy_by_layer": accuracy}  # fmt: skip


def fit_probe(args, corpus) -> dict:
    from transformers import AutoModelForSequenceClassification, AutoProcessor

    model = AutoModelForSequenceClassification.from_pretrained(args.model_name_or_path).eval()
    processor = AutoProcessor.from_pretrained(args.model_name_or_path)
    fold = hub_datasets.synthetic_emotion_loso_fold(corpus, test_session=args.test_fold)
    results = {"probe": "fit_by_item_type", "model": args.model_name_or_path, "test_fold": args.test_fold}
    for split in ("train", "test"):
        hits = {}
        rows = fold[split].with_format("numpy")
        for start in range(0, len(rows), 16):
            batch = rows[start : start + 16]
            audio = [np.asarray(a["array"], dtype=np.float32)[: int(args.max_audio_seconds * SAMPLING_RATE)]
                     for a in batch["audio"]]  # fmt: skip
            inputs = processor(audio=audio, sampling_rate=SAMPLING_RATE, text=list(batch["text"]))
            with torch.no_grad():
                predicted = model(**inputs).logits.argmax(-1).numpy()
            for item_type, hit in zip(batch["item_type"], predicted == np.asarray(batch["label"])):
                hits.setdefault(str(item_type), []).append(bool(hit))
        results[split] = {item_type: float(np.mean(values)) for item_type, values in sorted(hits.items())}
        print(f"{split}: accuracy by item type " + ", ".join(f"{k} {v:.3f}" for k, v in results[split].items()))
    return results


def main(argv=None) -> dict:
    args = parse_args(argv)
    output = Path(args.output)
    if output.exists():
        raise SystemExit(f"probe_aligned: error: {output} exists; name another --output.")
    torch.manual_seed(0)
    corpus = hub_datasets.load_synthetic_emotion(num_utterances=args.synthetic_size, cache_dir=args.cache_dir)
    results = stress_probe(args, corpus) if args.audio_model_name_or_path else fit_probe(args, corpus)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({**results, "arguments": vars(args)}, indent=2))
    return results


if __name__ == "__main__":
    main()
