"""`make demo`'s command (`python examples/demo.py`) in its smoke mode: every artefact exists and parses."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoProcessor, HubertModel, RobertaModel

import hub_datasets


REPO = Path(__file__).resolve().parents[2]


def test_demo_smoke_writes_every_artefact(tmp_path):
    output = tmp_path / "demo_output"
    completed = subprocess.run(
        [sys.executable, "examples/demo.py", "--smoke", "--output_dir", str(output)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    table = (output / "results.md").read_text()
    for row in (
        "CMT (PT + TAPT)",
        "CMT w/o PT",
        "HuBERT-only",
        "RoBERTa-only",
        "Shallow-Fusion",
        "CMT + layer pooler",
        "CMT + ortho",
    ):
        assert re.search(rf"^\| {re.escape(row)} \| (\d\.\d{{3}}( ± \d\.\d{{3}})? \| ){{6}}1 \|$", table, re.M), row
    assert "quoted, not measured here" in table and "What the corpus allows by construction" in table

    results = json.loads((output / "results.json").read_text())
    assert results["mode"] == "smoke" and len(results["rows"]) == 7
    for row in results["rows"].values():
        assert {"protocol", "aggregate", "aggregate_by_item_type", "folds"} <= set(row)
        assert row["protocol"]["seed"] == 0 and row["folds"][0]["cached_tower_outputs"] is True
    assert {"global", "aligned", "all"} <= set(results["ceilings"])
    # the captured fraction comes from each row's score and the ceilings function on the same test rows
    corpus = hub_datasets.load_synthetic_emotion(
        num_utterances=results["settings"]["num_utterances"], cache_dir=str(output / "cache")
    )
    test_rows = corpus[f"session{results['settings']['folds']}"].remove_columns("audio")
    ceilings = hub_datasets.synthetic_emotion_ceilings(test_rows)
    for item_type, views in ceilings.items():
        for view, metrics in views.items():
            assert results["ceilings"][item_type][view]["accuracy"] == pytest.approx(metrics["accuracy"])
    views = {"RoBERTa-only": "text", "HuBERT-only": "prosody", "Shallow-Fusion": "text+prosody"}
    for name, row in results["rows"].items():
        view = views.get(name, "text+prosody+alignment")
        captured = results["captured"][name]
        assert captured["view"] == view
        for item_type, score in [("all", row["aggregate"]["ua"]["mean"])] + [
            (t, row["aggregate_by_item_type"][t]["wa"]["mean"]) for t in ("aligned", "global")
        ]:
            ceiling = ceilings[item_type][view]["accuracy"]
            assert captured[item_type]["ceiling"] == pytest.approx(ceiling)
            if ceiling > 0.25:
                assert captured[item_type]["captured"] == pytest.approx((score - 0.25) / (ceiling - 0.25))
            else:  # nothing to capture (text alone on aligned items)
                assert captured[item_type]["captured"] is None
        line = re.search(rf"^\| {re.escape(name)} \| {re.escape(view)} \| (.*) \|$", table, re.M)
        assert line and line.group(1).split(" | ")[2] == f"{captured['all']['captured']:.2f}", name
    assert len(results["predictions"]) == 6
    assert all({"true", "predicted", "score", "text"} <= set(p) for p in results["predictions"])
    assert {"corpora", "tower_audio", "tower_text", "pretrain", "total"} <= set(results["timings_s"])

    # every row starts from the towers pretrained on the unlabelled pairs: the baselines and CMT w/o PT directly,
    # the CMT rows through cross-modal pretraining and TAPT; the towers load as plain transformers checkpoints
    towers = output / "runs" / "towers"
    assert type(HubertModel.from_pretrained(towers / "hubert")) is HubertModel
    assert type(RobertaModel.from_pretrained(towers / "roberta")) is RobertaModel
    for name, row in results["rows"].items():
        arguments = json.loads((Path(row["model_dirs"][0]) / "run_arguments.json").read_text())["ModelArguments"]
        if name in ("CMT w/o PT", "HuBERT-only", "RoBERTa-only", "Shallow-Fusion"):
            assert arguments["audio_model_name_or_path"] == str(towers / "hubert"), name
            assert arguments["text_model_name_or_path"] == str(towers / "roberta"), name
        else:
            assert Path(arguments["model_name_or_path"]).name == "tapt_fold1", name
    pretraining = json.loads((output / "runs" / "codebook" / "config.json").read_text())
    assert pretraining["num_cross_layers"] == results["settings"]["num_cross_layers"]

    for name in ("bars_ua.png", "learning_curves.png", "explain_best_cmt.png", "explain_layer_pooler_cmt.png"):
        image = matplotlib.image.imread(output / name)
        assert image.ndim == 3 and min(image.shape[:2]) > 100, name
    explanation = json.loads((output / "explain_layer_pooler_cmt.json").read_text())
    assert sum(explanation["layer_pooler_weights"]) == pytest.approx(1.0)

    best = output / "best_model"
    card = (best / "README.md").read_text()
    assert "model-index" in card and {"modeling_cmt.py", "pipeline_cmt.py", "model.safetensors"} <= {
        p.name for p in best.iterdir()
    }
    model = AutoModelForSequenceClassification.from_pretrained(best).eval()
    processor = AutoProcessor.from_pretrained(best)
    inputs = processor(audio=torch.zeros(16000).numpy(), text="The meeting was great.", sampling_rate=16000)
    with torch.no_grad():
        assert model(**inputs).logits.shape == (1, 4)
    assert "Held-out predictions from the reloaded pipeline" in completed.stdout


GOOD_STEP = """import json, os, sys
from pathlib import Path
import torch

def main(argv):
    output = Path(argv[argv.index("--output_dir") + 1])
    output.mkdir(parents=True)
    print("hello from", os.getpid())
    (output / "results.json").write_text(json.dumps({"pid": os.getpid(), "threads": torch.get_num_threads()}))
"""


def test_parallel_steps_run_in_workers_and_a_failure_is_named(tmp_path, monkeypatch):
    """`Demo.steps` with `--jobs 2`: steps run in worker processes with their share of the cores, their console
    output in their logs; a step asked for twice runs once; finished steps are not redone; a failing step is
    named with its log and its error kept."""
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "good_step.py").write_text(GOOD_STEP)
    (modules / "bad_step.py").write_text("def main(argv):\n    raise ValueError('no corpus at /nowhere')\n")
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    monkeypatch.syspath_prepend(str(modules))  # the workers start with this process's sys.path
    import demo

    runner = demo.Demo(tmp_path / "out", demo.SETTINGS["smoke"], fresh=False, jobs=2)
    try:
        steps = [demo.Step(f"good{i}", "good_step", (), tmp_path / "out" / "runs" / f"good{i}") for i in range(3)]
        outputs = runner.steps([*steps, steps[0]])
        assert outputs == [step.output for step in [*steps, steps[0]]]
        written = [json.loads((step.output / "results.json").read_text()) for step in steps]
        assert os.getpid() not in {entry["pid"] for entry in written}
        assert {entry["threads"] for entry in written} == {max(1, demo.available_cores() // 2)}
        assert sorted(runner.timings) == ["good0", "good1", "good2"]
        assert "hello from" in (runner.logs / "good0.log").read_text()
        runner.timings.clear()
        runner.steps(steps)
        assert runner.timings == {}  # finished: nothing redone
        with pytest.raises(RuntimeError, match=r"Demo step 'bad' failed; its log is .*bad\.log") as raised:
            runner.steps([demo.Step("bad", "bad_step", (), tmp_path / "out" / "runs" / "bad")])
        assert "no corpus at /nowhere" in str(raised.value.__cause__)
    finally:
        runner.close()


@pytest.mark.parametrize("value", ["0", "two"])
def test_bad_jobs_are_named(tmp_path, value):
    completed = subprocess.run(
        [sys.executable, "examples/demo.py", "--smoke", "--jobs", value, "--output_dir", str(tmp_path / "d")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 2 and "--jobs" in completed.stderr and "at least 1" in completed.stderr
    assert not (tmp_path / "d").exists()
