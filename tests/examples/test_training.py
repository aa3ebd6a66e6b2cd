"""run_finetune.py (incl. --cache_tower_outputs), run_pretrain.py, fit_codebook.py and report.py on tiny towers and
tiny corpora (CPU, one process; several processes: test_distributed.py)."""

import errno
import json
import re
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import numpy as np
import pytest
import torch
from datasets import Audio, Dataset, DatasetDict, Features, Value
from safetensors.torch import load_file
from transformers import HubertConfig, HubertModel, Trainer, TrainerCallback

from cmt_training import cpu, tower_cache
from cmt_training.trainer import CMTTrainer, NonFiniteLossError, last_complete_checkpoint
from modeling_cmt import CMTForPreTraining, CMTForSequenceClassification


REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--preset", "tiny", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
    "--learning_rate", "3e-3", "--disable_tqdm", "true", "--logging_steps", "5", "--max_audio_seconds", "3",
    "--dataloader_pin_memory", "false", "--seed", "0",
]  # fmt: skip


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def synthetic(cache, *extra):
    return ["--task", "synthetic_emotion", "--synthetic_size", "80", "--cache_dir", cache, *extra]


# --- fine-tuning -------------------------------------------------------------------------------------------------


def test_finetune_learns_a_task_with_a_known_answer(run_script, word_dataset, tmp_path):
    output = tmp_path / "run"
    run_script(
        "run_finetune", "--task", "dataset", "--dataset_path", word_dataset, *TINY,
        "--num_train_epochs", "12", "--output_dir", output,
    )  # fmt: skip
    results = read_json(output / "results.json")
    test = results["aggregate"]
    assert test["wa"]["mean"] >= 0.9, test["wa"]  # chance is 0.5: the label is the transcript's sentiment word
    model = CMTForSequenceClassification.from_pretrained(output)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    card = (output / "README.md").read_text()
    assert card.count("model-index") == 1 and "no measured accuracy of ours" not in card
    assert "This checkpoint's own measured results" in card and f"| wa | {test['wa']['mean']:.4f} |" in card


@pytest.mark.parametrize(
    "baseline,expected",
    [
        (["--modality", "audio", "--num_cross_layers", "0"], {"modality": "audio", "num_cross_layers": 0}),
        (["--modality", "text", "--num_cross_layers", "0"], {"modality": "text", "num_cross_layers": 0}),
        (["--num_cross_layers", "0"], {"modality": "both", "num_cross_layers": 0}),
        (["--pooling", "layer_pooler", "--ortho_weight", "0.1"], {"pooling": "layer_pooler", "ortho_weight": 0.1}),
    ],
    ids=["hubert_only", "roberta_only", "shallow_fusion", "cmt_pooler_ortho"],
)
def test_baselines_run_through_the_same_script(run_script, synthetic_cache, tmp_path, baseline, expected):
    output = tmp_path / "run"
    run_script(
        "run_finetune", *synthetic(synthetic_cache, "--test_fold", "2"), *TINY, *baseline,
        "--num_train_epochs", "1", "--output_dir", output,
    )  # fmt: skip
    config = read_json(output / "fold_2" / "config.json")
    for key, value in expected.items():
        assert config[key] == value
    results = read_json(output / "results.json")
    assert 0.0 <= results["aggregate"]["ua"]["mean"] <= 1.0
    assert set(results["aggregate_by_item_type"]) <= {"global", "aligned"}


def test_loso_fold_keeps_the_test_session_out_of_training(run_script, synthetic_cache, tmp_path):
    output = tmp_path / "run"
    run_script(
        "run_finetune", *synthetic(synthetic_cache, "--test_fold", "3"), *TINY, "--num_train_epochs", "1",
        "--output_dir", output,
    )  # fmt: skip
    fold = read_json(output / "fold_3" / "results.json")
    data = fold["data"]
    assert data["test"]["sessions"] == ["3"] and "3" not in data["train"]["sessions"]
    assert data["validation"]["sessions"] == ["4"]
    assert not set(data["train"]["speakers"]) & set(data["test"]["speakers"])
    assert data["train"]["rows"] + data["validation"]["rows"] + data["test"]["rows"] == 80


def test_results_json_carries_the_protocol_card(run_script, synthetic_cache, tmp_path):
    output = tmp_path / "run"
    run_script(
        "run_finetune", *synthetic(synthetic_cache, "--test_fold", "1"), *TINY, "--num_train_epochs", "1",
        "--train_fraction", "0.5", "--output_dir", output,
    )  # fmt: skip
    results = read_json(output / "results.json")
    protocol = results["protocol"]
    assert protocol["corpus"] == "synthetic_emotion" and protocol["folds"] == [1]
    assert protocol["checkpoint_selection"].startswith("best validation ua (max)")
    assert protocol["seed"] == 0 and protocol["train_fraction"] == 0.5
    assert {"torch", "transformers", "datasets", "accelerate", "modeling_cmt"} <= set(protocol["versions"])
    assert re.fullmatch(r"[0-9a-f]{40}", protocol["git_commit"] or "")
    assert results["folds"][0]["data"]["train"]["rows"] == 24  # half of sessions 2 and 5's 48 rows
    assert {"wa", "ua", "macro_f1", "binary_accuracy_angry"} <= set(results["aggregate"])


def test_report_renders_the_paper_layout_and_plots(run_script, synthetic_cache, tmp_path):
    output = tmp_path / "run"
    run_script(
        "run_finetune", *synthetic(synthetic_cache, "--test_fold", "1"), *TINY, "--num_train_epochs", "2",
        "--output_dir", output,
    )  # fmt: skip
    report = tmp_path / "report"
    run_script("report", f"cmt={output}", "--output_dir", report, "--x_key", "train_fraction")
    table = (report / "results.md").read_text()
    aggregate = read_json(output / "results.json")["aggregate"]
    measured = aggregate["ua"]["mean"]
    assert re.search(r"^\| cmt \| .* \| " + re.escape(f"{measured:.3f}") + r" \| 1 \|$", table, re.M)
    assert "| run | Angry (1-vs-rest acc.) |" in table and "not per-class scores" in table
    recalls = [f"{aggregate[f'per_class_recall_{name}']['mean']:.3f}" for name in ("angry", "happy", "neutral", "sad")]
    assert "| run | angry | happy | neutral | sad |" in table and f"| cmt | {' | '.join(recalls)} |" in table
    assert "quoted, not measured here" in table and "| CMT BASE | 0.907 |" in table
    for name in ("bars.png", "learning_curves.png", "ablation.png"):
        image = matplotlib.image.imread(report / name)
        assert image.ndim == 3 and image.shape[0] > 100


# --- refusals and failures ---------------------------------------------------------------------------------------


def test_existing_results_are_not_overwritten_without_asking(run_script, synthetic_cache, tmp_path):
    output = tmp_path / "run"
    output.mkdir()
    (output / "results.json").write_text("{}")
    arguments = [*synthetic(synthetic_cache, "--test_fold", "1"), *TINY, "--max_steps", "1", "--output_dir", output]
    with pytest.raises(ValueError, match="already holds results.*--overwrite_output_dir"):
        run_script("run_finetune", *arguments)
    assert (output / "results.json").read_text() == "{}"


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--task", "emotions"], "Unknown task 'emotions'. Available tasks: synthetic_emotion"),
        (
            ["--task", "synthetic_emotion", "--test_fold", "7"],
            r"--test_fold must be one of \[1, 2, 3, 4, 5\], a comma",
        ),
        (["--task", "synthetic_emotion"], "Pass --test_fold"),
        (["--task", "iemocap", "--test_fold", "1"], "needs --data_dir"),
        (["--task", "dataset", "--dataset_path", "WORDS", "--label_column", "mood"], "'mood' is not a column"),
    ],
)
def test_bad_task_arguments_are_named(run_script, word_dataset, tmp_path, arguments, message):
    arguments = [str(word_dataset) if argument == "WORDS" else argument for argument in arguments]
    with pytest.raises(ValueError, match=message):
        run_script("run_finetune", *arguments, *TINY, "--output_dir", tmp_path / "run")


def test_an_output_dir_under_a_file_is_refused_before_the_model_loads(run_script, word_dataset, tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match=r"--output_dir .*a_file/run cannot be written to"):
        run_script(
            "run_finetune", "--task", "dataset", "--dataset_path", word_dataset, *TINY,
            "--output_dir", tmp_path / "a_file" / "run",
        )  # fmt: skip


def test_a_non_cmt_checkpoint_is_refused(run_script, word_dataset, tmp_path):
    HubertModel(
        HubertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    ).save_pretrained(tmp_path / "hubert")
    arguments = ["--task", "dataset", "--dataset_path", word_dataset, "--model_name_or_path", tmp_path / "hubert"]
    with pytest.raises(ValueError, match="is a 'hubert' checkpoint, not CMT.*--audio_model_name_or_path"):
        run_script("run_finetune", *arguments, "--output_dir", tmp_path / "run")


def test_num_labels_mismatch_needs_ignore_mismatched_sizes(run_script, word_dataset, synthetic_cache, tmp_path):
    four_classes = tmp_path / "four"
    run_script(
        "run_finetune", *synthetic(synthetic_cache, "--test_fold", "1"), *TINY, "--max_steps", "1",
        "--output_dir", four_classes,
    )  # fmt: skip
    arguments = ["--task", "dataset", "--dataset_path", word_dataset, "--model_name_or_path", four_classes / "fold_1"]
    tiny = [a for a in TINY if a not in ("--preset", "tiny")]
    with pytest.raises(RuntimeError, match="size mismatch|ignore_mismatched_sizes"):
        run_script("run_finetune", *arguments, *tiny, "--max_steps", "1", "--output_dir", tmp_path / "two")
    run_script(
        "run_finetune", *arguments, *tiny, "--max_steps", "1", "--ignore_mismatched_sizes", "true",
        "--output_dir", tmp_path / "two",
    )  # fmt: skip
    assert read_json(tmp_path / "two" / "config.json")["id2label"] == {"0": "negative", "1": "positive"}


class _Fail(TrainerCallback):
    """Test hook: breaks training at a given step, the way a crash or a full disk would."""

    def __init__(self, at_step, what):
        self.at_step, self.what = at_step, what

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.at_step and self.what == "nan":
            model.classifier.out_proj.bias.data.fill_(float("nan"))

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.at_step and self.what == "kill":
            raise KeyboardInterrupt("killed after a checkpoint")


def _with_callback(monkeypatch, callback):
    original = CMTTrainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.add_callback(callback)

    monkeypatch.setattr(CMTTrainer, "__init__", init)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(run_script, word_dataset, tmp_path, monkeypatch):
    _with_callback(monkeypatch, _Fail(at_step=3, what="nan"))
    output = tmp_path / "run"
    arguments = ["--task", "dataset", "--dataset_path", word_dataset, *TINY, "--save_strategy", "steps"]
    with pytest.raises(NonFiniteLossError, match=r"NaN/Inf at step 3.*checkpoint-2"):
        run_script(
            "run_finetune", *arguments, "--save_steps", "1", "--eval_strategy", "steps", "--eval_steps", "1",
            "--max_steps", "5", "--output_dir", output,
        )  # fmt: skip
    assert (output / "checkpoint-2" / "model.safetensors").is_file()
    assert torch.isfinite(load_file(output / "checkpoint-2" / "model.safetensors")["classifier.out_proj.bias"]).all()


def test_a_failed_save_leaves_no_half_written_checkpoint(run_script, word_dataset, tmp_path, monkeypatch):
    original = Trainer.save_model

    def save_model(self, output_dir=None, _internal_call=False):
        if output_dir and output_dir.endswith("checkpoint-2"):
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, output_dir, _internal_call)

    monkeypatch.setattr(Trainer, "save_model", save_model)
    output = tmp_path / "run"
    arguments = ["--task", "dataset", "--dataset_path", word_dataset, *TINY, "--save_strategy", "steps"]
    with pytest.raises(OSError, match="disk is full.*partial folder was removed.*checkpoint-1"):
        run_script(
            "run_finetune", *arguments, "--save_steps", "1", "--eval_strategy", "steps", "--eval_steps", "1",
            "--max_steps", "4", "--output_dir", output,
        )  # fmt: skip
    assert not (output / "checkpoint-2").exists()
    assert last_complete_checkpoint(output).endswith("checkpoint-1")


def test_killed_and_resumed_run_reaches_the_same_weights(run_script, word_dataset, tmp_path, monkeypatch):
    arguments = ["--task", "dataset", "--dataset_path", word_dataset, *TINY, "--num_train_epochs", "3"]
    run_script("run_finetune", *arguments, "--output_dir", tmp_path / "straight")
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        _with_callback(patch, _Fail(at_step=24, what="kill"))  # 12 steps per epoch: killed after epoch 2
        run_script("run_finetune", *arguments, "--output_dir", tmp_path / "resumed")
    assert (tmp_path / "resumed" / "checkpoint-24").is_dir() and not (tmp_path / "resumed" / "results.json").exists()
    run_script("run_finetune", *arguments, "--output_dir", tmp_path / "resumed", "--resume_from_checkpoint", "auto")
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)
    assert (
        read_json(tmp_path / "resumed" / "results.json")["aggregate"]
        == read_json(tmp_path / "straight" / "results.json")["aggregate"]
    )


def test_a_multi_fold_run_resumes_each_fold_from_its_own_checkpoints(run_script, synthetic_cache, tmp_path):
    output = tmp_path / "run"
    arguments = [*synthetic(synthetic_cache, "--test_fold", "1,2"), *TINY, "--max_steps", "2", "--output_dir", output]
    run_script("run_finetune", *arguments)
    with pytest.raises(ValueError, match="names one checkpoint, but this run trains 2 folds.*true"):
        run_script("run_finetune", *arguments, "--resume_from_checkpoint", output / "fold_1" / "checkpoint-2")
    run_script("run_finetune", *arguments, "--resume_from_checkpoint")  # the flag alone = the last checkpoints
    for fold in (1, 2):
        best = read_json(output / f"fold_{fold}" / "results.json")["validation"]["best_checkpoint"]
        assert Path(best).parent == output / f"fold_{fold}", best


def test_overwrite_removes_old_checkpoints_and_resume_refuses_other_arguments(
    run_script, word_dataset, tmp_path, caplog
):
    output = tmp_path / "run"
    arguments = ["--task", "dataset", "--dataset_path", word_dataset, *TINY, "--output_dir", output]
    run_script("run_finetune", *arguments, "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1",
               "--eval_strategy", "steps", "--eval_steps", "1", "--save_total_limit", "5")  # fmt: skip
    assert (output / "checkpoint-3").is_dir()
    run_script("run_finetune", *arguments, "--max_steps", "1", "--overwrite_output_dir", "true")
    assert "removing what earlier runs left" in caplog.text and "checkpoint-3" in caplog.text
    assert sorted(path.name for path in output.glob("checkpoint-*")) == ["checkpoint-1"]
    with pytest.raises(ValueError, match=r"Cannot resume .*checkpoint-1.*--learning_rate 0\.003 -> 0\.001"):
        run_script("run_finetune", *arguments, "--max_steps", "1", "--resume_from_checkpoint", "true",
                   "--learning_rate", "1e-3")  # fmt: skip
    run_script("run_finetune", *arguments, "--max_steps", "1", "--resume_from_checkpoint", "true")


def test_rebuild_dataset_prepares_the_corpus_again(run_script, synthetic_cache, tmp_path, monkeypatch):
    import hub_datasets

    calls, original = [], hub_datasets.load_synthetic_emotion
    monkeypatch.setattr(
        hub_datasets,
        "load_synthetic_emotion",
        lambda *args, **kwargs: calls.append(kwargs) or original(*args, **kwargs),
    )
    arguments = [*synthetic(synthetic_cache, "--test_fold", "1"), *TINY, "--max_steps", "1"]
    run_script("run_finetune", *arguments, "--output_dir", tmp_path / "cached")
    run_script("run_finetune", *arguments, "--rebuild_dataset", "true", "--output_dir", tmp_path / "rebuilt")
    assert [call["download_mode"] for call in calls] == [None, "force_redownload"]


def test_push_to_hub_offline_writes_the_folder_and_explains(run_script, word_dataset, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    output = tmp_path / "run"
    run_script(
        "run_finetune", "--task", "dataset", "--dataset_path", word_dataset, *TINY, "--max_steps", "2",
        "--push_to_hub", "true", "--hub_model_id", "someone/cmt-words", "--output_dir", output,
    )  # fmt: skip
    card = (output / "README.md").read_text()
    assert "model-index" in card and "someone/cmt-words" in card and "Command: `" in card
    assert {"config.json", "model.safetensors", "modeling_cmt.py", "processor_config.json"} <= {
        p.name for p in output.iterdir()
    }
    assert "Could not push" in caplog.text and "huggingface-cli upload someone/cmt-words" in caplog.text


# --- run_finetune.py --cache_tower_outputs ----------------------------------------------------------------------


TEXTS = ["The day was good.", "The film was awful.", "What a lovely meal."]


def scored_dataset(path: Path) -> Path:
    """A tiny DatasetDict with a float label (`--task dataset` makes it a regression task)."""
    generator = np.random.default_rng(0)
    features = Features({"audio": Audio(sampling_rate=16000), "text": Value("string"), "score": Value("float32")})

    def split(size):
        rows = {"audio": [], "text": [], "score": []}
        for index in range(size):
            rows["audio"].append(
                {"array": generator.standard_normal(4000).astype(np.float32) * 0.1, "sampling_rate": 16000}
            )
            rows["text"].append(TEXTS[index % len(TEXTS)])
            rows["score"].append(float(generator.uniform(-3, 3)))
        return Dataset.from_dict(rows, features=features)

    DatasetDict({"train": split(16), "validation": split(8), "test": split(8)}).save_to_disk(str(path))
    return path


def test_run_finetune_caching_needs_frozen_towers(run_script, word_dataset, tmp_path):
    arguments = ["--task", "dataset", "--dataset_path", word_dataset, *TINY, "--cache_tower_outputs", "true"]
    with pytest.raises(ValueError, match="needs --freeze_towers true"):
        run_script("run_finetune", *arguments, "--max_steps", "1", "--output_dir", tmp_path / "run")


@pytest.mark.parametrize("problem", ["classification", "regression"])
def test_run_finetune_trains_from_one_cache_per_split(run_script, trainers, word_dataset, tmp_path, problem):
    task = ["--dataset_path", word_dataset]
    if problem == "regression":
        task = ["--dataset_path", scored_dataset(tmp_path / "scored"), "--label_column", "score"]
    output = tmp_path / "run"
    run_script(
        "run_finetune", "--task", "dataset", *task, *TINY, "--freeze_towers", "true", "--cache_tower_outputs", "true",
        "--num_train_epochs", "2", "--output_dir", output,
    )  # fmt: skip
    results = read_json(output / "results.json")
    assert results["folds"][0]["cached_tower_outputs"] is True
    if problem == "regression":
        assert np.isfinite(results["aggregate"]["mae"]["mean"])
    else:
        assert 0 <= results["aggregate"]["wa"]["mean"] <= 1
    caches = sorted((output / "tower_cache").iterdir())
    assert [folder.name.split("-")[0] for folder in caches] == ["test", "train", "validation"]
    assert all((folder / tower_cache.META_FILE).is_file() for folder in caches)

    trainer = trainers[0]
    collator, train = trainer.data_collator, trainer.train_dataset
    assert isinstance(collator, tower_cache.TowerOutputCollator) and collator.regression == (problem == "regression")
    frames = [len(row["audio_tower_output"]) for row in train]
    assert list(trainer._get_train_sampler().lengths) == list(train["length"]) == frames  # length-grouped batches
    batch = collator([train[index] for index in range(4)])
    assert batch["labels"].dtype == (torch.float32 if problem == "regression" else torch.long)
    torch.testing.assert_close(
        batch["labels"], torch.stack([train[index]["labels"] for index in range(4)]).to(batch["labels"].dtype)
    )
    if problem == "regression":
        assert (batch["labels"] != batch["labels"].round()).any()  # scores were not cut to integers


def test_run_finetune_caches_a_frozen_audio_tower_and_trains_the_text_tower(
    run_script, word_dataset, tmp_path, monkeypatch
):
    initial, original = {}, CMTTrainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        initial.update({name: value.clone() for name, value in self.model.state_dict().items()})

    monkeypatch.setattr(CMTTrainer, "__init__", init)
    output = tmp_path / "run"
    run_script(
        "run_finetune", "--task", "dataset", "--dataset_path", word_dataset, *TINY, "--freeze_audio_tower", "true",
        "--cache_tower_outputs", "true", "--num_train_epochs", "2", "--output_dir", output,
    )  # fmt: skip
    caches = sorted((output / "tower_cache").iterdir())
    assert [json.loads((folder / tower_cache.META_FILE).read_text())["towers"] for folder in caches] == [["audio"]] * 3
    trained = load_file(output / "model.safetensors")
    audio = [name for name in trained if ".audio_model." in name]
    text = [name for name in trained if ".text_model." in name]
    assert audio and all(torch.equal(trained[name], initial[name]) for name in audio)  # frozen: never changed
    assert any(not torch.equal(trained[name], initial[name]) for name in text)  # the text tower trained


def test_run_finetune_reuses_caches_and_keys_them_by_the_towers(run_script, word_dataset, tmp_path, monkeypatch):
    arguments = [
        "--task", "dataset", "--dataset_path", word_dataset, *TINY, "--freeze_towers", "true",
        "--cache_tower_outputs", "true", "--max_steps", "1", "--cache_dir", tmp_path / "cache",
    ]  # fmt: skip
    run_script("run_finetune", *arguments, "--output_dir", tmp_path / "first")
    caches = sorted((tmp_path / "cache" / "tower_cache").iterdir())
    assert len(caches) == 3
    metas = {folder: (folder / tower_cache.META_FILE).read_text() for folder in caches}

    built = []
    original = tower_cache._write_tower_cache
    monkeypatch.setattr(tower_cache, "_write_tower_cache", lambda *args: built.append(args[3]) or original(*args))
    # same towers and data, another head: the caches are reused
    run_script("run_finetune", *arguments, "--ortho_weight", "0.1", "--output_dir", tmp_path / "second")
    assert not built and sorted((tmp_path / "cache" / "tower_cache").iterdir()) == caches
    # other tower weights: new caches beside the old ones, which are left as they were
    run_script("run_finetune", *arguments, "--seed", "1", "--output_dir", tmp_path / "third")
    assert len(built) == 3 and not set(built) & set(caches)
    assert len(list((tmp_path / "cache" / "tower_cache").iterdir())) == 6
    assert all((folder / tower_cache.META_FILE).read_text() == meta for folder, meta in metas.items())


# --- pretraining -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def codebook_checkpoint(tmp_path_factory, synthetic_cache, run_script):
    output = tmp_path_factory.mktemp("codebook") / "ckpt"
    run_script(
        "fit_codebook", "--preset", "tiny", *synthetic(str(synthetic_cache), "--test_fold", "1"),
        "--codebook_size", "12", "--max_audio_seconds", "3", "--output_dir", output,
    )  # fmt: skip
    return output


def test_codebook_is_stored_and_reloaded_as_tensors(codebook_checkpoint):
    stored = load_file(codebook_checkpoint / "model.safetensors")
    assert stored["codebook"].shape == (12, 32) and stored["codebook"].abs().sum() > 0
    model = CMTForPreTraining.from_pretrained(codebook_checkpoint)
    assert torch.equal(model.codebook, stored["codebook"]) and model.codebook_is_fitted
    assert not [p.name for p in codebook_checkpoint.iterdir() if p.suffix in (".bin", ".pt", ".pkl", ".pickle")]


def test_pretraining_loss_decreases(run_script, codebook_checkpoint, synthetic_cache, tmp_path):
    output = tmp_path / "pretrain"
    tiny = [a for a in TINY if a not in ("--preset", "tiny")]
    run_script(
        "run_pretrain", "--model_name_or_path", codebook_checkpoint, *synthetic(synthetic_cache, "--test_fold", "1"),
        *tiny, "--stage", "2", "--num_train_epochs", "8", "--matching_loss_weight", "0.5", "--output_dir", output,
    )  # fmt: skip
    results = read_json(output / "results.json")
    logs = [entry for entry in results["log_history"]["stage2"] if "unit_loss" in entry]
    first, last = logs[0], logs[-1]
    for name in ("unit_loss", "mlm_loss"):
        assert last[name] < first[name] - 0.1, (name, first[name], last[name])
    assert "matching_loss" in first
    assert CMTForPreTraining.from_pretrained(output).codebook_is_fitted


def test_stage_one_trains_only_the_cross_modal_stack_and_heads(
    run_script, codebook_checkpoint, synthetic_cache, tmp_path
):
    output = tmp_path / "stage1"
    tiny = [a for a in TINY if a not in ("--preset", "tiny")]
    run_script(
        "run_pretrain", "--model_name_or_path", codebook_checkpoint, *synthetic(synthetic_cache, "--test_fold", "1"),
        *tiny, "--stage", "1", "--max_steps", "3", "--logging_steps", "1", "--mlm_loss_weight", "0", "--output_dir", output,
    )  # fmt: skip
    before = load_file(codebook_checkpoint / "model.safetensors")
    after = load_file(output / "model.safetensors")
    changed = {
        name.split(".")[0] if not name.startswith("cmt.") else ".".join(name.split(".")[:2])
        for name in after
        if not torch.equal(after[name], before[name])
    }
    assert changed == {"cmt.encoder", "unit_head"}
    logs = [entry for entry in read_json(output / "results.json")["log_history"]["stage1"] if "loss" in entry]
    assert logs and all("mlm_loss" not in entry for entry in logs)


def test_streaming_without_max_steps_is_refused(run_script, tmp_path):
    with pytest.raises(ValueError, match="needs --data_dir|pass --max_steps"):
        run_script(
            "run_pretrain",
            "--task",
            "audio_text_pairs",
            "--streaming",
            "true",
            "--preset",
            "tiny",
            "--output_dir",
            tmp_path,
        )


def test_pretraining_without_a_codebook_is_refused(run_script, synthetic_cache, tmp_path):
    with pytest.raises(ValueError, match="no fitted codebook.*fit_codebook.py"):
        run_script(
            "run_pretrain", *synthetic(synthetic_cache, "--test_fold", "1"), *TINY, "--output_dir", tmp_path / "p"
        )


# --- distributed (the multi-process launches are in test_distributed.py) ------------------------------------------


def test_processes_that_would_train_alone_are_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="one of 2 started by the launcher.*world size 1"):
        cpu.check_world_size(SimpleNamespace(world_size=1))
    cpu.check_world_size(SimpleNamespace(world_size=2))
    monkeypatch.setenv("WORLD_SIZE", "1")
    cpu.check_world_size(SimpleNamespace(world_size=1))


def test_accelerate_configs_are_valid():
    from accelerate.commands.config.config_args import ClusterConfig

    for path in sorted((REPO / "examples" / "accelerate_configs").glob("*.yaml")):
        config = ClusterConfig.from_yaml_file(path)
        assert config.num_processes >= 1, path.name


def test_cpu_allocator_tuning_is_applied_on_linux_and_can_be_switched_off(
    run_script, word_dataset, tmp_path, monkeypatch
):
    if sys.platform == "linux":  # glibc here: mallopt accepts all three settings
        assert cpu.tune_cpu_allocator() is True
    calls = []
    monkeypatch.setattr(cpu, "tune_cpu_allocator", lambda: calls.append(1) or True)
    arguments = ["--task", "dataset", "--dataset_path", word_dataset, *TINY, "--num_train_epochs", "1"]
    run_script("run_finetune", *arguments, "--output_dir", tmp_path / "on")
    assert calls == [1]  # a CPU run tunes the allocator once
    run_script("run_finetune", *arguments, "--output_dir", tmp_path / "off", "--cpu_allocator_tuning", "false")
    assert calls == [1]


# --- the README's "Train and evaluate" commands ---------------------------------------------------------------------


def readme_commands(heading: str) -> list[list[str]]:
    """The commands of the first bash block under `## <heading>` in the README, one argv each."""
    section = (REPO / "README.md").read_text().split(f"## {heading}\n", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def test_the_readme_training_commands_run_in_order(run_script, synthetic_cache, tmp_path, monkeypatch):
    """Each README command as typed (the launcher aside), on the session's 80-utterance corpus and for one epoch:
    the flags exist, the steps chain (codebook -> pretraining -> fine-tuning -> report) and fine-tuning runs with the
    frozen, cached audio tower and the learning rate the README's measured numbers come from."""
    monkeypatch.chdir(tmp_path)  # the commands write to runs/
    commands = readme_commands("Train and evaluate")
    scripts = [next(Path(word).stem for word in command if word.startswith("examples/")) for command in commands]
    assert scripts == ["fit_codebook", "run_pretrain", "run_finetune", "report"]
    small = ["--synthetic_size", "80", "--cache_dir", str(synthetic_cache), "--disable_tqdm", "true"]
    shorter = {"fit_codebook": small, "run_pretrain": [*small, "--num_train_epochs", "1"],
               "run_finetune": [*small, "--num_train_epochs", "1"], "report": []}  # fmt: skip
    for script, command in zip(scripts, commands):
        arguments = command[[word.startswith("examples/") for word in command].index(True) + 1 :]
        run_script(script, *arguments, *shorter[script])  # a repeated flag: the last one counts
    protocol = read_json(tmp_path / "runs" / "finetune" / "results.json")["protocol"]
    assert protocol["model"]["freeze_audio_tower"] is True and protocol["training"]["learning_rate"] == 2e-3
    assert read_json(tmp_path / "runs" / "finetune" / "results.json")["folds"][0]["cached_tower_outputs"] is True
    assert (tmp_path / "runs" / "report" / "results.md").is_file()
