"""Model cards for trained checkpoints: the project's MODEL_CARD.md plus the run's own measured results and protocol
in a `model-index`, and a push to the Hub that explains itself when it cannot happen (e.g. offline)."""

import json
import logging
import re
import shutil
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData, create_repo, upload_folder


logger = logging.getLogger(__name__)

# The project's MODEL_CARD.md (a link to it ships with the package).
TEMPLATE = Path(__file__).resolve().parent / "MODEL_CARD.md"
ENDPOINT_HANDLER = Path(__file__).resolve().parent / "endpoint_handler.py"
# What the handler needs beyond an Inference Endpoints image (torch, transformers): decoding of audio bytes.
ENDPOINT_REQUIREMENTS = "torchcodec>=0.5\n"
RESULTS_HEADING = "**Results of this checkpoint:**"
# The template's sentence for the architecture card, which has no results; a checkpoint's card has its own.
ARCHITECTURE_ONLY = re.compile(r"It reports \*\*no measured accuracy of ours\*\*[^\n]*")
CHECKPOINT_RESULTS = (
    "This checkpoint's own measured results, with their protocol, are under Evaluation; the paper's numbers "
    "there are labelled as the paper's."
)

DATASETS = {
    "synthetic_emotion": ("synthetic-emotion", "Synthetic emotional speech (espeak-ng, embedded in the package)"),
    "iemocap": ("iemocap", "IEMOCAP"),
    "cmu_mosei": ("cmu-mosei", "CMU-MOSEI"),
}


def _eval_results(summary: dict, dataset_type: str, dataset_name: str) -> list[EvalResult]:
    problem = "regression" if "mae" in summary["aggregate"] else "classification"
    task_type = "audio-classification" if problem == "classification" else "audio-classification"
    return [
        EvalResult(
            task_type=task_type,
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split="test",
            metric_type=name,
            metric_name=f"{name} (mean over {values['n']} fold(s))",
            metric_value=round(values["mean"], 4),
        )
        for name, values in summary["aggregate"].items()
        if name in ("wa", "ua", "macro_f1", "acc7", "acc2_non0", "acc2_has0", "f1_non0", "mae", "pearson")
    ]


def render_model_card(summary: dict, model_name: str) -> ModelCard:
    """The template card with the run's results table, protocol and a `model-index` of the measured metrics."""
    protocol = summary["protocol"]
    dataset_type, dataset_name = DATASETS.get(protocol["corpus"], (protocol["corpus"], protocol["corpus"]))
    template = TEMPLATE.read_text()
    body = template.split("---", 2)[2] if template.startswith("---") else template
    rows = "\n".join(
        f"| {name} | {values['mean']:.4f} | {values['std']:.4f} | {values['n']} |"
        for name, values in summary["aggregate"].items()
        if not name.startswith(("binary_", "recall_"))
    )
    measured = (
        f"{RESULTS_HEADING} measured by `examples/run_finetune.py` on {dataset_name} "
        f"({protocol['description']}; {protocol['split']}). Checkpoint selection: {protocol['checkpoint_selection']}. "
        f"Seed {protocol['seed']}, commit `{protocol.get('git_commit')}`.\n\n"
        f"| metric | mean | std | folds |\n|---|---|---|---|\n{rows}\n\n"
        f"Command: `{protocol['command']}`\n\nMetric variants: `{json.dumps(protocol['metric_variants'])}`"
    )
    body = re.sub(re.escape(RESULTS_HEADING) + r".*?(?=\n## )", measured + "\n", body, flags=re.S)
    body = ARCHITECTURE_ONLY.sub(CHECKPOINT_RESULTS, body)
    data = ModelCardData(
        library_name="transformers",
        license="apache-2.0",
        tags=["audio", "speech-emotion-recognition", "sentiment-analysis", "multimodal", "cmt", "custom_code"],
        model_name=model_name,
        eval_results=_eval_results(summary, dataset_type, dataset_name),
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---{body}")


def write_model_card(folder: str | Path, summary: dict, hub_model_id: str | None = None) -> Path:
    """The card as README.md, with the Inference Endpoints handler beside it (`write_endpoint_handler`)."""
    folder = Path(folder)
    card = render_model_card(summary, hub_model_id or folder.name)
    path = folder / "README.md"
    card.save(path)
    write_endpoint_handler(folder)
    return path


def write_endpoint_handler(folder: str | Path) -> Path:
    """`handler.py` (an `EndpointHandler` over the folder's own pipeline code) and the `requirements.txt` it needs,
    so that Hugging Face Inference Endpoints can serve the folder as a custom model."""
    folder = Path(folder)
    shutil.copy(ENDPOINT_HANDLER, folder / "handler.py")
    (folder / "requirements.txt").write_text(ENDPOINT_REQUIREMENTS)
    return folder / "handler.py"


def push_or_explain(folder: str | Path, repo_id: str | None, token: str | None = None) -> bool:
    """Uploads the folder (config, weights, processor, remote code, card). Returns False, with a clear message, if
    it cannot: the folder stays complete locally."""
    if not repo_id:
        logger.error(f"--push_to_hub needs --hub_model_id org/name; the checkpoint and its card are in {folder}.")
        return False
    try:
        create_repo(repo_id, token=token, exist_ok=True)
        upload_folder(repo_id=repo_id, folder_path=str(folder), token=token, commit_message="Upload CMT checkpoint")
    except Exception as error:  # offline, no token, no permission: all leave the local folder as the result
        logger.error(
            f"Could not push {folder} to the Hub as {repo_id} ({type(error).__name__}: {error}). Everything that "
            f"would have been uploaded is in {folder}; push it later with `huggingface-cli upload {repo_id} {folder}`."
        )
        return False
    logger.warning(f"Pushed {folder} to https://huggingface.co/{repo_id}")
    return True
