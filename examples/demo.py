"""The whole paper, end to end, on the embedded synthetic corpus: `make demo`.

1. builds (or reuses) the synthetic emotional-speech corpus and a separate unlabelled corpus (another seed);
2. pretrains the two single-modal towers on the unlabelled corpus with `run_tower_pretrain.py` (HuBERT-style masked
   frame prediction, RoBERTa-style MLM), saved as plain `HubertModel` / `RobertaForMaskedLM` checkpoints: the
   synthetic corpus's `facebook/hubert-base-ls960` and `FacebookAI/roberta-base`;
3. starts CMT from those towers (`from_audio_text_pretrained`), fits the unit codebook and runs CMT's cross-modal
   pretraining (stage 1, then stage 2) with `run_pretrain.py`, then TAPT on each fold's training split;
4. fine-tunes with `run_finetune.py` on speaker-independent folds, every row from the same towers and with the same
   budget: CMT (PT + TAPT), CMT without cross-modal pretraining, HuBERT-only, RoBERTa-only, Shallow-Fusion (the
   paper's Table 1 rows) and, in the smoke mode and the study, CMT with the layer pooler and with the
   orthogonality loss (Table 4);
5. writes `demo_output/`: results.md (the paper's table layout with our mean ± std, the corpus's by-construction
   ceilings and each row's captured fraction of its own ceiling, the paper's numbers apart and labelled),
   results.json, PNG plots, and the best CMT in Hub layout;
6. reloads that folder in a fresh process with `pipeline("audio-text-classification", trust_remote_code=True)` and
   prints predictions for held-out utterances next to their true labels.

The towers are small (the `demo` preset's sizes, 0.5 M parameters in all): these are synthetic-corpus results that
show the code paths and how the models behave against what the corpus allows, not the paper's numbers, which need
the real corpora, the Hub towers and GPUs (README, "Reproduce the paper"). `examples/study.py` (`make study`) runs
the same protocol on all five folds with two seeds, a learning-rate search and the paper's figures. Finished steps
are cached in the output folder (a killed run continues where it stopped); `--fresh` redoes all.

    python examples/demo.py                   # about 10 minutes on 2 CPU cores (README, "The demo")
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
import multiprocessing
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
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


# What runs, by mode. `rows` names entries of ROWS; `learning_rates` is the search every row gets (selected per fold
# on that fold's validation split, never on its test split); `seeds` are fine-tuning seeds.
SETTINGS = {
    "full": {
        "num_utterances": 1000,
        "pretrain_utterances": 1000,
        "folds": "1",
        "seeds": [0],
        "learning_rates": [2e-3],
        "rows": ["CMT (PT + TAPT)", "CMT w/o PT", "HuBERT-only", "RoBERTa-only", "Shallow-Fusion"],
        "preset": "demo",
        "num_cross_layers": 2,
        "audio_tower_epochs": 4,
        "text_tower_epochs": 10,
        "pretrain_epochs": 2,
        "tapt_epochs": 2,
        "finetune_epochs": 10,
        "finetune_batch_size": 32,
        "batch_size": 16,
        "learning_rate": 2e-3,
        "max_audio_seconds": 6,
    },
    "smoke": {
        "num_utterances": 40,
        "pretrain_utterances": 20,
        "folds": "1",
        "seeds": [0],
        "learning_rates": [2e-3],
        "rows": [
            "CMT (PT + TAPT)",
            "CMT w/o PT",
            "HuBERT-only",
            "RoBERTa-only",
            "Shallow-Fusion",
            "CMT + layer pooler",
            "CMT + ortho",
        ],  # fmt: skip
        "preset": "tiny",
        "num_cross_layers": 2,
        "audio_tower_epochs": 1,
        "text_tower_epochs": 1,
        "pretrain_epochs": 1,
        "tapt_epochs": 1,
        "finetune_epochs": 1,
        "finetune_batch_size": 8,
        "batch_size": 8,
        "learning_rate": 2e-3,
        "max_audio_seconds": 3,
    },
}


@dataclass(frozen=True)
class Row:
    """A fine-tuning row: its name, the paper row it stands for, where it starts ("tapt": CMT after cross-modal
    pretraining and the fold's TAPT; "towers": the two single-modal towers, no cross-modal pretraining), the extra
    `run_finetune.py` arguments, and the view of the corpus its inputs carry (`synthetic_emotion_ceilings`)."""

    name: str
    paper_row: str
    start: str
    extra: tuple[str, ...] = ()
    view: str = "text+prosody+alignment"

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "_", self.name.lower().replace("+", "plus")).strip("_")


ROWS = [
    Row("CMT (PT + TAPT)", "CMT", "tapt"),
    Row("CMT w/o PT", "CMT-4 w/o PT", "towers"),
    Row("HuBERT-only", "HuBERT", "towers", ("--modality", "audio", "--num_cross_layers", "0"), "prosody"),
    Row("RoBERTa-only", "RoBERTa", "towers", ("--modality", "text", "--num_cross_layers", "0"), "text"),
    Row("Shallow-Fusion", "Shallow-Fusion", "towers", ("--num_cross_layers", "0"), "text+prosody"),
    Row("CMT + layer pooler", "CMT-4 PT + Layer pooler", "tapt", ("--pooling", "layer_pooler")),
    Row("CMT + ortho", "CMT-4 PT + Ortho", "tapt", ("--ortho_weight", "0.1")),
]
ROWS_BY_NAME = {row.name: row for row in ROWS}
CMT_ROWS = ("CMT (PT + TAPT)", "CMT + layer pooler", "CMT + ortho")
# What each row's inputs carry, as a view of `hub_datasets.synthetic_emotion_ceilings`: the single-modal rows see one
# modality, Shallow-Fusion both at utterance level, every CMT row (with or without pretraining) both word by word.
ROW_VIEWS = {row.name: row.view for row in ROWS if row.view != "text+prosody+alignment"}
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
# Bumped when the steps change in a way the settings do not show (checked against an output folder's settings.json).
PROTOCOL_VERSION = 2

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


@dataclass(frozen=True)
class Step:
    """A cached step: an example script's `main(arguments + ["--output_dir", output])`, done once `output / done`
    exists."""

    name: str
    module: str
    arguments: tuple
    output: Path
    done: str = "results.json"


@dataclass
class RowRequest:
    """One row to fine-tune on some folds (`Demo.finetune_rows`): where its runs start (`sources`), extra
    `run_finetune.py` arguments, the task, its run folders' name (`slug`, default the row's) and seeds (default the
    mode's)."""

    row: Row
    folds: list
    sources: dict
    extra: tuple = ()
    task: str = "synthetic_emotion"
    slug: str | None = None
    seeds: list | None = None


class Demo:
    def __init__(self, output_dir: Path, settings: dict, fresh: bool, jobs: int = 1):
        self.output_dir, self.settings, self.fresh = output_dir, settings, fresh
        self.logs = output_dir / "logs"
        self.cache = output_dir / "cache"
        self.runs = output_dir / "runs"
        self.timings: dict[str, float] = {}
        # Fine-tuning runs in `jobs` worker processes at once, each with its share of the cores: a run of the demo
        # preset is too small to use two threads (README, "The study": one thread each, two at once, twice the runs).
        self.jobs = jobs
        self.threads_per_job = max(1, available_cores() // jobs)
        self._pool: ProcessPoolExecutor | None = None
        self.check_settings()
        for folder in (self.logs, self.cache):
            folder.mkdir(parents=True, exist_ok=True)

    def check_settings(self):
        """Cached steps are reused by folder name only, so a folder is reused only with the settings it was made
        with (`settings.json`; the learning rates aside: their runs have their own folders). Anything else is
        refused before a step runs, unless `--fresh` redoes every step."""
        path = self.output_dir / "settings.json"
        wanted = {"protocol": PROTOCOL_VERSION, **{k: v for k, v in self.settings.items() if k != "learning_rates"}}
        wanted = json.loads(json.dumps(wanted))
        if not self.fresh:
            if path.is_file():
                recorded = json.loads(path.read_text())
                changed = sorted(key for key in {*wanted, *recorded} if wanted.get(key) != recorded.get(key))
                if changed:
                    raise SystemExit(
                        f"{self.output_dir} holds runs made with other settings ({', '.join(changed)} differ); their "
                        "cached steps would be mixed with this run's. Pass --fresh to redo every step there, or "
                        "choose another --output_dir."
                    )
            elif (self.output_dir / "runs").is_dir():
                raise SystemExit(
                    f"{self.output_dir} holds runs of an earlier version of this script (no settings.json); their "
                    "cached steps would be mixed with this run's. Pass --fresh to redo every step there, or choose "
                    "another --output_dir."
                )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(wanted, indent=2) + "\n")

    def task(self, task: str = "synthetic_emotion") -> list[str]:
        return ["--task", task, "--synthetic_size", str(self.settings["num_utterances"]),
                "--cache_dir", str(self.cache)]  # fmt: skip

    def training(self, seed: int = 0, candidate: float | str | None = None) -> list[str]:
        s = self.settings
        head, rest = candidate_rates(candidate if candidate is not None else s["learning_rate"])
        per_part = [] if rest is None else ["--tower_learning_rate", str(rest), "--cross_learning_rate", str(rest)]
        return [
            "--per_device_train_batch_size", str(s["batch_size"]), "--per_device_eval_batch_size", "32",
            "--learning_rate", str(head), *per_part, "--max_audio_seconds", str(s["max_audio_seconds"]),
            "--warmup_steps", "10", "--seed", str(seed), "--log_level", "warning", "--dataloader_pin_memory", "false",
            "--logging_steps", "20", "--disable_tqdm", "true",
        ]  # fmt: skip

    def step(self, name: str, module: str, arguments: list, output: Path, done: str = "results.json") -> Path:
        """Runs an example script's main() in this process unless its results (`done`) are already there."""
        spec = Step(name, module, tuple(arguments), output, done)
        if not self._pending(spec):
            return output
        self._start(spec)
        try:
            self.timings[name] = run_script(module, self._argv(spec), self.logs / f"{name}.log")
        except Exception as error:
            raise RuntimeError(f"Demo step {name!r} failed; its log is {self.logs / (name + '.log')}.") from error
        return output

    def steps(self, specs: list[Step], progress=None) -> list[Path]:
        """Runs the steps whose results are not there yet, `jobs` at a time in worker processes (in this process when
        `jobs` is 1), and returns their output folders in order. A failed step stops the others and is named."""
        unique = list({spec.output: spec for spec in specs}.values())  # a run asked for twice runs once
        pending = [spec for spec in unique if self._pending(spec)]
        if progress is not None:
            progress.update(len(specs) - len(pending))
        if self.jobs <= 1:
            for spec in pending:
                self.step(spec.name, spec.module, spec.arguments, spec.output, spec.done)
                if progress is not None:
                    progress.update()
            return [spec.output for spec in specs]
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                initargs=(self.threads_per_job,),
            )  # fmt: skip
        futures = {}
        for spec in pending:
            self._start(spec)
            log = self.logs / f"{spec.name}.log"
            futures[self._pool.submit(run_script, spec.module, self._argv(spec), log)] = spec
        remaining = set(futures)
        while remaining:
            finished, remaining = wait(remaining, return_when=FIRST_EXCEPTION)
            for future in finished:
                spec = futures[future]
                try:
                    self.timings[spec.name] = future.result()
                except Exception as error:
                    for other in remaining:
                        other.cancel()
                    self.close()
                    log = self.logs / f"{spec.name}.log"
                    raise RuntimeError(f"Demo step {spec.name!r} failed; its log is {log}.") from error
                if progress is not None:
                    progress.update()
        return [spec.output for spec in specs]

    def close(self):
        """Stops the worker processes (a later `steps` starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _pending(self, spec: Step) -> bool:
        return self.fresh and spec.name not in self.timings or not (spec.output / spec.done).is_file()

    def _start(self, spec: Step):
        if spec.output.exists():
            shutil.rmtree(spec.output)  # an unfinished earlier attempt of this demo step, never user data

    @staticmethod
    def _argv(spec: Step) -> list[str]:
        return [*map(str, spec.arguments), "--output_dir", str(spec.output)]

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

    def prepare(self, folds: list[int], progress) -> tuple:
        """Steps 1-3, one progress update each: the corpus, the cross-modal pretrained CMT and the starting points
        of the fine-tuning rows (`{"towers": arguments, "tapt": {fold: checkpoint}}`)."""
        progress.set_postfix_str("corpora")
        corpus, pairs_dir = self.corpora()
        progress.update()
        progress.set_postfix_str("single-modal towers")
        towers = self.towers(pairs_dir)
        progress.update()
        progress.set_postfix_str("cross-modal pretraining + TAPT")
        pretrained = self.pretrain(pairs_dir, towers)
        tapt = self.tapt(pretrained, folds)
        progress.update()
        return corpus, pretrained, {"towers": towers, "tapt": tapt}

    # --- 2. single-modal towers --------------------------------------------------------------------------------

    def towers(self, pairs_dir: Path) -> list[str]:
        """The audio and text towers pretrained on the unlabelled pairs; returns the arguments that start a CMT
        from them (`--audio_model_name_or_path ... --text_model_name_or_path ...`)."""
        s = self.settings
        pairs = ["--task", "audio_text_pairs", "--data_dir", str(pairs_dir), "--cache_dir", str(self.cache)]
        common = ["--preset", s["preset"], *pairs, "--save_strategy", "no", "--warmup_steps", "30",
                  "--learning_rate", "2e-3", "--seed", "0", "--disable_tqdm", "true", "--log_level", "warning",
                  "--logging_steps", "20", "--dataloader_pin_memory", "false"]  # fmt: skip
        audio = self.step(
            "tower_audio", "run_tower_pretrain",
            ["--tower", "audio", *common, "--max_audio_seconds", s["max_audio_seconds"],
             "--num_train_epochs", s["audio_tower_epochs"], "--per_device_train_batch_size", 16],
            self.runs / "towers" / "hubert", done="tower_results.json",
        )  # fmt: skip
        text = self.step(
            "tower_text", "run_tower_pretrain",
            ["--tower", "text", *common, "--num_train_epochs", s["text_tower_epochs"],
             "--per_device_train_batch_size", 32],
            self.runs / "towers" / "roberta", done="tower_results.json",
        )  # fmt: skip
        return ["--audio_model_name_or_path", str(audio), "--text_model_name_or_path", str(text)]

    # --- 3. cross-modal pretraining ----------------------------------------------------------------------------

    def pretrain(self, pairs_dir: Path, towers: list[str]) -> Path:
        s = self.settings
        pairs = ["--task", "audio_text_pairs", "--data_dir", str(pairs_dir), "--cache_dir", str(self.cache)]
        codebook = self.runs / "codebook"
        if not (codebook / "model.safetensors").is_file() or self.fresh:
            if codebook.exists():
                shutil.rmtree(codebook)
            started = time.time()
            script = importlib.import_module("fit_codebook")
            # The codebook checkpoint starts pretraining, so it carries the heads of the losses pretraining uses.
            argv = [*towers, "--num_cross_layers", str(s["num_cross_layers"]), *pairs, "--codebook_size", "32",
                    "--config_overrides", f"matching_loss_weight={MATCHING_LOSS_WEIGHT}", "--disable_tqdm", "true",
                    "--max_audio_seconds", str(s["max_audio_seconds"]), "--output_dir", str(codebook)]  # fmt: skip
            with (self.logs / "codebook.log").open("w") as handle, contextlib.redirect_stdout(handle):
                script.main(argv)
            self.timings["codebook"] = round(time.time() - started, 1)
        return self.step(
            "pretrain", "run_pretrain",
            ["--model_name_or_path", codebook, *pairs, *self.training(), "--stage", "both", "--matching_loss_weight", MATCHING_LOSS_WEIGHT,
             "--num_train_epochs", s["pretrain_epochs"]],
            self.runs / "pretrain",
        )  # fmt: skip

    def tapt(self, pretrained: Path, folds: list[int], task: str = "synthetic_emotion") -> dict[int, Path]:
        """Task-adaptive pretraining (stage 2 on the fold's training split, labels unused) for each fold."""
        prefix = "tapt" if task == "synthetic_emotion" else f"tapt_{task}"
        arguments = ["--model_name_or_path", pretrained, *self.task(task), *self.training(), "--stage", "2",
                     "--num_train_epochs", self.settings["tapt_epochs"]]  # fmt: skip
        specs = [
            Step(
                f"{prefix}_{fold_tag(fold)}",
                "run_pretrain",
                (*arguments, *fold_arguments(fold)),
                self.runs / f"{prefix}_{fold_tag(fold)}",
            )
            for fold in folds
        ]
        return dict(zip(folds, self.steps(specs)))

    # --- 4. fine-tuning ----------------------------------------------------------------------------------------

    def finetune_step(self, request: RowRequest, fold: int, seed: int, candidate: float | str) -> Step:
        """One fine-tuning run of a row (cached in its own folder)."""
        s, row = self.settings, request.row
        source = {
            "tapt": ["--model_name_or_path", request.sources["tapt"][fold]],
            "towers": [*request.sources["towers"], "--num_cross_layers", str(s["num_cross_layers"])],
        }[row.start]
        slug = request.slug or row.slug
        tag = fold_tag(fold) + (f"_seed{seed}" if seed else "") + "_" + candidate_tag(candidate)
        return Step(
            f"finetune_{slug}_{tag}", "run_finetune",
            (*source, *self.task(request.task), *self.training(seed, candidate), *fold_arguments(fold), *row.extra,
             *request.extra, "--num_train_epochs", s["finetune_epochs"], "--save_total_limit", "1",
             "--freeze_audio_tower", "true", "--cache_tower_outputs", "true", "--per_device_train_batch_size",
             s["finetune_batch_size"]),
            self.runs / slug / tag,
        )  # fmt: skip

    def finetune_rows(self, requests: list[RowRequest], progress=None) -> list[dict]:
        """Rows on their folds and seeds, returning each row's aggregated results. With several learning-rate
        candidates, each fold's is the one with the best validation score at the row's first seed; the other seeds
        reuse it. The runs go in two waves, each `jobs` at a time: every candidate at the first seed, then the other
        seeds."""
        candidates = self.settings["learning_rates"]
        seeds = [request.seeds or self.settings["seeds"] for request in requests]
        first = {
            (index, fold, candidate): self.finetune_step(request, fold, seeds[index][0], candidate)
            for index, request in enumerate(requests)
            for fold in request.folds
            for candidate in candidates
        }
        self.steps(list(first.values()), progress)
        chosen = {}
        for index, request in enumerate(requests):
            for fold in request.folds:
                scored = [(_validation_score(first[index, fold, c].output), c) for c in candidates]
                chosen[index, fold] = max(scored, key=lambda pair: pair[0])[1] if len(scored) > 1 else scored[0][1]
        later = {
            (index, fold, seed): self.finetune_step(request, fold, seed, chosen[index, fold])
            for index, request in enumerate(requests)
            for fold in request.folds
            for seed in seeds[index][1:]
        }
        self.steps(list(later.values()), progress)
        results = []
        for index, request in enumerate(requests):
            runs = []
            for fold in request.folds:
                runs.append(first[index, fold, chosen[index, fold]].output)
                runs.extend(later[index, fold, seed].output for seed in seeds[index][1:])
            labels = {fold: candidate_label(chosen[index, fold]) for fold in request.folds}
            results.append(collect_runs(runs, labels))
        return results

    def finetune(self, sources: dict, folds: list[int]) -> dict[str, dict]:
        rows = [ROWS_BY_NAME[name] for name in self.settings["rows"]]
        total = len(rows) * len(folds) * (len(self.settings["learning_rates"]) + len(self.settings["seeds"]) - 1)
        with tqdm(total=total, desc="fine-tuning (rows x folds x runs)", unit="run") as progress:
            results = self.finetune_rows([RowRequest(row, folds, sources) for row in rows], progress)
        return {row.name: result for row, result in zip(rows, results)}

    # --- 5. report ---------------------------------------------------------------------------------------------

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
            headline(self.settings, folds),
            "",
            protocol_paragraph(self.settings),
            "",
            *learning_rate_lines(results, self.settings),
            ours.strip(),
            "",
            *ceilings_lines(ceilings),
            "",
            *captured_lines(results, ceilings),
            "",
            "## Reading the results",
            "",
            *observations(results),
            "",
            CAVEATS,
            "",
            "`make study` (`examples/study.py`) runs this protocol on all five folds with two seeds and a "
            "learning-rate search ({2e-3, 1e-2/2e-3}, chosen per fold on validation), adds the Table 4 rows, the "
            "label-fraction (Figure 3) and hidden-state (Figure 2) analogues and the sentiment config.",
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
        name = max((n for n in CMT_ROWS if n in results), key=lambda n: results[n]["aggregate"]["ua"]["mean"])
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
        explained = [("best_cmt", best)]
        if "CMT + layer pooler" in results:
            explained.append(("layer_pooler_cmt", Path(results["CMT + layer pooler"]["model_dirs"][0])))
        for name, folder in explained:
            model = AutoModelForSequenceClassification.from_pretrained(folder)
            processor = AutoProcessor.from_pretrained(folder)
            explanation = explain_script.explain(model, processor, audio, row["text"])
            explain_script.plot(explanation, self.output_dir / f"explain_{name}.png")
            (self.output_dir / f"explain_{name}.json").write_text(json.dumps(explanation, indent=1))
            figures.append(self.output_dir / f"explain_{name}.png")
        return figures

    # --- 6. reload and predict ---------------------------------------------------------------------------------

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


def headline(settings: dict, folds: list[int]) -> str:
    return (
        f"**These are synthetic-corpus results with small towers (the `{settings['preset']}` preset's sizes) "
        f"pretrained here on unlabelled synthetic speech, {_count(len(folds), 'speaker-independent fold')} (test "
        f"session{'s' if len(folds) > 1 else ''} {', '.join(map(str, folds))}) x {_count(len(settings['seeds']), 'seed')}.** "
        "They show how the models behave "
        "relative to each other and to the corpus's ceilings. They are not the paper's numbers: those need IEMOCAP / "
        "CMU-MOSEI, the Hub's HuBERT and RoBERTa and GPUs (README, 'Reproduce the paper')."
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'s' if number != 1 else ''}"


def protocol_paragraph(settings: dict) -> str:
    s = settings
    rates = ", ".join(candidate_label(candidate) for candidate in s["learning_rates"])
    per_part = (
        " (a/b: the classification head at a; the text tower and the cross-modal stack, its text projection and "
        "layer pooler included, at b)"
        if any(candidate_rates(candidate)[1] is not None for candidate in s["learning_rates"])
        else ""
    )
    search = (
        f"learning rate searched over {{{rates}}}{per_part} for every row, chosen per fold by the best validation "
        "UA at the first seed (the test split is never looked at)"
        if len(s["learning_rates"]) > 1
        else f"learning rate {rates}{per_part} for every row (no search)"
    )
    return (
        f"Protocol (our choices, to fit a CPU budget). Towers: the `{s['preset']}` preset's HuBERT and RoBERTa "
        f"shapes pretrained on {s['pretrain_utterances']} unlabelled synthetic utterances (seed 1, labels never "
        f"read) with `run_tower_pretrain.py`: the audio tower by masked frame prediction "
        f"({_count(s['audio_tower_epochs'], 'epoch')}; MFCC k-means units, log-F0 and log-energy bins), the text "
        f"tower by MLM ({_count(s['text_tower_epochs'], 'epoch')}). Every row starts from these two towers, as the paper's rows start from the Hub's. CMT (PT + TAPT) "
        f"and its Table 4 variants add the 32-unit codebook, stage 1 + 2 on the same pairs "
        f"({s['pretrain_epochs']} epochs) and TAPT on the fold's training split ({s['tapt_epochs']} epochs); CMT w/o "
        f"PT is the same architecture ({s['num_cross_layers']} cross-modal layers) started from the towers. Every "
        "row is fine-tuned the same way: the audio tower frozen and its outputs cached (`--freeze_audio_tower true "
        "--cache_tower_outputs true`), the text tower, the cross-modal layers and the head training, "
        f"{s['finetune_epochs']} epochs, batches of {s['finetune_batch_size']}, {search}, the best validation "
        f"epoch tested; audio cut at {s['max_audio_seconds']:g} s. Seeds {', '.join(map(str, s['seeds']))}: mean ± "
        "std below are over all fold x seed runs."
    )


CAVEATS = (
    "Caveats of this protocol, whatever the numbers above say: the audio tower stays frozen in fine-tuning (README, "
    "'The study': an earlier probe found on one fold that training it does not change the ordering). The 'prosody' "
    "ceiling counts the "
    "prosody level alone; the audio also carries the words and their durations, so an audio-only row can exceed it "
    "a little. Differences within one standard deviation over the runs are not evidence either way."
)


def learning_rate_lines(results: dict, settings: dict) -> list[str]:
    """With a search, the rate each row got on each fold (chosen on that fold's validation split)."""
    if len(settings["learning_rates"]) < 2:
        return []
    return [
        "Learning rate chosen per fold on validation: "
        + "; ".join(
            f"{name} " + ", ".join(f"fold {fold}: {rate}" for fold, rate in row["learning_rates"].items())
            for name, row in results.items()
        )
        + ".",
        "",
    ]


def ceilings_lines(ceilings: dict) -> list[str]:
    return [
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
        ],
    ]


def captured_lines(results: dict, ceilings: dict) -> list[str]:
    return [
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
        ],
    ]


def fold_tag(fold: int | None) -> str:
    """Folder name of a fold's runs; `None` is a task with fixed train / validation / test splits."""
    return "fixed" if fold is None else f"fold{fold}"


def fold_arguments(fold: int | None) -> list:
    return [] if fold is None else ["--test_fold", fold]


def _validation_score(run_dir: Path) -> float:
    """The run's best validation score, signed so that higher is better."""
    result = json.loads((run_dir / "results.json").read_text())
    score = result["folds"][0]["validation"]["best_metric"]
    return -score if "(min)" in result["protocol"]["checkpoint_selection"] else score


def collect_runs(run_dirs: list[Path], learning_rates: dict | None = None) -> dict:
    """Fine-tuning runs of one row (folds x seeds) aggregated: mean ± std of every test metric over the runs."""
    results = [json.loads((run / "results.json").read_text()) for run in run_dirs]
    flat = [result["folds"][0] for result in results]
    return {
        "protocol": results[0]["protocol"],
        "aggregate": aggregate([fold["flat_metrics"] for fold in flat]),
        "aggregate_by_item_type": {
            item_type: aggregate([fold["by_item_type"][item_type] for fold in flat])
            for item_type in flat[0]["by_item_type"]
        },
        "folds": flat,
        "seeds": [result["protocol"]["seed"] for result in results],
        "learning_rates": {str(fold): rate for fold, rate in (learning_rates or {}).items()},
        "path": str(run_dirs[0] / "results.json"),
        "model_dirs": [
            str(run / f"fold_{fold['fold']}" if fold["fold"] is not None else run) for run, fold in zip(run_dirs, flat)
        ],
    }


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
            f"(difference {a - b:+.3f}, {margin} one standard deviation over {len(results[first]['folds'])} runs)."
        )

    pairs = [
        ("CMT (PT + TAPT)", "HuBERT-only", None),
        ("CMT (PT + TAPT)", "RoBERTa-only", None),
        ("CMT (PT + TAPT)", "Shallow-Fusion", None),
        ("CMT (PT + TAPT)", "Shallow-Fusion", "aligned"),
        ("CMT (PT + TAPT)", "Shallow-Fusion", "global"),
        ("CMT (PT + TAPT)", "CMT w/o PT", None),
        ("CMT + layer pooler", "CMT (PT + TAPT)", None),
        ("CMT + ortho", "CMT (PT + TAPT)", None),
    ]
    return [compare(a, b, t) for a, b, t in pairs if a in results and b in results]


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, as `nproc` counts them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_script(module: str, argv: list[str], log: Path) -> float:
    """An example script's `main(argv)` (run_finetune, run_pretrain, ...), its console output and log records in
    `log`; returns the seconds it took. Runs in the demo's process or in one of its workers."""
    started = time.time()
    script = importlib.import_module(module)  # a script beside this one
    with log.open("w") as handle, contextlib.redirect_stdout(handle):
        handler = logging.StreamHandler(handle)
        logging.getLogger().addHandler(handler)
        try:
            script.main(argv)
        finally:
            logging.getLogger().removeHandler(handler)
            _quiet_logging()  # the scripts set library verbosity; keep the demo's console to its own bars
    return round(time.time() - started, 1)


def _init_worker(threads: int):
    """A worker process of `Demo.steps`: its share of the cores, and the demo's logging set-up."""
    import torch

    torch.set_num_threads(threads)
    # A root handler, as the demo's process has: the scripts' basicConfig calls then leave logging alone (their
    # records reach each step's log through run_script's handler, not a handler left behind on a closed log file).
    logging.basicConfig(level=logging.INFO, handlers=[logging.NullHandler()])
    _quiet_logging()


def _quiet_logging():
    """The steps' logs go to demo_output/logs/*.log through the root logger, not to the console."""
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()
    datasets.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()  # weight loading / shard writing bars of every step
    for name in ("transformers", "run_finetune", "run_pretrain", "fit_codebook", "cmt_training", "__main__"):
        logging.getLogger(name).setLevel(logging.INFO)


def candidate_rates(candidate: float | str) -> tuple[float, float | None]:
    """A learning-rate candidate: a number (every part at that rate) or "HEAD/REST" (the head at HEAD, the text
    tower and the cross-modal layers at REST: `--learning_rate HEAD --tower_learning_rate REST
    --cross_learning_rate REST`). Returns (head, rest or None)."""
    if isinstance(candidate, (int, float)):
        return float(candidate), None
    head, _, rest = candidate.partition("/")
    return float(head), float(rest) if rest else None


def candidate_label(candidate: float | str) -> str:
    head, rest = candidate_rates(candidate)
    return f"{head:g}" if rest is None else f"{head:g}/{rest:g}"


def candidate_tag(candidate: float | str) -> str:
    """The candidate's part of a run folder's name: lr0.002, lr0.01_rest0.002."""
    head, rest = candidate_rates(candidate)
    return f"lr{head:g}" if rest is None else f"lr{head:g}_rest{rest:g}"


def learning_rates(text: str) -> list[float | str]:
    """`--learning_rates 2e-3,1e-2/2e-3`: candidates (a number, or HEAD/REST), positive, each once."""
    values = text.split(",")
    try:
        parsed = [candidate_rates(value if "/" in value else float(value)) for value in values]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated learning rates such as 2e-3,1e-2/2e-3 (HEAD/REST: the head at HEAD, the text "
            f"tower and cross-modal layers at REST), got {text!r}"
        ) from None
    if any(head <= 0 or (rest is not None and rest <= 0) for head, rest in parsed) or len(set(parsed)) != len(parsed):
        raise argparse.ArgumentTypeError(f"expected distinct positive learning rates, got {text!r}")
    return [value if "/" in value else float(value) for value in values]


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def parse_arguments(argv, description: str, default_output: str, modes: dict, smoke_help: str):
    """The command line demo.py and study.py share: `--output_dir`, `--smoke`, `--fresh`, `--learning_rates`, `--jobs`.
    Returns the arguments and the mode's settings (with `--learning_rates` applied)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default=default_output, type=Path)
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument("--fresh", action="store_true", help="Redo every step instead of reusing cached results.")
    parser.add_argument(
        "--learning_rates",
        type=learning_rates,
        help="Comma-separated learning rates searched for every row, chosen per fold on validation (default: the "
        "mode's; finished runs at any of them are reused).",
    )
    parser.add_argument(
        "--jobs",
        type=positive_int,
        default=available_cores(),
        help="Fine-tuning (and TAPT) runs at once, each in its own process with its share of the cores (default: "
        f"the cores this process may use, {available_cores()} here); 1 runs every step in this process.",
    )
    args = parser.parse_args(argv)
    settings = modes["smoke" if args.smoke else "full"]
    if args.learning_rates:
        settings = {**settings, "learning_rates": args.learning_rates}
    return args, settings


def main(argv: list[str] | None = None):
    args, settings = parse_arguments(
        argv, __doc__, "demo_output", SETTINGS, "Tiny everything: checks the code path in seconds."
    )
    folds = [int(fold) for fold in settings["folds"].split(",")]
    started = time.time()
    demo = Demo(args.output_dir, settings, args.fresh, args.jobs)  # refuses a folder made with other settings, first
    logging.basicConfig(  # before any step, so the scripts' own basicConfig calls leave the console alone
        level=logging.INFO,
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        handlers=[logging.FileHandler(args.output_dir / "demo.log", mode="w")],
    )
    _quiet_logging()
    print(f"CMT demo ({'smoke' if args.smoke else 'full'}): output in {args.output_dir}/, logs in {demo.logs}/")

    with tqdm(total=7, desc="demo", unit="step", position=0) as progress:
        try:
            corpus, _, sources = demo.prepare(folds, progress)
            progress.set_postfix_str("fine-tuning")
            results = demo.finetune(sources, folds)
        finally:
            demo.close()
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
