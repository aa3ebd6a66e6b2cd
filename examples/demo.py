"""The whole paper, end to end, on the embedded synthetic corpus: `make demo`.

1. builds (or reuses) the synthetic emotional-speech corpus and a separate unlabelled pretraining corpus;
2. fits the unit codebook and pretrains CMT (stage 1, then stage 2) with `run_pretrain.py`, then runs TAPT on each
   fold's training split;
3. fine-tunes with `run_finetune.py` on speaker-independent folds: CMT (PT + TAPT), CMT without pretraining,
   HuBERT-only, RoBERTa-only, Shallow-Fusion (the paper's Table 1 rows), plus CMT with the layer pooler and with the
   orthogonality loss (Table 4 rows);
4. writes `demo_output/`: results.md (the paper's table layout with our mean ± std, the corpus's by-construction
   ceilings, the paper's numbers apart and labelled), results.json, PNG plots, and the best CMT in Hub layout;
5. reloads that folder in a fresh process with `pipeline("audio-text-classification", trust_remote_code=True)` and
   prints predictions for held-out utterances next to their true labels.

The towers are small and randomly initialised (the `demo` preset): these are synthetic-corpus results that show the
code paths and the relative behaviour of the models, not the paper's numbers, which need the real corpora, pretrained
towers and GPUs (README, "Reproduce the paper"). Finished steps are cached in the output folder; `--fresh` redoes all.

    python examples/demo.py                   # ~30 minutes on 2 CPU cores (README, "The demo")
    python examples/demo.py --smoke           # seconds: tiny everything, same code path
"""

import os


# OpenMP threads that spin while they wait starve any other CPU-bound process (and are starved by it): a train step
# then runs many times slower. Waiting threads sleep instead; this must be set before torch loads (README, "Threads").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import importlib
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import report  # examples/report.py: this script's folder is first on sys.path when it runs
import transformers
from datasets import concatenate_datasets
from tqdm.auto import tqdm

import hub_datasets
from cmt_training.model_card import write_model_card
from cmt_training.results import aggregate, write_json


# What runs, by mode. Fine-tuning rows: (name, paper row it stands for, starting point, extra arguments).
SETTINGS = {
    "full": {
        "num_utterances": 1000,
        "pretrain_utterances": 1000,
        "folds": "1,3,5",
        "preset": "demo",
        "pretrain_epochs": 3,
        "tapt_epochs": 2,
        "finetune_epochs": 10,
        "finetune_batch_size": 32,
        "batch_size": 16,
        "learning_rate": 2e-3,
        "max_audio_seconds": 4,
    },
    "smoke": {
        "num_utterances": 40,
        "pretrain_utterances": 20,
        "folds": "1",
        "preset": "tiny",
        "pretrain_epochs": 1,
        "tapt_epochs": 1,
        "finetune_epochs": 1,
        "finetune_batch_size": 8,
        "batch_size": 8,
        "learning_rate": 2e-3,
        "max_audio_seconds": 3,
    },
}
ROWS = [
    ("CMT (PT + TAPT)", "CMT", "tapt", []),
    ("CMT w/o PT", "CMT-4 w/o PT", "scratch", []),
    ("HuBERT-only", "HuBERT", "pretrained", ["--modality", "audio", "--num_cross_layers", "0"]),
    ("RoBERTa-only", "RoBERTa", "pretrained", ["--modality", "text", "--num_cross_layers", "0"]),
    ("Shallow-Fusion", "Shallow-Fusion", "pretrained", ["--num_cross_layers", "0"]),
    ("CMT + layer pooler", "CMT-4 PT + Layer pooler", "tapt", ["--pooling", "layer_pooler"]),
    ("CMT + ortho", "CMT-4 PT + Ortho", "tapt", ["--ortho_weight", "0.1"]),
]
CMT_ROWS = ("CMT (PT + TAPT)", "CMT + layer pooler", "CMT + ortho")
# What each row's inputs carry, as a view of `hub_datasets.synthetic_emotion_ceilings`: the single-modal rows see one
# modality, Shallow-Fusion both at utterance level, every CMT row (with or without pretraining) both word by word.
ROW_VIEWS = {"HuBERT-only": "prosody", "RoBERTa-only": "text", "Shallow-Fusion": "text+prosody"}
CMT_VIEW = "text+prosody+alignment"
CHANCE = 0.25  # 4 classes, balanced by construction


def captured_fraction(score: float, ceiling: float, chance: float = CHANCE) -> float | None:
    """How much of what its inputs allow a row reached: (score - chance) / (ceiling - chance); 1 = the ceiling. None
    where the ceiling is chance itself (text alone says nothing about aligned items): nothing there to capture."""
    if ceiling - chance < 1e-9:
        return None
    return (score - chance) / (ceiling - chance)


def _captured_cell(entry: dict) -> str:
    captured = entry["captured"]
    return f"{entry['score']:.3f} | {entry['ceiling']:.3f} | " + ("–" if captured is None else f"{captured:.2f}")


def captured_table(results: dict, ceilings: dict) -> dict[str, dict]:
    """Per row: its view, and for UA over all items and accuracy on aligned / global items the measured mean, the
    ceiling of the row's view on the same test rows and the captured fraction."""
    table = {}
    for name, result in results.items():
        view = ROW_VIEWS.get(name, CMT_VIEW)
        scores = {"all": result["aggregate"]["ua"]["mean"]}
        for item_type in ("aligned", "global"):
            if item_type in result.get("aggregate_by_item_type", {}):
                scores[item_type] = result["aggregate_by_item_type"][item_type]["wa"]["mean"]
        table[name] = {"view": view}
        for item_type, score in scores.items():
            ceiling = ceilings[item_type][view]["accuracy"]
            table[name][item_type] = {
                "score": score, "ceiling": ceiling, "captured": captured_fraction(score, ceiling)
            }  # fmt: skip
    return table


MATCHING_LOSS_WEIGHT = 0.5

PREDICT = r"""
import json, sys
sys.modules["modeling_cmt"] = None  # only the folder's own code may be used
from transformers import pipeline

folder, samples = sys.argv[1], json.loads(sys.argv[2])
classifier = pipeline("audio-text-classification", model=folder, trust_remote_code=True)
for sample in samples:
    best = classifier(sample["path"], text=sample["text"], top_k=1)[0]
    print(json.dumps({**sample, "predicted": best["label"], "score": best["score"]}))
"""


class Demo:
    def __init__(self, output_dir: Path, settings: dict, fresh: bool):
        self.output_dir, self.settings, self.fresh = output_dir, settings, fresh
        self.logs = output_dir / "logs"
        self.cache = output_dir / "cache"
        self.timings: dict[str, float] = {}
        for folder in (self.logs, self.cache):
            folder.mkdir(parents=True, exist_ok=True)

    def task(self) -> list[str]:
        return ["--task", "synthetic_emotion", "--synthetic_size", str(self.settings["num_utterances"]),
                "--cache_dir", str(self.cache)]  # fmt: skip

    def training(self) -> list[str]:
        s = self.settings
        return [
            "--per_device_train_batch_size", str(s["batch_size"]), "--per_device_eval_batch_size", "32",
            "--learning_rate", str(s["learning_rate"]), "--max_audio_seconds", str(s["max_audio_seconds"]),
            "--warmup_steps", "10", "--seed", "0", "--log_level", "warning", "--dataloader_pin_memory", "false",
            "--logging_steps", "20", "--disable_tqdm", "true",
        ]  # fmt: skip

    def step(self, name: str, module: str, arguments: list[str], output: Path) -> Path:
        """Runs an example script's main() in this process unless its results are already there."""
        if (output / "results.json").is_file() and not self.fresh:
            return output
        if output.exists():
            shutil.rmtree(output)  # an unfinished earlier attempt of this demo step, never user data
        started = time.time()
        script = importlib.import_module(module)  # a script beside this one: run_finetune, run_pretrain, ...
        argv = [*map(str, arguments), "--output_dir", str(output)]
        log = self.logs / f"{name}.log"
        with log.open("w") as handle, contextlib.redirect_stdout(handle):
            handler = logging.StreamHandler(handle)
            logging.getLogger().addHandler(handler)
            try:
                script.main(argv)
            except Exception as error:
                raise RuntimeError(f"Demo step {name!r} failed; its log is {log}.") from error
            finally:
                logging.getLogger().removeHandler(handler)
                _quiet_logging()  # the scripts set library verbosity; keep the demo's console to its own bars
        self.timings[name] = round(time.time() - started, 1)
        return output

    # --- 1. corpora --------------------------------------------------------------------------------------------

    def corpora(self):
        started = time.time()
        corpus = hub_datasets.load_synthetic_emotion(
            num_utterances=self.settings["num_utterances"], cache_dir=str(self.cache)
        )
        pairs_dir = self.output_dir / "pretraining_corpus"
        if not (pairs_dir / "train.parquet").is_file() or self.fresh:
            # Unlabelled pretraining pairs: other utterances (seed 1) of the same generator, labels dropped.
            pairs = hub_datasets.load_synthetic_emotion(
                num_utterances=self.settings["pretrain_utterances"], seed=1, cache_dir=str(self.cache)
            )
            pairs = concatenate_datasets(list(pairs.values())).select_columns(["audio", "text"])
            pairs_dir.mkdir(parents=True, exist_ok=True)
            pairs.to_parquet(str(pairs_dir / "train.parquet"))
        self.timings["corpora"] = round(time.time() - started, 1)
        return corpus, pairs_dir

    # --- 2. pretraining ----------------------------------------------------------------------------------------

    def pretrain(self, pairs_dir: Path, folds: list[int]) -> tuple[Path, dict[int, Path]]:
        s = self.settings
        pairs = ["--task", "audio_text_pairs", "--data_dir", str(pairs_dir), "--cache_dir", str(self.cache)]
        runs = self.output_dir / "runs"
        codebook = runs / "codebook"
        if not (codebook / "model.safetensors").is_file() or self.fresh:
            if codebook.exists():
                shutil.rmtree(codebook)
            started = time.time()
            script = importlib.import_module("fit_codebook")
            # The codebook checkpoint starts pretraining, so it carries the heads of the losses pretraining uses.
            argv = ["--preset", s["preset"], *pairs, "--codebook_size", "32",
                    "--config_overrides", f"matching_loss_weight={MATCHING_LOSS_WEIGHT}", "--disable_tqdm", "true",
                    "--max_audio_seconds", str(s["max_audio_seconds"]), "--output_dir", str(codebook)]  # fmt: skip
            with (self.logs / "codebook.log").open("w") as handle, contextlib.redirect_stdout(handle):
                script.main(argv)
            self.timings["codebook"] = round(time.time() - started, 1)
        pretrained = self.step(
            "pretrain", "run_pretrain",
            ["--model_name_or_path", codebook, *pairs, *self.training(), "--stage", "both", "--matching_loss_weight", MATCHING_LOSS_WEIGHT,
             "--num_train_epochs", s["pretrain_epochs"]],
            runs / "pretrain",
        )  # fmt: skip
        tapt = {
            fold: self.step(
                f"tapt_fold{fold}",
                "run_pretrain",
                [
                    "--model_name_or_path",
                    pretrained,
                    *self.task(),
                    *self.training(),
                    "--test_fold",
                    fold,
                    "--stage",
                    "2",
                    "--num_train_epochs",
                    s["tapt_epochs"],
                ],
                runs / f"tapt_fold{fold}",
            )  # fmt: skip
            for fold in folds
        }
        return pretrained, tapt

    # --- 3. fine-tuning ----------------------------------------------------------------------------------------

    def finetune(self, pretrained: Path, tapt: dict[int, Path], folds: list[int]) -> dict[str, dict]:
        s = self.settings
        results = {}
        runs = self.output_dir / "runs"
        jobs = [(row, fold) for row in ROWS for fold in folds]
        for (name, _, start, extra), fold in tqdm(jobs, desc="fine-tuning (rows x folds)", unit="run"):
            source = {
                "tapt": ["--model_name_or_path", tapt[fold]],
                "pretrained": ["--model_name_or_path", pretrained],
                "scratch": ["--preset", s["preset"], "--tokenizer_name_or_path", pretrained],
            }[start]
            slug = (
                name.lower().replace(" ", "_").replace("(", "").replace(")", "").replace("+", "plus").replace("/", "")
            )
            self.step(
                f"finetune_{slug}_fold{fold}", "run_finetune",
                [*source, *self.task(), *self.training(), "--test_fold", fold, *extra, "--num_train_epochs", s["finetune_epochs"],
                 "--save_total_limit", "1", "--freeze_audio_tower", "true", "--cache_tower_outputs", "true",
                 "--per_device_train_batch_size", s["finetune_batch_size"]],
                runs / slug / f"fold{fold}",
            )  # fmt: skip
        for name, _, _, _ in ROWS:
            slug = (
                name.lower().replace(" ", "_").replace("(", "").replace(")", "").replace("+", "plus").replace("/", "")
            )
            fold_results = [json.loads((runs / slug / f"fold{f}" / "results.json").read_text()) for f in folds]
            folds_flat = [r["folds"][0] for r in fold_results]
            results[name] = {
                "protocol": fold_results[0]["protocol"],
                "aggregate": aggregate([r["flat_metrics"] for r in folds_flat]),
                "aggregate_by_item_type": {
                    item_type: aggregate([r["by_item_type"][item_type] for r in folds_flat])
                    for item_type in folds_flat[0]["by_item_type"]
                },
                "folds": folds_flat,
                "path": str(runs / slug / f"fold{folds[0]}" / "results.json"),
                "model_dirs": [str(runs / slug / f"fold{f}" / f"fold_{f}") for f in folds],
            }
        return results

    # --- 4. report ---------------------------------------------------------------------------------------------

    def ceilings(self, corpus, folds: list[int]) -> dict:
        test_rows = concatenate_datasets([corpus[f"session{fold}"] for fold in folds])
        return hub_datasets.synthetic_emotion_ceilings(test_rows.remove_columns("audio"))

    def write_report(self, results: dict, ceilings: dict, folds: list[int]) -> Path:
        out = self.output_dir
        table = report.markdown({name: {**r, "path": r["path"]} for name, r in results.items()})
        ours, paper = table.split("## The paper's published numbers", 1)
        lines = [
            "# CMT demo: the paper's protocol on the embedded synthetic corpus",
            "",
            f"**These are synthetic-corpus results with small, randomly initialised towers (the `{self.settings['preset']}` preset), "
            f"{len(folds)} speaker-independent folds (test sessions {', '.join(map(str, folds))}).** They show the "
            "code paths and how the models behave relative to each other and to the corpus's ceilings. They are "
            "not the paper's numbers: those need IEMOCAP / CMU-MOSEI, pretrained HuBERT and RoBERTa and GPUs "
            "(README, 'Reproduce the paper').",
            "",
            "Protocol of this demo (our choices, to fit a CPU budget of about half an hour): pretraining on "
            f"{self.settings['pretrain_utterances']} other synthetic utterances (seed 1, labels unused), TAPT on each "
            "fold's training split, then fine-tuning with the audio tower frozen: `run_finetune.py "
            "--freeze_audio_tower true --cache_tower_outputs true` runs the audio tower once and trains the text "
            "tower, the cross-modal layers and the head (the paper fine-tunes everything). Every row is fine-tuned "
            "the same way, so that no row depends on a part that cannot learn: the RoBERTa-only and Shallow-Fusion "
            "heads read the text tower's `<s>` state, which only fine-tuning can train. HuBERT-only, RoBERTa-only and "
            "Shallow-Fusion use the pretrained towers, as the paper's baselines use pretrained single-modal towers; "
            "CMT w/o PT has the same architecture as CMT with random towers.",
            "",
            ours.strip(),
            "",
            "## What the corpus allows by construction (Bayes-optimal accuracy, test rows of these folds)",
            "",
            "| items | text only | prosody only (utterance level) | text + prosody (shallow) | + word alignment (deep) |",
            "|---|---|---|---|---|",
            *[
                f"| {item_type} | "
                + " | ".join(
                    f"{ceilings[item_type][view]['accuracy']:.3f}"
                    for view in ("text", "prosody", "text+prosody", "text+prosody+alignment")
                )
                + " |"
                for item_type in ("global", "aligned", "all")
                if item_type in ceilings
            ],  # fmt: skip
            "",
            "## Captured fraction: how much of what its inputs allow each row reached",
            "",
            f"(score − {CHANCE}) / (ceiling − {CHANCE}), each row against the ceiling of the view its inputs carry "
            "(the table above, same test rows): RoBERTa-only text, HuBERT-only prosody, Shallow-Fusion text + prosody "
            "at utterance level, every CMT row text + prosody + word alignment. 1 = the Bayes-optimal classifier of "
            "that view, 0 = chance, – where the ceiling is chance. All items: UA; aligned / global items: accuracy.",
            "",
            "| run | inputs | UA | ceiling | captured | aligned acc. | ceiling | captured | global acc. | ceiling | "
            "captured |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *[
                f"| {name} | {row['view']} | "
                + " | ".join(
                    _captured_cell(row[item_type]) if item_type in row else "– | – | –"
                    for item_type in ("all", "aligned", "global")
                )
                + " |"
                for name, row in captured_table(results, ceilings).items()
            ],  # fmt: skip
            "",
            "## Reading the results",
            "",
            *observations(results),
            "",
            "Caveats of this protocol, whatever the numbers above say: the audio tower stays frozen in fine-tuning "
            "(HuBERT-only's head reads what pretraining put there), and its only self-supervision is CMT's "
            "cross-modal pretraining from random weights, not the single-modal pretraining the paper's towers had. "
            "The captured fractions say how far each row is from what its inputs allow; half an hour of CPU training "
            "of 0.5 M-parameter random towers is far from the pretrained towers of the paper. Differences within one "
            "standard deviation over three folds are not evidence either way.",
            "",
            "## The paper's published numbers" + paper,
        ]
        path = out / "results.md"
        path.write_text("\n".join(lines))
        report.plot_bars(results, "ua", out / "bars_ua.png")
        report.plot_learning_curves(
            {name: {**r, "folds": [{"fold": folds[0]}]} for name, r in results.items()},
            "ua",
            out / "learning_curves.png",
        )
        return path

    def best_model(self, results: dict) -> tuple[str, Path]:
        name = max(CMT_ROWS, key=lambda n: results[n]["aggregate"]["ua"]["mean"])
        run = results[name]
        best_fold = int(np.argmax([fold["flat_metrics"]["ua"] for fold in run["folds"]]))
        source = Path(run["model_dirs"][best_fold])
        target = self.output_dir / "best_model"
        if target.exists():
            shutil.rmtree(target)
        target.mkdir()
        for path in source.iterdir():
            if (
                path.is_file()
                and path.suffix in (".json", ".safetensors", ".py", ".txt", ".model")
                and path.name != "results.json"
            ):
                shutil.copy2(path, target / path.name)
        summary = {"protocol": run["protocol"], "aggregate": run["aggregate"]}
        write_model_card(target, summary, hub_model_id=f"cmt-demo-{name.lower().replace(' ', '-')}")
        return name, target

    def explain(self, results: dict, best: Path, corpus, folds: list[int]) -> list[Path]:
        import explain as explain_script
        from transformers import AutoModelForSequenceClassification, AutoProcessor

        test = corpus[f"session{folds[0]}"]
        aligned = [i for i, t in enumerate(test["item_type"]) if t == "aligned"] or [0]
        row = test[aligned[0]]
        audio = {
            "array": np.asarray(row["audio"]["array"], dtype=np.float32),
            "sampling_rate": row["audio"]["sampling_rate"],
        }
        figures = []
        pooler_dir = Path(results["CMT + layer pooler"]["model_dirs"][0])
        for name, folder in (("best_cmt", best), ("layer_pooler_cmt", pooler_dir)):
            model = AutoModelForSequenceClassification.from_pretrained(folder)
            processor = AutoProcessor.from_pretrained(folder)
            explanation = explain_script.explain(model, processor, audio, row["text"])
            explain_script.plot(explanation, self.output_dir / f"explain_{name}.png")
            (self.output_dir / f"explain_{name}.json").write_text(json.dumps(explanation, indent=1))
            figures.append(self.output_dir / f"explain_{name}.png")
        return figures

    # --- 5. reload and predict ---------------------------------------------------------------------------------

    def held_out_predictions(self, best: Path, corpus, folds: list[int], count: int = 6) -> list[dict]:
        import torch
        from torchcodec.encoders import AudioEncoder

        samples_dir = self.output_dir / "samples"
        samples_dir.mkdir(exist_ok=True)
        test = corpus[f"session{folds[0]}"]
        names = test.features["label"].names
        samples = []
        for index in range(min(count, len(test))):
            row = test[index]
            path = samples_dir / f"{row['id']}.wav"
            waveform = torch.tensor(np.asarray(row["audio"]["array"], dtype=np.float32))[None]
            AudioEncoder(waveform, sample_rate=row["audio"]["sampling_rate"]).to_file(str(path))
            samples.append(
                {
                    "path": str(path.resolve()),
                    "text": row["text"],
                    "true": names[row["label"]],
                    "item_type": row["item_type"],
                }
            )
        environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
        completed = subprocess.run(
            [sys.executable, "-c", PREDICT, str(best.resolve()), json.dumps(samples)],
            capture_output=True, text=True, env=environment, cwd=self.output_dir,
        )  # fmt: skip
        if completed.returncode != 0:
            raise RuntimeError(f"Reloading {best} with the pipeline failed:\n{completed.stderr[-2000:]}")
        return [json.loads(line) for line in completed.stdout.strip().splitlines() if line.startswith("{")]


def observations(results: dict) -> list[str]:
    """Plain statements of how the rows compare (whatever the ordering is), with the spread over folds."""

    def ua(name, item_type=None):
        group = results[name]["aggregate_by_item_type"].get(item_type, {}) if item_type else results[name]["aggregate"]
        metric = "wa" if item_type else "ua"
        values = group.get(metric, {"mean": float("nan"), "std": float("nan")})
        return values["mean"], values["std"]

    def compare(first, second, item_type=None):
        (a, a_std), (b, b_std) = ua(first, item_type), ua(second, item_type)
        where = f" on {item_type} items (accuracy)" if item_type else " (UA)"
        margin = "beyond" if abs(a - b) > max(a_std, b_std) else "within"
        return (
            f"- {first} vs {second}{where}: {a:.3f} ± {a_std:.3f} vs {b:.3f} ± {b_std:.3f} "
            f"(difference {a - b:+.3f}, {margin} one standard deviation over folds)."
        )

    return [
        compare("CMT (PT + TAPT)", "HuBERT-only"),
        compare("CMT (PT + TAPT)", "RoBERTa-only"),
        compare("CMT (PT + TAPT)", "Shallow-Fusion"),
        compare("CMT (PT + TAPT)", "Shallow-Fusion", "aligned"),
        compare("CMT (PT + TAPT)", "Shallow-Fusion", "global"),
        compare("CMT (PT + TAPT)", "CMT w/o PT"),
        compare("CMT + layer pooler", "CMT (PT + TAPT)"),
        compare("CMT + ortho", "CMT (PT + TAPT)"),
    ]


def _quiet_logging():
    """The steps' logs go to demo_output/logs/*.log through the root logger, not to the console."""
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()
    datasets.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()  # weight loading / shard writing bars of every step
    for name in ("transformers", "run_finetune", "run_pretrain", "fit_codebook", "cmt_training", "__main__"):
        logging.getLogger(name).setLevel(logging.INFO)


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="demo_output", type=Path)
    parser.add_argument("--smoke", action="store_true", help="Tiny everything: checks the code path in seconds.")
    parser.add_argument("--fresh", action="store_true", help="Redo every step instead of reusing cached results.")
    args = parser.parse_args(argv)
    settings = SETTINGS["smoke" if args.smoke else "full"]
    folds = [int(fold) for fold in settings["folds"].split(",")]
    started = time.time()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(  # before any step, so the scripts' own basicConfig calls leave the console alone
        level=logging.INFO,
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        handlers=[logging.FileHandler(args.output_dir / "demo.log", mode="w")],
    )
    _quiet_logging()
    demo = Demo(args.output_dir, settings, args.fresh)
    print(f"CMT demo ({'smoke' if args.smoke else 'full'}): output in {args.output_dir}/, logs in {demo.logs}/")

    with tqdm(total=6, desc="demo", unit="step", position=0) as progress:
        progress.set_postfix_str("corpora")
        corpus, pairs_dir = demo.corpora()
        progress.update()
        progress.set_postfix_str("pretraining + TAPT")
        pretrained, tapt = demo.pretrain(pairs_dir, folds)
        progress.update()
        progress.set_postfix_str("fine-tuning")
        results = demo.finetune(pretrained, tapt, folds)
        progress.update()
        progress.set_postfix_str("report")
        ceilings = demo.ceilings(corpus, folds)
        report_path = demo.write_report(results, ceilings, folds)
        best_name, best = demo.best_model(results)
        figures = demo.explain(results, best, corpus, folds)
        progress.update()
        progress.set_postfix_str("reload + predict")
        predictions = demo.held_out_predictions(best, corpus, folds)
        progress.update()
        write_json(
            args.output_dir / "results.json",
            {
                "mode": "smoke" if args.smoke else "full",
                "settings": settings,
                "rows": {name: {k: v for k, v in r.items() if k != "path"} for name, r in results.items()},
                "ceilings": ceilings,
                "captured": captured_table(results, ceilings),
                "best_model": {"row": best_name, "path": str(best)},
                "predictions": predictions,
                "timings_s": {**demo.timings, "total": round(time.time() - started, 1)},
            },
        )
        progress.update()

    print(f"\n{report_path.read_text().split('## What the corpus allows')[0]}")
    print("Held-out predictions from the reloaded pipeline (fresh process, trust_remote_code=True):")
    for prediction in predictions:
        mark = "✓" if prediction["predicted"] == prediction["true"] else "✗"
        print(f"  {mark} true {prediction['true']:<8} predicted {prediction['predicted']:<8} "
              f"({prediction['score']:.2f}) [{prediction['item_type']}] {prediction['text']}")  # fmt: skip
    print(f"\nDone in {time.time() - started:.0f} s. Written to {args.output_dir}/:")
    print(f"  results.md, results.json, bars_ua.png, learning_curves.png, {', '.join(p.name for p in figures)}")
    print(f"  best_model/ ({best_name}: config, safetensors, processor, remote code, pipeline, model card)")


if __name__ == "__main__":
    main()
