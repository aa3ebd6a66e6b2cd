"""cmt_training.tower_cache: cached tower outputs give what the towers give, stale caches are never used, and the
cache trains the cross-modal stack from a Trainer (`run_finetune.py --cache_tower_outputs`: tests/examples/
test_training.py)."""

import copy
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset

from cmt_training import tower_cache
from cmt_training.arguments import CMTTrainingArguments, ModelArguments
from cmt_training.build import build_model, build_processor
from cmt_training.data import AudioTextCollator, prepare_split
from cmt_training.tasks import load_user_dataset
from cmt_training.trainer import CMTTrainer
from modeling_cmt import CMTConfig, CMTForPreTraining, CMTForSequenceClassification


@pytest.fixture
def prepared_rows(sentences):
    """A factory of rows as `prepare_split` makes them: waveform (16 kHz float32), length, text, labels (class ids,
    or sentiment scores in [-3, 3] for regression)."""

    def make(count: int = 10, seed: int = 0, regression: bool = False) -> Dataset:
        return _prepared_rows(sentences, count, seed, regression)

    return make


def _prepared_rows(sentences, count: int, seed: int, regression: bool) -> Dataset:
    generator = np.random.default_rng(seed)
    lengths = generator.integers(3000, 9000, count)
    labels = generator.uniform(-3, 3, count).round(2).tolist() if regression else [int(i % 4) for i in range(count)]
    return Dataset.from_dict(
        {
            "waveform": [(generator.standard_normal(n) * 0.1).astype(np.float32) for n in lengths],
            "length": [int(n) for n in lengths],
            "text": [sentences[i % len(sentences)] for i in range(count)],
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
def test_cached_logits_and_loss_equal_the_uncached_model(
    processor, tmp_path, architecture, no_dropout_config, prepared_rows
):
    torch.manual_seed(0)
    model = CMTForSequenceClassification(no_dropout_config(**architecture)).eval()
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


def test_an_audio_only_cache_leaves_the_text_tower_training(processor, tmp_path, no_dropout_config, prepared_rows):
    torch.manual_seed(0)
    model = CMTForSequenceClassification(no_dropout_config(ortho_weight=0.1))
    model.base_model.audio_model.requires_grad_(False)
    dataset = prepared_rows()
    cache = tower_cache.build_tower_cache(model, dataset, processor, tmp_path / "cache", towers=("audio",))
    assert "text_tower_output" not in cache.column_names and list(cache["text"]) == list(dataset["text"])
    meta = json.loads((tmp_path / "cache" / tower_cache.META_FILE).read_text())
    assert meta["towers"] == ["audio"]
    indices = [0, 3, 4, 7]
    batch = tower_cache.TowerOutputCollator(processor=processor)([cache[i] for i in indices])
    expected_batch = uncached_batch(processor, dataset, indices)
    torch.testing.assert_close(batch["input_ids"], expected_batch["input_ids"])
    model.train()  # dropout is off: train mode only switches gradients on
    cached = model(**batch)
    expected = model(**expected_batch)
    torch.testing.assert_close(cached.loss, expected.loss, atol=1e-5, rtol=1e-5)
    cached.loss.backward()
    text_grads = [p.grad for p in model.base_model.text_model.parameters() if p.grad is not None]
    assert text_grads and any(grad.abs().sum() > 0 for grad in text_grads)  # the text tower trains from the cache
    assert tower_cache.tower_cache_fingerprint(
        model, dataset, processor, towers=("audio",)
    ) != tower_cache.tower_cache_fingerprint(model, dataset, processor)
    with pytest.raises(ValueError, match="need their transcripts tokenized"):
        tower_cache.TowerOutputCollator()([cache[0]])
    # an audio-only model with the same audio tower caches no transcripts: its cache is another one
    audio_only = CMTForSequenceClassification(no_dropout_config(modality="audio", num_cross_layers=0))
    audio_only.base_model.audio_model.load_state_dict(model.base_model.audio_model.state_dict())
    assert tower_cache.tower_cache_fingerprint(
        audio_only, dataset, processor, towers=("audio",)
    ) != tower_cache.tower_cache_fingerprint(model, dataset, processor, towers=("audio",))


def test_regression_cache_keeps_float_labels(processor, tmp_path, no_dropout_config, prepared_rows):
    torch.manual_seed(0)
    model = CMTForSequenceClassification(no_dropout_config(num_labels=1, problem_type="regression")).eval()
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


def test_cached_train_step_gives_the_same_gradients_with_dropout_off(
    processor, tmp_path, no_dropout_config, prepared_rows
):
    torch.manual_seed(0)
    model = CMTForSequenceClassification(no_dropout_config(ortho_weight=0.1))
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


def test_cache_is_reused_and_kept_for_new_cross_layers(
    processor, tmp_path, monkeypatch, no_dropout_config, prepared_rows
):
    torch.manual_seed(0)
    model = CMTForSequenceClassification(no_dropout_config())
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
def test_a_stale_cache_is_refused_or_rebuilt(
    processor, feature_extractor, tmp_path, change, no_dropout_config, prepared_rows
):
    torch.manual_seed(0)
    model = CMTForSequenceClassification(no_dropout_config())
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
        encoded = processor.tokenizer([dataset[0]["text"]], return_tensors="pt")
        states = model.cmt.get_text_features(encoded["input_ids"], encoded["attention_mask"]).last_hidden_state
    torch.testing.assert_close(rebuilt[0]["text_tower_output"], states[0], atol=1e-5, rtol=1e-5)


def test_pretraining_cache_holds_the_uncached_unit_targets(processor, tmp_path, no_dropout_config, prepared_rows):
    torch.manual_seed(0)
    config = no_dropout_config(mlm_loss_weight=0.0)
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


def test_cache_trains_the_cross_stack_from_a_trainer(processor, tmp_path, prepared_rows):
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


def test_runs_building_one_cache_at_once_share_it(processor, tmp_path, no_dropout_config, prepared_rows):
    """Two runs that start together on the same cache folder (the study's parallel runs): one builds it, the other
    waits and reuses it; without the lock both wrote the same temporary file and one failed."""
    torch.manual_seed(0)
    model = CMTForSequenceClassification(no_dropout_config())
    dataset = prepared_rows(24)
    start = threading.Barrier(2)
    built, errors = [], []

    def build():
        start.wait()
        try:
            built.append(tower_cache.build_tower_cache(copy.deepcopy(model), dataset, processor, tmp_path / "c"))
        except Exception as error:  # reported below with the other thread's outcome
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(built) == 2
    first, second = ([row["audio_tower_output"] for row in cache] for cache in built)
    assert len(first) == 24 and all(torch.equal(a, b) for a, b in zip(first, second))
    meta = read_json(tmp_path / "c" / tower_cache.META_FILE)
    assert meta["rows"] == 24
