"""`make demo`'s command (`python examples/demo.py`) in its smoke mode: every artefact exists and parses."""

import json
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import torch
from transformers import AutoModelForSequenceClassification, AutoProcessor


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
    assert len(results["predictions"]) == 6
    assert all({"true", "predicted", "score", "text"} <= set(p) for p in results["predictions"])
    assert {"corpora", "pretrain", "total"} <= set(results["timings_s"])

    for name in ("bars_ua.png", "learning_curves.png", "explain_best_cmt.png", "explain_layer_pooler_cmt.png"):
        image = matplotlib.image.imread(output / name)
        assert image.ndim == 3 and min(image.shape[:2]) > 100, name
    explanation = json.loads((output / "explain_layer_pooler_cmt.json").read_text())
    assert sum(explanation["layer_pooler_weights"]) == __import__("pytest").approx(1.0)

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
