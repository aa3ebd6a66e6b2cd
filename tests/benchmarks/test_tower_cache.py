"""examples/tower_cache.py: cached tower outputs give what the towers give, stale caches are never used, and the
cache trains the cross-modal stack from a Trainer."""

import json

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from modeling_cmt import CMTConfig, CMTForPreTraining, CMTForSequenceClassification
from modeling_cmt.configuration_cmt import load_preset


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


def prepared_rows(count: int = 10, seed: int = 0) -> Dataset:
    """Rows as `prepare_split` makes them: waveform (16 kHz float32), length, text, labels."""
    generator = np.random.default_rng(seed)
    lengths = generator.integers(3000, 9000, count)
    return Dataset.from_dict(
        {
            "waveform": [(generator.standard_normal(n) * 0.1).astype(np.float32) for n in lengths],
            "length": [int(n) for n in lengths],
            "text": [SENTENCES[i % len(SENTENCES)] for i in range(count)],
            "labels": [int(i % 4) for i in range(count)],
        }
    )


@pytest.fixture
def tower_cache():
    import tower_cache

    return tower_cache


@pytest.fixture
def training():
    import cmt_training

    return cmt_training


def cached_batch(tower_cache, cache, indices):
    return tower_cache.TowerOutputCollator()([cache[i] for i in indices])


def uncached_batch(training, processor, dataset, indices):
    return training.AudioTextCollator(processor)([dataset[i] for i in indices])


def test_cached_logits_and_loss_equal_the_uncached_model(tower_cache, training, processor, tmp_path):
    torch.manual_seed(0)
    model = CMTForSequenceClassification(tiny_config(pooling="layer_pooler")).eval()
    dataset = prepared_rows()
    cache = tower_cache.build_tower_cache(model, dataset, processor, tmp_path / "cache", batch_size=3)
    assert len(cache) == len(dataset)
    indices = [0, 3, 4, 7]  # another batching than the cache build's
    with torch.no_grad():
        expected = model(**uncached_batch(training, processor, dataset, indices))
        cached = model(**cached_batch(tower_cache, cache, indices))
    torch.testing.assert_close(cached.logits, expected.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached.loss, expected.loss, atol=1e-5, rtol=1e-5)


def test_cached_train_step_gives_the_same_gradients_with_dropout_off(tower_cache, training, processor, tmp_path):
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

    loss, expected = gradients(uncached_batch(training, processor, dataset, indices))
    cached_loss, cached = gradients(cached_batch(tower_cache, cache, indices))
    torch.testing.assert_close(cached_loss, loss, atol=1e-5, rtol=1e-5)
    assert expected and set(cached) == set(expected)
    assert not any(".audio_model." in f".{name}" or ".text_model." in f".{name}" for name in cached)
    for name in expected:
        torch.testing.assert_close(cached[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)


def test_cache_is_reused_and_kept_for_new_cross_layers(tower_cache, processor, tmp_path, monkeypatch):
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
def test_a_stale_cache_is_refused_or_rebuilt(tower_cache, processor, feature_extractor, tmp_path, change):
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


def test_pretraining_cache_holds_the_uncached_unit_targets(tower_cache, training, processor, tmp_path):
    torch.manual_seed(0)
    config = tiny_config(mlm_loss_weight=0.0)
    config.audio_config.mask_time_prob = 0.05  # the mask embedding exists only with masking on
    model = CMTForPreTraining(config)
    with pytest.raises(ValueError, match="codebook is not fitted"):
        tower_cache.build_tower_cache(model, prepared_rows(4), processor, tmp_path / "unfitted")
    model.set_codebook(torch.randn(config.codebook_size, config.audio_config.hidden_size))
    dataset = prepared_rows(6)
    cache = tower_cache.build_tower_cache(model, dataset, processor, tmp_path / "cache")
    batch = uncached_batch(training, processor, dataset, range(6))
    features, frame_mask = model.compute_unit_features(batch["input_values"], batch["audio_attention_mask"])
    units = model.assign_units(features)
    cached = cached_batch(tower_cache, cache, range(6))
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


def test_cache_trains_the_cross_stack_from_a_trainer(tower_cache, training, processor, tmp_path):
    torch.manual_seed(0)
    model = CMTForSequenceClassification(CMTConfig.from_preset("tiny", num_labels=4))
    model.freeze_towers()
    cache = tower_cache.build_tower_cache(model, prepared_rows(12), processor, tmp_path / "cache")
    towers = {name: p.clone() for name, p in model.named_parameters() if not p.requires_grad}
    cross = model.cmt.encoder.layers[0].attention.q_proj.weight.clone()
    args = training.CMTTrainingArguments(
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
    trainer = training.CMTTrainer(
        model=model, args=args, train_dataset=cache, data_collator=tower_cache.TowerOutputCollator()
    )
    trainer.train()
    assert all(torch.equal(p, towers[name]) for name, p in model.named_parameters() if name in towers)
    assert not torch.equal(model.cmt.encoder.layers[0].attention.q_proj.weight, cross)
    assert all(np.isfinite(entry["train_loss"]) for entry in trainer.state.log_history if "train_loss" in entry)


def test_script_fine_tunes_one_fold_from_caches(tmp_path, monkeypatch):
    import tower_cache

    generator = np.random.default_rng(0)
    features = Features(
        {"audio": __import__("datasets").Audio(sampling_rate=16000), "text": Value("string"),
         "label": ClassLabel(names=["negative", "positive"])}
    )  # fmt: skip

    def split(size):
        rows = {"audio": [], "text": [], "label": []}
        for index in range(size):
            rows["audio"].append(
                {"array": generator.standard_normal(4000).astype(np.float32) * 0.1, "sampling_rate": 16000}
            )
            rows["text"].append(SENTENCES[index % len(SENTENCES)])
            rows["label"].append(index % 2)
        return Dataset.from_dict(rows, features=features)

    data = tmp_path / "data"
    DatasetDict({"train": split(8), "validation": split(4), "test": split(4)}).save_to_disk(str(data))
    output = tmp_path / "run"
    arguments = [
        "tower_cache.py", "--task", "dataset", "--dataset_path", str(data), "--preset", "tiny",
        "--tower_cache_dir", str(tmp_path / "caches"), "--output_dir", str(output), "--num_train_epochs", "1",
        "--per_device_train_batch_size", "4", "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true",
    ]  # fmt: skip
    monkeypatch.setattr("sys.argv", arguments)
    tower_cache.main()
    results = json.loads((output / "results.json").read_text())
    assert "ua" in results["metrics"]
    assert {path.name for path in (tmp_path / "caches").iterdir()} == {"train", "validation", "test"}
