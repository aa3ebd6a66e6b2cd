"""cmt_training.tower_cache: cached tower outputs give what the towers give, stale caches are never used, the cache
trains the cross-modal stack from a Trainer, and `run_finetune.py --cache_tower_outputs` trains from one cache per
split."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Audio, Dataset, DatasetDict, Features, Value

from cmt_training import tower_cache
from cmt_training.arguments import CMTTrainingArguments, ModelArguments
from cmt_training.build import build_model, build_processor
from cmt_training.data import AudioTextCollator, prepare_split
from cmt_training.tasks import load_user_dataset
from cmt_training.trainer import CMTTrainer
from modeling_cmt import CMTConfig, CMTForPreTraining, CMTForSequenceClassification
from modeling_cmt.configuration_cmt import load_preset


TINY = [
    "--preset", "tiny", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
    "--learning_rate", "3e-3", "--disable_tqdm", "true", "--logging_steps", "5", "--max_audio_seconds", "3",
    "--dataloader_pin_memory", "false", "--seed", "0",
]  # fmt: skip
SENTENCES = [
    "I can't believe you did that, it is wonderful!",
    "This is terrible and I am so angry right now.",
    "The meeting is at ten in the morning.",
    "I feel sad and tired, nothing went well today.",
    "What a lovely surprise, thank you so much.",
    "Excuse me, where is the station?",
]


def tiny_config(**overrides) -> CMTConfig:
    """The tiny preset (layer-norm feature encoder: padding-invariant towers) with every dropout and masking off."""
    preset = load_preset("tiny")["config"]
    audio = {
        **preset["audio_config"],
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "feat_proj_dropout": 0.0,
        "mask_time_prob": 0.0,
        "layerdrop": 0.0,
    }
    text = {**preset["text_config"], "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    values = {
        **preset,
        "audio_config": audio,
        "text_config": text,
        "cross_hidden_dropout": 0.0,
        "cross_attention_dropout": 0.0,
        "classifier_dropout": 0.0,
        "num_labels": 4,
    }
    return CMTConfig(**{**values, **overrides})


def prepared_rows(count: int = 10, seed: int = 0, regression: bool = False) -> Dataset:
    """Rows as `prepare_split` makes them: waveform (16 kHz float32), length, text, labels (class ids, or sentiment
    scores in [-3, 3] for regression)."""
    generator = np.random.default_rng(seed)
    lengths = generator.integers(3000, 9000, count)
    labels = generator.uniform(-3, 3, count).round(2).tolist() if regression else [int(i % 4) for i in range(count)]
    return Dataset.from_dict(
        {
            "waveform": [(generator.standard_normal(n) * 0.1).astype(np.float32) for n in lengths],
            "length": [int(n) for n in lengths],
            "text": [SENTENCES[i % len(SENTENCES)] for i in range(count)],
            "labels": labels,
        }
    )


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def cached_batch(cache, indices, regression=False):
    return tower_cache.TowerOutputCollator(regression=regression)([cache[i] for i in indices])


def uncached_batch(processor, dataset, indices, regression=False):
    return AudioTextCollator(processor, regression=regression)([dataset[i] for i in indices])


@pytest.mark.parametrize(
    "architecture",
    [
        {"pooling": "layer_pooler"},
        {"modality": "audio", "num_cross_layers": 0},
        {"modality": "text", "num_cross_layers": 0},
    ],
    ids=["cmt", "hubert_only", "roberta_only"],
)
def test_cached_logits_and_loss_equal_the_uncached_model(processor, tmp_path, architecture):
    torch.manual_seed(0)
    model = CMTForSequenceClassification(tiny_config(**architecture)).eval()
    dataset = prepared_rows()
    cache = tower_cache.build_tower_cache(model, dataset, processor, tmp_path / "cache", batch_size=3)
    assert len(cache) == len(dataset)
    towers = {"both": {"audio", "text"}, "audio": {"audio"}, "text": {"text"}}[model.config.modality]
    assert {name for name in ("audio", "text") if f"{name}_tower_output" in cache.column_names} == towers
    grouped_by = "audio_tower_output" if "audio" in towers else "text_tower_output"  # frames, or tokens without audio
    assert list(cache["length"]) == [len(row[grouped_by]) for row in cache]
    indices = [0, 3, 4, 7]  # another batching than the cache build's
    batch = cached_batch(cache, indices)
    assert batch["labels"].dtype == torch.long
    with torch.no_grad():
        expected = model(**uncached_batch(processor, dataset, indices))
        cached = model(**batch)
    torch.testing.assert_close(cached.logits, expected.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached.loss, expected.loss, atol=1e-5, rtol=1e-5)


def test_regression_cache_keeps_float_labels(processor, tmp_path):
    torch.manual_seed(0)
    model = CMTForSequenceClassification(tiny_config(num_labels=1, problem_type="regression")).eval()
    dataset = prepared_rows(regression=True)
    cache = tower_cache.build_tower_cache(model, dataset, processor, tmp_path / "cache")
    indices = [1, 2, 8]
    batch = cached_batch(cache, indices, regression=True)
    assert batch["labels"].dtype == torch.float32
    torch.testing.assert_close(batch["labels"], torch.tensor([dataset[i]["labels"] for i in indices]))
    with torch.no_grad():
        expected = model(**uncached_batch(processor, dataset, indices, regression=True))
        cached = model(**batch)
    torch.testing.assert_close(cached.loss, expected.loss, atol=1e-5, rtol=1e-5)


def test_cache_of_a_prepared_split_reproduces_the_towers(word_dataset, tmp_path):
    split = prepare_split(load_user_dataset(str(word_dataset))["validation"].select(range(12)), "label", 3.0)
    model_args = ModelArguments(preset="tiny", freeze_towers=True)
    processor = build_processor(model_args, split["text"], tmp_path)
    model = build_model(CMTForSequenceClassification, model_args, processor, num_labels=2).eval()
    cache = tower_cache.build_tower_cache(model, split, processor, tmp_path / "cache", batch_size=5)
    assert len(cache) == 12
    assert {"audio_tower_output", "text_tower_output", "labels", "length"} <= set(cache.column_names)
    with torch.no_grad():
        expected = model(**AudioTextCollator(processor)(list(split))).logits
        actual = model(**tower_cache.TowerOutputCollator()(list(cache))).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_cached_train_step_gives_the_same_gradients_with_dropout_off(processor, tmp_path):
    torch.manual_seed(0)
    model = CMTForSequenceClassification(tiny_config(ortho_weight=0.1))
    model.freeze_towers()
    dataset = prepared_rows()
    cache = tower_cache.build_tower_cache(model, dataset, processor, tmp_path / "cache")
    assert model.training  # building the cache restores the mode
    indices = [1, 2, 5, 6, 9]

    def gradients(batch):
        model.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        return loss, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    loss, expected = gradients(uncached_batch(processor, dataset, indices))
    cached_loss, cached = gradients(cached_batch(cache, indices))
    torch.testing.assert_close(cached_loss, loss, atol=1e-5, rtol=1e-5)
    assert expected and set(cached) == set(expected)
    assert not any(".audio_model." in f".{name}" or ".text_model." in f".{name}" for name in cached)
    for name in expected:
        torch.testing.assert_close(cached[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)


def test_cache_is_reused_and_kept_for_new_cross_layers(processor, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = CMTForSequenceClassification(tiny_config())
    dataset = prepared_rows(6)
    tower_cache.build_tower_cache(model, dataset, processor, tmp_path)
    meta = json.loads((tmp_path / tower_cache.META_FILE).read_text())

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(tower_cache, "_write_tower_cache", no_rebuild)
    with torch.no_grad():
        model.cmt.encoder.layers[0].feed_forward.output_dense.weight.add_(1.0)  # the cross stack is not cached
        model.classifier.dense.weight.add_(1.0)
    reused = tower_cache.build_tower_cache(model, dataset, processor, tmp_path)
    assert len(reused) == 6
    assert json.loads((tmp_path / tower_cache.META_FILE).read_text()) == meta


@pytest.mark.parametrize("change", ["audio_weights", "text_weights", "data", "labels", "processor"])
def test_a_stale_cache_is_refused_or_rebuilt(processor, feature_extractor, tmp_path, change):
    torch.manual_seed(0)
    model = CMTForSequenceClassification(tiny_config())
    dataset = prepared_rows(6)
    tower_cache.build_tower_cache(model, dataset, processor, tmp_path)
    old = json.loads((tmp_path / tower_cache.META_FILE).read_text())["fingerprint"]
    if change == "audio_weights":
        with torch.no_grad():
            model.cmt.audio_model.encoder.layers[0].attention.q_proj.weight.mul_(1.5)
    elif change == "text_weights":
        with torch.no_grad():
            model.cmt.text_model.embeddings.word_embeddings.weight[10] += 1.0
    elif change == "data":
        waveform = dataset[2]["waveform"]
        waveform[5] += 0.01
        dataset = dataset.map(lambda row, i: {"waveform": waveform} if i == 2 else {}, with_indices=True)
    elif change == "labels":
        dataset = dataset.map(lambda row: {"labels": (row["labels"] + 1) % 4})
    else:
        feature_extractor.do_normalize = False
        processor = type(processor)(feature_extractor=feature_extractor, tokenizer=processor.tokenizer)

    new = tower_cache.tower_cache_fingerprint(model, dataset, processor)
    assert new != old
    with pytest.raises(tower_cache.StaleTowerCacheError, match="built from other"):
        tower_cache.build_tower_cache(model, dataset, processor, tmp_path, on_stale="error")
    with pytest.raises(tower_cache.StaleTowerCacheError, match="expected"):
        tower_cache.load_tower_cache(tmp_path, new)
    rebuilt = tower_cache.build_tower_cache(model, dataset, processor, tmp_path)
    assert json.loads((tmp_path / tower_cache.META_FILE).read_text())["fingerprint"] == new
    with torch.no_grad():
        states = model.cmt.text_model(**processor.tokenizer([dataset[0]["text"]], return_tensors="pt"))[0]
    torch.testing.assert_close(rebuilt[0]["text_tower_output"], states[0], atol=1e-5, rtol=1e-5)


def test_pretraining_cache_holds_the_uncached_unit_targets(processor, tmp_path):
    torch.manual_seed(0)
    config = tiny_config(mlm_loss_weight=0.0)
    config.audio_config.mask_time_prob = 0.05  # the mask embedding exists only with masking on
    model = CMTForPreTraining(config)
    with pytest.raises(ValueError, match="codebook is not fitted"):
        tower_cache.build_tower_cache(model, prepared_rows(4), processor, tmp_path / "unfitted")
    model.set_codebook(torch.randn(config.codebook_size, config.audio_config.hidden_size))
    dataset = prepared_rows(6)
    cache = tower_cache.build_tower_cache(model, dataset, processor, tmp_path / "cache")
    batch = uncached_batch(processor, dataset, range(6))
    features, frame_mask = model.compute_unit_features(batch["input_values"], batch["audio_attention_mask"])
    units = model.assign_units(features)
    cached = cached_batch(cache, range(6))
    assert torch.equal(cached["audio_frame_mask"], frame_mask)
    torch.testing.assert_close(cached["unit_labels"][frame_mask], units[frame_mask])

    cached.pop("labels", None)
    outputs = model(**cached)
    assert torch.isfinite(outputs.loss) and outputs.mlm_loss is None
    outputs.loss.backward()
    assert model.unit_head.weight.grad is not None
    assert model.cmt.audio_model.masked_spec_embed.grad is not None  # masking moved to the tower output
    with pytest.raises(ValueError, match="drop `mlm_labels`"):
        model(**cached, mlm_labels=torch.full_like(cached["attention_mask"], -100))


def test_cache_trains_the_cross_stack_from_a_trainer(processor, tmp_path):
    torch.manual_seed(0)
    model = CMTForSequenceClassification(CMTConfig.from_preset("tiny", num_labels=4))
    model.freeze_towers()
    cache = tower_cache.build_tower_cache(model, prepared_rows(12), processor, tmp_path / "cache")
    towers = {name: p.clone() for name, p in model.named_parameters() if not p.requires_grad}
    cross = model.cmt.encoder.layers[0].attention.q_proj.weight.clone()
    args = CMTTrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=1e-2,
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = CMTTrainer(model=model, args=args, train_dataset=cache, data_collator=tower_cache.TowerOutputCollator())
    trainer.train()
    assert all(torch.equal(p, towers[name]) for name, p in model.named_parameters() if name in towers)
    assert not torch.equal(model.cmt.encoder.layers[0].attention.q_proj.weight, cross)
    assert all(np.isfinite(entry["train_loss"]) for entry in trainer.state.log_history if "train_loss" in entry)


# --- run_finetune.py --cache_tower_outputs ----------------------------------------------------------------------


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
            rows["text"].append(SENTENCES[index % len(SENTENCES)])
            rows["score"].append(float(generator.uniform(-3, 3)))
        return Dataset.from_dict(rows, features=features)

    DatasetDict({"train": split(16), "validation": split(8), "test": split(8)}).save_to_disk(str(path))
    return path


@pytest.fixture
def trainers(monkeypatch):
    """Every CMTTrainer the script builds, to look at its datasets and collator after the run."""
    built = []
    original = CMTTrainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(CMTTrainer, "__init__", init)
    return built


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
