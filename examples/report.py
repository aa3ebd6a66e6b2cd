"""Turn one or many `results.json` files of `run_finetune.py` into the paper's table layout and plots.

    python examples/report.py cmt=runs/cmt/results.json hubert=runs/hubert/results.json --output_dir report
    # a Figure 3-style ablation: metric against the training fraction, one line per series
    python examples/report.py runs/*/results.json --x_key train_fraction --series_key model.model_name_or_path

Writes `results.md` (our measured mean ± std over folds, then the paper's published numbers in a separate table,
labelled as the paper's), `results_table.json`, `bars.png` (headline metric per run with the std as error bars),
`learning_curves.png` (validation headline metric per evaluation) and, with `--x_key`, `ablation.png`.
"""

import argparse
import json
import math
from pathlib import Path

import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


# The paper's published numbers (Chu et al. 2022, Tables 1, 2 and 4), quoted, never ours.
PAPER_IEMOCAP = {
    "HuBERT": [0.908, 0.825, 0.785, 0.885, 0.703, 0.711],
    "RoBERTa": [0.902, 0.850, 0.782, 0.869, 0.702, 0.709],
    "Shallow-Fusion": [0.901, 0.849, 0.789, 0.895, 0.717, 0.728],
    "CMT BASE": [0.907, 0.869, 0.815, 0.912, 0.751, 0.763],
    "CMT LARGE": [0.898, 0.872, 0.817, 0.913, 0.750, 0.761],
}
PAPER_MOSEI = {
    "HuBERT": [0.486, 0.796, 0.799, 0.634],
    "RoBERTa": [0.521, 0.876, 0.877, 0.523],
    "Shallow-Fusion": [0.538, 0.861, 0.860, 0.518],
    "CMT BASE": [0.546, 0.880, 0.878, 0.501],
    "CMT LARGE": [0.545, 0.885, 0.885, 0.500],
    "CMT-4 w/o PT": [0.545, 0.874, 0.875, 0.508],
    "CMT-4 PT": [0.554, 0.870, 0.871, 0.496],
    "CMT-4 PT + TAPT": [0.559, 0.866, 0.869, 0.502],
    "CMT-4 PT + Layer pooler": [0.545, 0.864, 0.863, 0.509],
    "CMT-4 PT + Ortho": [0.554, 0.879, 0.878, 0.493],
}
# The paper's per-emotion columns are the MulT protocol's one-vs-rest binary accuracies, not per-class scores.
EMOTION_COLUMNS = [
    ("Angry (1-vs-rest acc.)", "binary_accuracy_angry"),
    ("Happy (1-vs-rest acc.)", "binary_accuracy_happy"),
    ("Neutral (1-vs-rest acc.)", "binary_accuracy_neutral"),
    ("Sad (1-vs-rest acc.)", "binary_accuracy_sad"),
    ("WA", "wa"),
    ("UA", "ua"),
]
BINARY_NOTE = (
    "The per-emotion columns are one-vs-rest binary accuracies (the MulT protocol the paper reports: for emotion e, "
    "is the prediction e, is the reference e), not per-class scores: a class the model never predicts still scores "
    "its share of other classes. Per-class recall is in the next table."
)
RECALL_PREFIX = "per_class_recall_"
SENTIMENT_COLUMNS = [("Acc7", "acc7"), ("Acc2 (Non0)", "acc2_non0"), ("F1 (Non0)", "f1_non0"), ("MAE", "mae")]


def load_runs(specs: list[str]) -> dict[str, dict]:
    runs = {}
    for spec in specs:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        path = Path(path)
        if path.is_dir():
            path = path / "results.json"
        if not path.is_file():
            raise SystemExit(f"No results file at {path}.")
        results = json.loads(path.read_text())
        if "aggregate" not in results:
            raise SystemExit(f"{path} is not a run_finetune.py summary (no 'aggregate'); pass the run's top folder.")
        runs[name or path.parent.name] = {**results, "path": str(path)}
    if not runs:
        raise SystemExit("Give at least one results.json.")
    return runs


def cell(aggregate: dict, metric: str) -> str:
    if metric not in aggregate or aggregate[metric]["mean"] is None or math.isnan(aggregate[metric]["mean"]):
        return "–"
    values = aggregate[metric]
    return f"{values['mean']:.3f} ± {values['std']:.3f}" if values["n"] > 1 else f"{values['mean']:.3f}"


def columns_for(runs: dict) -> list[tuple[str, str]]:
    is_regression = any("mae" in run["aggregate"] for run in runs.values())
    return SENTIMENT_COLUMNS if is_regression else EMOTION_COLUMNS


def markdown(runs: dict, extra_rows: list[str] | None = None) -> str:
    columns = columns_for(runs)
    lines = [
        "| run | " + " | ".join(label for label, _ in columns) + " | folds |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for name, run in runs.items():
        folds = max((values["n"] for values in run["aggregate"].values()), default=0)
        lines.append(f"| {name} | " + " | ".join(cell(run["aggregate"], m) for _, m in columns) + f" | {folds} |")
    first = next(iter(runs.values()))["protocol"]
    text = [
        f"## Measured here: {first['description']}",
        "",
        f"Split: {first['split']}. Checkpoint selection: {first['checkpoint_selection']}. Mean ± sample std over folds.",
        "",
        *lines,
        "",
    ]
    classes = sorted(
        {
            name[len(RECALL_PREFIX) :]
            for run in runs.values()
            for name in run["aggregate"]
            if name.startswith(RECALL_PREFIX)
        }
    )
    if columns is EMOTION_COLUMNS and classes:
        text += [BINARY_NOTE, "", "Per-class recall (test):", ""]
        text += ["| run | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
        for name, run in runs.items():
            text.append(f"| {name} | " + " | ".join(cell(run["aggregate"], RECALL_PREFIX + c) for c in classes) + " |")
        text.append("")
    by_type = {name: run.get("aggregate_by_item_type") or {} for name, run in runs.items()}
    item_types = sorted({item_type for groups in by_type.values() for item_type in groups})
    if item_types:
        metric = "mae" if columns is SENTIMENT_COLUMNS else "wa"
        text += [f"Test {metric} by item type:", ""]
        text += ["| run | " + " | ".join(item_types) + " |", "|---|" + "---|" * len(item_types)]
        for name, groups in by_type.items():
            text.append(f"| {name} | " + " | ".join(cell(groups.get(t, {}), metric) for t in item_types) + " |")
        text.append("")
    text += extra_rows or []
    paper, paper_columns, table = (
        (PAPER_MOSEI, ["Acc7", "Acc2", "F1", "MAE"], "Tables 2 and 4, CMU-MOSEI")
        if columns is SENTIMENT_COLUMNS
        else (PAPER_IEMOCAP, [label for label, _ in EMOTION_COLUMNS], "Table 1, IEMOCAP")
    )
    text += [
        f"## The paper's published numbers ({table}; Chu et al. 2022) — quoted, not measured here",
        "",
        "| paper row | " + " | ".join(paper_columns) + " |",
        "|---|" + "---|" * len(paper_columns),
        *[f"| {row} | " + " | ".join(f"{v:.3f}" for v in values) + " |" for row, values in paper.items()],
        "",
    ]
    return "\n".join(text)


def lookup(results: dict, dotted: str):
    value = results["protocol"]
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def plot_bars(runs: dict, metric: str, path: Path):
    names = list(runs)
    means = [runs[n]["aggregate"].get(metric, {}).get("mean", float("nan")) for n in names]
    stds = [runs[n]["aggregate"].get(metric, {}).get("std", 0.0) for n in names]
    figure, axis = plt.subplots(figsize=(max(4, 1.2 * len(names)), 3.5))
    axis.bar(names, means, yerr=stds, capsize=4, color="#4c72b0")
    axis.set_ylabel(f"test {metric} (mean ± std over folds)")
    axis.tick_params(axis="x", rotation=30)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_learning_curves(runs: dict, metric: str, path: Path):
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for name, run in runs.items():
        fold_file = Path(run["path"]).parent / f"fold_{run['folds'][0]['fold']}" / "results.json"
        fold_results = (
            json.loads(fold_file.read_text()) if fold_file.is_file() else json.loads(Path(run["path"]).read_text())
        )
        points = [
            (e["epoch"], e[f"eval_{metric}"]) for e in fold_results.get("log_history", []) if f"eval_{metric}" in e
        ]
        if points:
            axis.plot(*zip(*points), marker="o", label=name)
    axis.set_xlabel("epoch")
    axis.set_ylabel(f"validation {metric} (first fold)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_ablation(runs: dict, metric: str, x_key: str, series_key: str | None, path: Path):
    series: dict[str, list] = {}
    for run in runs.values():
        x = lookup(run, x_key)
        if x is None:
            raise SystemExit(f"{run['path']} has no protocol value {x_key!r}.")
        label = str(lookup(run, series_key)) if series_key else metric
        series.setdefault(label, []).append(
            (float(x), run["aggregate"][metric]["mean"], run["aggregate"][metric]["std"])
        )
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for label, points in series.items():
        points.sort()
        xs, means, stds = zip(*points)
        axis.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label)
    axis.set_xlabel(x_key)
    axis.set_ylabel(f"test {metric}")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results.json files or run folders, optionally as name=path")
    parser.add_argument("--output_dir", default="report", type=Path)
    parser.add_argument("--metric", default=None, help="Headline metric (default: ua, or mae for sentiment).")
    parser.add_argument("--x_key", default=None, help="Protocol key for an ablation plot, e.g. train_fraction.")
    parser.add_argument("--series_key", default=None, help="Protocol key that names the ablation's lines.")
    args = parser.parse_args(argv)

    runs = load_runs(args.results)
    metric = args.metric or ("mae" if columns_for(runs) is SENTIMENT_COLUMNS else "ua")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "results.md").write_text(markdown(runs))
    table = {name: {m: run["aggregate"].get(m) for _, m in columns_for(runs)} for name, run in runs.items()}
    (args.output_dir / "results_table.json").write_text(json.dumps(table, indent=2) + "\n")
    plot_bars(runs, metric, args.output_dir / "bars.png")
    plot_learning_curves(runs, metric, args.output_dir / "learning_curves.png")
    if args.x_key:
        plot_ablation(runs, metric, args.x_key, args.series_key, args.output_dir / "ablation.png")
    print(f"wrote {', '.join(sorted(p.name for p in args.output_dir.iterdir()))} to {args.output_dir}")


if __name__ == "__main__":
    main()
