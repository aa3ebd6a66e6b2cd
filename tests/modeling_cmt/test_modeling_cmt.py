"""CMTModel, CMTForSequenceClassification and CMTForPreTraining on tiny random towers."""

import math
import time

import huggingface_hub
import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    HubertConfig,
    HubertModel,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaModel,
    Trainer,
    TrainingArguments,
)

from modeling_cmt import (
    CMTForPreTraining,
    CMTForSequenceClassification,
    CMTModel,
    masked_mean,
    orthogonality_loss,
)
from modeling_cmt.configuration_cmt import load_preset
from modeling_cmt.modeling_cmt import CMTCheckpointError


MODEL_CLASSES = (CMTModel, CMTForSequenceClassification, CMTForPreTraining)
SENT_LONG = "I can't believe you did that, it is wonderful and terrible at once!"


def fitted_pretraining_model(config) -> CMTForPreTraining:
    model = CMTForPreTraining(config)
    model.set_codebook(torch.randn(config.codebook_size, config.audio_config.hidden_size))
    return model


def mlm_inputs(batch, mask_token_id=4):
    """Masks every third real token after <s> and returns (input_ids, mlm_labels)."""
    input_ids = batch["input_ids"].clone()
    labels = torch.full_like(input_ids, -100)
    positions = torch.zeros_like(input_ids, dtype=torch.bool)
    positions[:, 1::3] = True
    positions &= batch["attention_mask"].bool()
    labels[positions] = input_ids[positions]
    input_ids[positions] = mask_token_id
    return input_ids, labels


def frames_of(batch) -> int:
    return (batch["input_values"].shape[1] - 325) // 320 + 1  # tiny front end: stride 320, receptive field 325


def run(model, batch, **kwargs):
    """The model's outputs on a processor batch; pretraining models get masked tokens, MLM labels and (unless the
    caller gives them) the same masked frames every time."""
    if isinstance(model, CMTForPreTraining):
        input_ids, mlm_labels = mlm_inputs(batch)
        if model.unit_head is not None and "mask_time_indices" not in kwargs:
            kwargs["mask_time_indices"] = torch.zeros(len(input_ids), frames_of(batch), dtype=torch.bool)
            kwargs["mask_time_indices"][:, 2:6] = True
        return model(**{**batch, "input_ids": input_ids}, mlm_labels=mlm_labels, **kwargs)
    return model(**batch, **kwargs)


def build(model_class, config):
    return fitted_pretraining_model(config) if model_class is CMTForPreTraining else model_class(config)


# --- shapes ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("modality,num_cross_layers", [("both", 2), ("both", 0), ("audio", 0), ("text", 0)], ids=str)
def test_output_shapes_for_every_modality(make_batch, tiny_config, modality, num_cross_layers):
    config = tiny_config(modality=modality, num_cross_layers=num_cross_layers)
    batch = make_batch()
    model = CMTForSequenceClassification(config).eval()
    with torch.no_grad():
        outputs = model(**batch, output_hidden_states=True)
    assert outputs.logits.shape == (3, 4)
    fused = {"both": 64, "audio": 32, "text": 32}[modality]
    assert outputs.fused_output.shape == (3, fused)
    assert (outputs.ortho_loss is not None) == (modality == "both")
    base = model.cmt(**batch, output_hidden_states=True)
    if modality == "text":
        assert model.cmt.audio_model is None and base.last_hidden_state is None
    else:
        frames = frames_of(batch)
        assert base.last_hidden_state.shape == (3, frames, 32)
        assert base.audio_pooled_output.shape == (3, 32)
        assert base.audio_frame_mask.shape == (3, frames) and base.audio_frame_mask.dtype == torch.bool
        assert len(base.hidden_states) == num_cross_layers + 1
    if modality == "audio":
        assert model.cmt.text_model is None and base.text_last_hidden_state is None
    else:
        assert base.text_last_hidden_state.shape == (3, batch["input_ids"].shape[1], 32)
        assert base.text_first_token_output.shape == base.text_pooled_output.shape == (3, 32)


def test_pretraining_outputs_and_losses(make_batch, tiny_config):
    model = fitted_pretraining_model(tiny_config(matching_loss_weight=0.5)).train()
    batch = make_batch()
    input_ids, mlm_labels = mlm_inputs(batch)
    outputs = model(**{**batch, "input_ids": input_ids}, mlm_labels=mlm_labels)
    frames = frames_of(batch)
    assert outputs.unit_logits.shape == (3, frames, 16)
    assert outputs.unit_labels.shape == outputs.mask_time_indices.shape == (3, frames)
    assert outputs.mlm_logits.shape == (int((mlm_labels != -100).sum()), 1000)
    assert outputs.matching_logits.shape == (3, 2)
    for name in ("unit_loss", "mlm_loss", "matching_loss", "loss"):
        assert torch.isfinite(getattr(outputs, name)), name
    expected = outputs.unit_loss + outputs.mlm_loss + 0.5 * outputs.matching_loss
    torch.testing.assert_close(outputs.loss, expected)
    # Unit targets are the nearest centroids of the unmasked tower features.
    features, _ = model.compute_unit_features(batch["input_values"], batch["audio_attention_mask"])
    distances = ((features[..., None, :] - model.codebook) ** 2).sum(-1)
    assert torch.equal(outputs.unit_labels, distances.argmin(-1))


@pytest.mark.parametrize("disabled", ["unit_loss_weight", "mlm_loss_weight", "matching_loss_weight"])
def test_each_pretraining_loss_can_be_switched_off(make_batch, tiny_config, disabled):
    model = fitted_pretraining_model(tiny_config(**{"matching_loss_weight": 1.0, disabled: 0.0}))
    outputs = run(model, make_batch())
    name = disabled.replace("_weight", "")
    assert getattr(outputs, name) is None
    others = [n for n in ("unit_loss", "mlm_loss", "matching_loss") if n != name]
    torch.testing.assert_close(outputs.loss, sum(getattr(outputs, n) for n in others))


def test_pretraining_heads_exist_only_for_losses_that_are_on(tiny_config, tmp_path):
    model = CMTForPreTraining(tiny_config())  # default: unit and MLM on, matching off
    assert model.matching_head is None and model.unit_head is not None and model.mlm_head is not None
    model.save_pretrained(tmp_path)
    assert not [key for key in load_file(tmp_path / "model.safetensors") if key.startswith("matching_head.")]
    text_only = CMTForPreTraining.from_pretrained(tmp_path, unit_loss_weight=0.0)
    assert text_only.unit_head is None and text_only.mlm_head is not None
    no_mlm = CMTForPreTraining(tiny_config(mlm_loss_weight=0.0, matching_loss_weight=1.0))
    assert no_mlm.mlm_head is None and no_mlm.get_output_embeddings() is None and no_mlm.matching_head is not None


def test_unfitted_codebook_is_a_clear_error(make_batch, tiny_config):
    model = CMTForPreTraining(tiny_config())
    with pytest.raises(ValueError, match="codebook has not been fitted"):
        model(**make_batch())


def test_matching_pairs_rotate_transcripts_without_duplicates(tiny_config):
    model = CMTForPreTraining(tiny_config(matching_loss_weight=1.0))
    for _ in range(20):
        permutation, labels = model._matching_pairs(6, "cpu")
        assert sorted(permutation.tolist()) == list(range(6))
        assert torch.equal(labels.bool(), permutation == torch.arange(6))


# --- transformers 5 conventions: outputs, embeddings, tuples, Trainer ------------------------------------------------


@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda cls: cls.__name__)
def test_every_model_returns_hidden_states_and_attentions_on_request(make_batch, tiny_config, model_class):
    model = build(model_class, tiny_config(matching_loss_weight=0.5)).eval()
    batch = make_batch()
    frames, tokens = frames_of(batch), batch["input_ids"].shape[1]
    with torch.no_grad():
        plain = run(model, batch)
        outputs = run(model, batch, output_hidden_states=True, output_attentions=True)
    assert plain.hidden_states is None and plain.attentions is None and plain.cross_attentions is None
    assert [tuple(state.shape) for state in outputs.hidden_states] == [(3, frames, 32)] * 3
    assert [tuple(weights.shape) for weights in outputs.attentions] == [(3, 4, frames, frames)] * 2
    assert [tuple(weights.shape) for weights in outputs.cross_attentions] == [(3, 4, frames, tokens)] * 2


@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda cls: cls.__name__)
def test_a_list_of_indices_selects_hidden_states(make_batch, tiny_config, model_class):
    model = build(model_class, tiny_config()).eval()
    batch = make_batch()
    with torch.no_grad():
        every = run(model, batch, output_hidden_states=True).hidden_states
        chosen = run(model, batch, output_hidden_states=[0, -1]).hidden_states
        single = run(model, batch, output_hidden_states=1).hidden_states
    assert len(every) == len(chosen) == len(single) == 3  # positions keep their index; the others are None
    assert torch.equal(chosen[0], every[0]) and torch.equal(chosen[2], every[2]) and chosen[1] is None
    assert single[0] is None and torch.equal(single[1], every[1]) and single[2] is None


@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda cls: cls.__name__)
def test_return_dict_false_gives_tuples(make_batch, tiny_config, model_class):
    model = build(model_class, tiny_config()).eval()
    batch = make_batch()
    with torch.no_grad():
        as_dict = run(model, batch)
        as_tuple = run(model, batch, return_dict=False)
    assert isinstance(as_tuple, tuple)
    expected = as_dict.to_tuple()
    assert len(as_tuple) == len(expected) and all(torch.equal(a, b) for a, b in zip(as_tuple, expected))


@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda cls: cls.__name__)
def test_resize_token_embeddings_for_added_tokens(make_batch, tiny_config, model_class):
    model = build(model_class, tiny_config()).eval()
    model.resize_token_embeddings(1010)
    assert model.config.text_config.vocab_size == 1010
    assert model.get_input_embeddings().weight.shape == (1010, 32)
    assert model.base_model.text_model.config.vocab_size == 1010
    batch = make_batch()
    batch["input_ids"][:, 1] = 1005  # a new token
    with torch.no_grad():
        outputs = run(model, batch)
    if model_class is CMTForPreTraining:
        assert outputs.mlm_logits.shape[-1] == 1010
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_trainer_treats_the_models_as_taking_no_loss_kwargs(tiny_config, tmp_path):
    """`forward(**kwargs)` must not make Trainer pass `num_items_in_batch` (HF-NOTES: DDP loss scaling)."""
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    for model_class in MODEL_CLASSES:
        trainer = Trainer(model=model_class(tiny_config()), args=args)
        assert trainer.model_accepts_loss_kwargs is False, model_class.__name__


# --- tower features ------------------------------------------------------------------------------------------------


def test_tower_features_are_the_towers_own_outputs(make_batch, tiny_config):
    model = CMTModel(tiny_config()).eval()
    batch = make_batch()
    with torch.no_grad():
        audio = model.get_audio_features(
            batch["input_values"], batch["audio_attention_mask"], output_hidden_states=True
        )
        text = model.get_text_features(batch["input_ids"], batch["attention_mask"])
        tower_audio = model.audio_model(
            batch["input_values"], attention_mask=batch["audio_attention_mask"], output_hidden_states=True
        )
        tower_text = model.text_model(batch["input_ids"], attention_mask=batch["attention_mask"])
        outputs = model(**batch)
    assert torch.equal(audio.last_hidden_state, tower_audio.last_hidden_state)
    assert all(torch.equal(a, b) for a, b in zip(audio.hidden_states, tower_audio.hidden_states))
    tower_mask = model.audio_model._get_feature_vector_attention_mask(
        audio.last_hidden_state.shape[1], batch["audio_attention_mask"]
    )
    assert torch.equal(audio.frame_mask, tower_mask) and not audio.frame_mask.all()  # padded items have fewer frames
    assert torch.equal(text.last_hidden_state, tower_text.last_hidden_state)
    assert torch.equal(text.attention_mask, batch["attention_mask"])
    assert torch.equal(outputs.text_last_hidden_state, text.last_hidden_state)
    assert torch.equal(outputs.audio_frame_mask, audio.frame_mask)
    unmasked = model.get_audio_features(batch["input_values"])
    assert unmasked.frame_mask is None and isinstance(
        model.get_text_features(batch["input_ids"], return_dict=False), tuple
    )


def test_forward_makes_no_host_sync(make_batch, tiny_config, monkeypatch):
    """The model's own code reads no tensor value on the host (no `.item()`, `bool()`, `int()`, `.tolist()`), so it
    neither stalls the device every step nor breaks `torch.compile` graphs."""
    model = CMTForSequenceClassification(tiny_config(pooling="layer_pooler")).eval()
    batch = make_batch()
    package = str(CMTModel.__module__).split(".")[0]
    syncs = []

    def recording(name):
        original = getattr(torch.Tensor, name)

        def method(self, *args, **kwargs):
            caller = __import__("sys")._getframe(1)
            if f"/{package}/" in caller.f_code.co_filename:
                syncs.append(f"{name} at {caller.f_code.co_filename}:{caller.f_lineno}")
            return original(self, *args, **kwargs)

        return method

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, recording(name))
    with torch.no_grad():
        model(**batch)
    assert not syncs


# --- gradients ---------------------------------------------------------------------------------------------------


def _parameters_without_gradient(model, skip=()) -> list[str]:
    return [
        name
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
        and name not in skip
        and (parameter.grad is None or not torch.isfinite(parameter.grad).all() or parameter.grad.abs().sum() == 0)
    ]


def test_gradients_reach_every_trainable_parameter_classification(make_batch, tiny_config):
    model = CMTForSequenceClassification(tiny_config(pooling="layer_pooler", ortho_weight=0.5)).train()
    outputs = model(**make_batch(), labels=torch.tensor([0, 2, 3]))
    assert torch.isfinite(outputs.loss)
    torch.testing.assert_close(outputs.loss, outputs.task_loss + 0.5 * outputs.ortho_loss)
    outputs.loss.backward()
    # The mask embedding is used only when SpecAugment happens to mask a frame.
    assert not _parameters_without_gradient(model, skip={"cmt.audio_model.masked_spec_embed"})


def _matching_draw(model, seed):
    torch.manual_seed(seed)
    return int(model._matching_pairs(4, "cpu")[1].sum())


@pytest.mark.parametrize(
    "weights",
    [
        {"unit_loss_weight": 1.0, "mlm_loss_weight": 1.0, "matching_loss_weight": 1.0},
        {"unit_loss_weight": 1.0, "mlm_loss_weight": 1.0, "matching_loss_weight": 0.0},
        {"unit_loss_weight": 1.0, "mlm_loss_weight": 0.0, "matching_loss_weight": 0.0},
        {"unit_loss_weight": 0.0, "mlm_loss_weight": 1.0, "matching_loss_weight": 1.0},
        {"unit_loss_weight": 0.0, "mlm_loss_weight": 0.0, "matching_loss_weight": 1.0},
    ],
    ids=lambda weights: "+".join(name.split("_")[0] for name, value in weights.items() if value) or "none",
)
def test_no_parameter_is_unused_in_a_pretraining_step(make_batch, tiny_config, weights):
    """DDP with `find_unused_parameters=False` (and gradient checkpointing) needs a gradient for every parameter in
    every step: only the heads of losses that are on exist."""
    model = fitted_pretraining_model(tiny_config(**weights)).train()
    model.activation_checkpointing_enable()
    batch = make_batch(lengths=(8000, 8000, 7200, 6400))
    if weights["matching_loss_weight"]:
        seed = next(s for s in range(100) if 0 < _matching_draw(model, s) < 4)  # some transcripts shuffled, some kept
        torch.manual_seed(seed)
    outputs = run(model, batch)
    if outputs.matching_labels is not None:
        assert 0 < outputs.matching_labels.sum() < 4
    outputs.loss.backward()
    skip = set() if weights["unit_loss_weight"] else {"cmt.audio_model.masked_spec_embed"}  # SpecAugment's draw
    assert not _parameters_without_gradient(model, skip=skip)


def test_mlm_alone_trains_only_the_text_side(make_batch, tiny_config):
    model = fitted_pretraining_model(tiny_config(unit_loss_weight=0.0, matching_loss_weight=0.0)).train()
    run(model, make_batch()).loss.backward()
    unused = _parameters_without_gradient(model)
    assert unused and all(name.startswith(("cmt.audio_model.", "cmt.encoder.")) for name in unused)


def test_freezing_controls(tiny_config):
    model = CMTForSequenceClassification(tiny_config())
    model.freeze_towers()
    trainable = {
        name.split(".")[1] for name, p in model.named_parameters() if p.requires_grad and name.startswith("cmt.")
    }
    assert trainable == {"encoder"}
    model.unfreeze_towers()
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(name.startswith("cmt.audio_model.feature_extractor.") for name in frozen)
    model.unfreeze_towers(include_feature_encoder=True)
    assert all(p.requires_grad for p in model.parameters())


def test_activation_checkpointing_gives_the_same_gradients(make_batch, no_dropout_config):
    config = no_dropout_config(ortho_weight=0.1)
    batch, labels = make_batch(), torch.tensor([1, 0, 3])
    reference = CMTForSequenceClassification(config).train()
    checkpointed = CMTForSequenceClassification(config).train()
    checkpointed.load_state_dict(reference.state_dict())
    checkpointed.activation_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in checkpointed.cmt.encoder.layers)
    reference(**batch, labels=labels).loss.backward()
    checkpointed(**batch, labels=labels).loss.backward()
    for (name, expected), (_, actual) in zip(reference.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(actual.grad, expected.grad, atol=1e-6, rtol=1e-5, msg=name)


# --- padding, attention implementations ------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["mean", "layer_pooler"])
def test_padded_batch_equals_items_one_by_one(make_batch, tiny_config, pooling):
    model = CMTForSequenceClassification(tiny_config(pooling=pooling)).eval()
    batch = make_batch(lengths=(8000, 5600, 4000), texts=[SENT_LONG, "Hi.", "The meeting is at ten."])
    assert (batch["attention_mask"] == 0).any() and (batch["audio_attention_mask"] == 0).any()
    with torch.no_grad():
        batched = model(**batch).logits
        for index in range(3):
            audio_length = int(batch["audio_attention_mask"][index].sum())
            text_length = int(batch["attention_mask"][index].sum())
            single = model(
                input_values=batch["input_values"][index : index + 1, :audio_length],
                audio_attention_mask=batch["audio_attention_mask"][index : index + 1, :audio_length],
                input_ids=batch["input_ids"][index : index + 1, :text_length],
                attention_mask=batch["attention_mask"][index : index + 1, :text_length],
            ).logits
            torch.testing.assert_close(batched[index : index + 1], single, atol=2e-5, rtol=1e-4)


def test_eager_and_sdpa_attention_agree(make_batch, tiny_config, tmp_path):
    model = CMTForSequenceClassification(tiny_config(pooling="layer_pooler")).eval()
    model.save_pretrained(tmp_path)
    eager = CMTForSequenceClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    sdpa = CMTForSequenceClassification.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    assert sdpa.cmt.audio_model.config._attn_implementation == "sdpa"
    batch = make_batch()
    with torch.no_grad():
        torch.testing.assert_close(eager(**batch).logits, sdpa(**batch).logits, atol=1e-5, rtol=1e-5)


def test_attention_maps_on_request(make_batch, tiny_config):
    model = CMTModel(tiny_config()).eval()
    batch = make_batch()
    with torch.no_grad():
        outputs = model(**batch, output_attentions=True)
    frames, tokens = outputs.last_hidden_state.shape[1], batch["input_ids"].shape[1]
    assert len(outputs.cross_attentions) == 2
    for cross, self_attention in zip(outputs.cross_attentions, outputs.attentions):
        assert cross.shape == (3, 4, frames, tokens) and self_attention.shape == (3, 4, frames, frames)
        torch.testing.assert_close(cross.sum(-1), torch.ones(3, 4, frames))
        # padded text tokens get no attention
        padded = batch["attention_mask"] == 0
        assert cross.permute(0, 2, 3, 1)[padded[:, None, :].expand(-1, frames, -1)].abs().max() == 0


# --- equivalence with the plain transformers towers --------------------------------------------------------------


@pytest.fixture
def tower_dirs(tmp_path):
    """A tiny HuBERT and a tiny RoBERTa (with MLM head) saved as ordinary transformers checkpoints."""
    preset = load_preset("tiny")["config"]
    audio = HubertModel(HubertConfig(**{k: v for k, v in preset["audio_config"].items() if k != "model_type"}))
    text_config = RobertaConfig(**{k: v for k, v in preset["text_config"].items() if k != "model_type"})
    text_mlm = RobertaForMaskedLM(text_config)
    audio.save_pretrained(tmp_path / "audio")
    text_mlm.save_pretrained(tmp_path / "text")
    return tmp_path / "audio", tmp_path / "text"


@pytest.mark.parametrize("positional_conv", ["conv", "fft", "auto"])
def test_from_audio_text_pretrained_towers_equal_standalone(make_batch, tower_dirs, positional_conv):
    audio_dir, text_dir = tower_dirs
    model = CMTForSequenceClassification.from_audio_text_pretrained(
        str(audio_dir), str(text_dir), num_labels=4, positional_conv_implementation=positional_conv
    ).eval()
    hubert = HubertModel.from_pretrained(audio_dir).eval()
    roberta = RobertaModel.from_pretrained(text_dir, add_pooling_layer=False).eval()
    batch = make_batch()
    with torch.no_grad():
        expected_audio = hubert(batch["input_values"], attention_mask=batch["audio_attention_mask"]).last_hidden_state
        actual_audio = model.cmt.get_audio_features(batch["input_values"], batch["audio_attention_mask"])
        expected_text = roberta(batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        actual_text = model.cmt.get_text_features(batch["input_ids"], batch["attention_mask"])
    if positional_conv != "fft":  # the tower's own convolution (on CPU, "auto" is the convolution): bit for bit
        assert torch.equal(actual_audio.last_hidden_state, expected_audio)
    else:  # the positional convolution by FFT: the same to float32 rounding on every real frame (padded frames
        # are near-zero vectors that the tower's LayerNorm blows up, in both implementations: meaningless values)
        frames = actual_audio.frame_mask
        assert frames.sum() < frames.numel()  # the batch is padded
        torch.testing.assert_close(
            actual_audio.last_hidden_state[frames], expected_audio[frames], rtol=1e-5, atol=1e-5
        )
    assert torch.equal(actual_text.last_hidden_state, expected_text)
    assert model.config.audio_config._attn_implementation == hubert.config._attn_implementation


@pytest.mark.parametrize("modality", ["audio", "text"])
def test_single_modality_pooled_features_equal_plain_tower(make_batch, tower_dirs, modality):
    audio_dir, text_dir = tower_dirs
    model = CMTForSequenceClassification.from_audio_text_pretrained(
        str(audio_dir), str(text_dir), modality=modality, num_cross_layers=0, num_labels=4
    ).eval()
    batch = make_batch()
    with torch.no_grad():
        outputs = model.cmt(**batch)
        logits = model(**batch).logits
        if modality == "audio":
            hubert = HubertModel.from_pretrained(audio_dir).eval()
            states = hubert(batch["input_values"], attention_mask=batch["audio_attention_mask"]).last_hidden_state
            frame_mask = hubert._get_feature_vector_attention_mask(states.shape[1], batch["audio_attention_mask"])
            expected = (states * frame_mask[..., None]).sum(1) / frame_mask.sum(1, keepdim=True)
            torch.testing.assert_close(outputs.audio_pooled_output, expected, atol=1e-6, rtol=1e-6)
            assert outputs.text_first_token_output is None
        else:
            roberta = RobertaModel.from_pretrained(text_dir).eval()
            states = roberta(batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            expected = states[:, 0]
            torch.testing.assert_close(outputs.text_first_token_output, expected, atol=1e-6, rtol=1e-6)
            assert outputs.audio_pooled_output is None
        torch.testing.assert_close(logits, model.classifier(expected))


def test_audio_top_layers_initialisation_moves_tower_layers(tower_dirs):
    audio_dir, text_dir = tower_dirs
    hubert_state = HubertModel.from_pretrained(audio_dir).state_dict()
    model = CMTModel.from_audio_text_pretrained(
        str(audio_dir), str(text_dir), num_cross_layers=1, cross_layer_init="audio_top_layers"
    )
    assert len(model.audio_model.encoder.layers) == 1
    assert model.config.audio_config.num_hidden_layers == 1
    moved = model.encoder.layers[0].state_dict()
    for key in ("attention.q_proj.weight", "feed_forward.output_dense.bias", "final_layer_norm.weight"):
        assert torch.equal(moved[key], hubert_state[f"encoder.layers.1.{key}"])
    assert torch.equal(
        model.audio_model.state_dict()["encoder.layers.0.attention.k_proj.weight"],
        hubert_state["encoder.layers.0.attention.k_proj.weight"],
    )


def test_audio_top_layers_refuses_pre_ln_towers(tmp_path, tower_dirs):
    audio_dir, text_dir = tower_dirs
    config = HubertConfig.from_pretrained(audio_dir)
    config.do_stable_layer_norm = True
    HubertModel(config).save_pretrained(tmp_path / "pre_ln")
    with pytest.raises(ValueError, match="needs a post-LN audio tower"):
        CMTModel.from_audio_text_pretrained(
            str(tmp_path / "pre_ln"), str(text_dir), num_cross_layers=1, cross_layer_init="audio_top_layers"
        )


def test_pretraining_model_loads_the_text_mlm_head(tower_dirs):
    audio_dir, text_dir = tower_dirs
    model = CMTForPreTraining.from_audio_text_pretrained(str(audio_dir), str(text_dir))
    reference = RobertaForMaskedLM.from_pretrained(text_dir)
    assert torch.equal(model.mlm_head.dense.weight, reference.lm_head.dense.weight)
    assert model.mlm_head.decoder.weight is model.cmt.text_model.embeddings.word_embeddings.weight
    assert torch.equal(model.mlm_head.decoder.weight, reference.lm_head.decoder.weight)


# --- save / load -------------------------------------------------------------------------------------------------


def test_save_and_load_round_trip_is_bit_exact(make_batch, tiny_config, tmp_path):
    model = fitted_pretraining_model(tiny_config(pooling="layer_pooler"))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    stored = load_file(tmp_path / "model.safetensors")
    assert torch.equal(stored["codebook"], model.codebook)
    loaded = CMTForPreTraining.from_pretrained(tmp_path)
    for (name, expected), (loaded_name, actual) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert name == loaded_name and torch.equal(expected, actual), name
    assert loaded.codebook_is_fitted
    classifier = CMTForSequenceClassification(tiny_config())
    classifier.save_pretrained(tmp_path / "cls")
    batch = make_batch()
    with torch.no_grad():
        assert torch.equal(
            classifier.eval()(**batch).logits,
            CMTForSequenceClassification.from_pretrained(tmp_path / "cls").eval()(**batch).logits,
        )


def test_wrong_num_labels_needs_ignore_mismatched_sizes(tiny_config, tmp_path):
    CMTForSequenceClassification(tiny_config(num_labels=4)).save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="size mismatch|ignore_mismatched_sizes"):
        CMTForSequenceClassification.from_pretrained(tmp_path, num_labels=3)
    model = CMTForSequenceClassification.from_pretrained(tmp_path, num_labels=3, ignore_mismatched_sizes=True)
    assert model.classifier.out_proj.weight.shape == (3, 64)


def test_no_parameter_comes_back_uninitialised(tiny_config, tmp_path):
    CMTModel(tiny_config()).save_pretrained(tmp_path)
    for model_class in (CMTForSequenceClassification, CMTForPreTraining):
        model = model_class.from_pretrained(tmp_path, matching_loss_weight=1.0)
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                assert torch.isfinite(tensor).all() and tensor.abs().max() < 50, name
        if model_class is CMTForPreTraining:
            assert not model.codebook_is_fitted  # a missing codebook stays zero, never garbage
            heads = [model.unit_head.weight, model.matching_head.weight]
        else:
            heads = [model.classifier.dense.weight]
        for head in heads:
            assert 0.005 < head.std() < 0.05  # initializer_range=0.02, not left at torch defaults or zeros


def test_from_pretrained_names_a_checkpoint_of_another_model_type(tower_dirs):
    """A HuBERT folder given to a CMT class raised `property 'hidden_size' of 'CMTConfig' object has no setter`."""
    audio_dir, _ = tower_dirs
    for model_class in MODEL_CLASSES:
        with pytest.raises(ValueError, match=r"'.*audio' holds a 'hubert' model, not a CMT checkpoint, so .* use "):
            model_class.from_pretrained(audio_dir)


def test_towers_load_from_safetensors_only_unless_opted_in(tower_dirs, tmp_path, save_pickle_only):
    audio_dir, text_dir = tower_dirs
    pickled_audio = save_pickle_only(HubertModel.from_pretrained(audio_dir), tmp_path / "pickled_audio")
    with pytest.raises(CMTCheckpointError, match=r"pickled_audio' holds its weights only as a pickle"):
        CMTModel.from_audio_text_pretrained(str(pickled_audio), str(text_dir))
    for opt_in in ({"use_safetensors": None}, {"audio_use_safetensors": False}):
        model = CMTModel.from_audio_text_pretrained(str(pickled_audio), str(text_dir), **opt_in)
        expected = HubertModel.from_pretrained(audio_dir).state_dict()
        assert all(torch.equal(tensor, expected[name]) for name, tensor in model.audio_model.state_dict().items())


def test_a_cmt_checkpoint_loads_from_safetensors_only_unless_opted_in(tiny_config, tmp_path, save_pickle_only):
    model = CMTForSequenceClassification(tiny_config())
    pickled = save_pickle_only(model, tmp_path / "pickled")
    with pytest.raises(CMTCheckpointError, match="opt in with `use_safetensors=False`"):
        CMTForSequenceClassification.from_pretrained(pickled)
    loaded = CMTForSequenceClassification.from_pretrained(pickled, use_safetensors=False)
    assert all(torch.equal(tensor, model.state_dict()[name]) for name, tensor in loaded.state_dict().items())


def test_an_unreachable_tower_checkpoint_says_what_hf_hub_offline_does(tower_dirs, tmp_path, monkeypatch):
    """Offline, `from_audio_text_pretrained("facebook/hubert-base-ls960", ...)` retried for 23 s before its error;
    the error now names HF_HUB_OFFLINE=1, which makes it fail at once."""
    _, text_dir = tower_dirs
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(
        ValueError, match=r"(?s)audio tower config from 'facebook/hubert-base-ls960'.* HF_HUB_OFFLINE is set"
    ):
        CMTModel.from_audio_text_pretrained(
            "facebook/hubert-base-ls960", str(text_dir), audio_cache_dir=str(tmp_path / "empty_cache")
        )
    assert time.perf_counter() - start < 5


# --- the paper's formulas ----------------------------------------------------------------------------------------


def test_orthogonality_loss_formula():
    orthogonal = orthogonality_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]]))
    parallel = orthogonality_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[2.0, 4.0]]))
    opposite = orthogonality_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[-5.0, 0.0]]))
    diagonal = orthogonality_loss(torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.0]]))
    assert orthogonal.item() == 0.0
    assert parallel.item() == pytest.approx(1.0) and opposite.item() == pytest.approx(1.0)
    assert diagonal.item() == pytest.approx(1 / math.sqrt(2))
    batch = orthogonality_loss(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 1.0], [2.0, 2.0]]))
    assert batch.item() == pytest.approx(0.5)


def test_model_ortho_loss_uses_projected_pooled_text(make_batch, tiny_config):
    model = CMTForSequenceClassification(tiny_config(text_config={"hidden_size": 48})).eval()
    assert model.cmt.text_projection.weight.shape == (32, 48)
    batch = make_batch()
    with torch.no_grad():
        outputs = model(**batch)
        base = model.cmt(**batch)
    audio, text = base.audio_pooled_output, model.cmt.text_projection(base.text_pooled_output)
    expected = ((audio * text).sum(-1).abs() / (audio.norm(dim=-1) * text.norm(dim=-1))).mean()
    torch.testing.assert_close(outputs.ortho_loss, expected)
    assert outputs.fused_output.shape == (3, 32 + 48)
    text_mask = batch["attention_mask"][..., None]
    expected_text = (base.text_last_hidden_state * text_mask).sum(1) / text_mask.sum(1)
    torch.testing.assert_close(base.text_pooled_output, expected_text)


def test_layer_pooler_weights_are_a_softmax(make_batch, tiny_config):
    model = CMTModel(tiny_config(pooling="layer_pooler")).eval()
    with torch.no_grad():
        model.layer_pooler.layer_weights.copy_(torch.tensor([0.5, -1.0]))
        outputs = model(**make_batch(), output_hidden_states=True)
    weights = outputs.layer_pooler_weights
    torch.testing.assert_close(weights, torch.softmax(torch.tensor([0.5, -1.0]), -1))
    assert weights.sum().item() == pytest.approx(1.0)
    mixed = weights[0] * outputs.hidden_states[1] + weights[1] * outputs.hidden_states[2]
    torch.testing.assert_close(outputs.audio_pooled_output, masked_mean(mixed, outputs.audio_frame_mask))


def test_cross_hidden_state_index_picks_the_pooled_state(make_batch, tiny_config):
    model = CMTModel(tiny_config(cross_hidden_state_index=0)).eval()
    with torch.no_grad():
        outputs = model(**make_batch(), output_hidden_states=True)
    torch.testing.assert_close(
        outputs.audio_pooled_output, masked_mean(outputs.hidden_states[0], outputs.audio_frame_mask)
    )
    assert not torch.allclose(outputs.hidden_states[0], outputs.last_hidden_state)


def test_masked_mean_ignores_padding():
    states = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert masked_mean(states, torch.tensor([[1, 1, 0]])).item() == 2.0


# --- bad input ---------------------------------------------------------------------------------------------------
# `forward` checks shapes; values (NaN, too-short items, token ids) are checked where data enters: CMTProcessor and
# the pipeline (see test_processing_cmt.py and test_pipeline_cmt.py).


@pytest.fixture
def tiny_model(tiny_config):
    return CMTForSequenceClassification(tiny_config()).eval()


def test_audio_shorter_than_the_front_end_is_rejected(tiny_model, processor):
    with pytest.raises(ValueError, match=r"Audio item 1 is too short: 60 samples.*at least 325"):
        processor(
            audio=[torch.randn(8000).numpy(), torch.randn(60).numpy()],
            text=["One.", "Two."],
            sampling_rate=16000,
            min_audio_samples=tiny_model.config.min_input_samples(),
        )
    with pytest.raises(ValueError, match=r"The audio batch has 300 samples.*needs at least 325"):
        tiny_model(input_values=torch.randn(2, 300), input_ids=torch.zeros(2, 3, dtype=torch.long))


def test_float_input_ids_are_named(tiny_model, make_batch):
    batch = make_batch()
    with pytest.raises(ValueError, match=r"`input_ids` must be an integer tensor of token ids.*torch.float32"):
        tiny_model(**{**batch, "input_ids": batch["input_ids"].float()})


def test_batch_size_mismatch_is_rejected(tiny_model, make_batch):
    batch = make_batch()
    with pytest.raises(ValueError, match="batch sizes differ"):
        tiny_model(**{**batch, "input_ids": batch["input_ids"][:2], "attention_mask": batch["attention_mask"][:2]})


def test_missing_modality_input_is_rejected(tiny_model, make_batch):
    batch = make_batch()
    with pytest.raises(ValueError, match="needs `input_ids`"):
        tiny_model(input_values=batch["input_values"], audio_attention_mask=batch["audio_attention_mask"])
    with pytest.raises(ValueError, match=r"shape \(batch, samples\)"):
        tiny_model(input_values=batch["input_values"][0], input_ids=batch["input_ids"])


def test_a_tokenizer_larger_than_the_vocabulary_is_rejected(processor, tiny_config):
    processor.check_model_config(tiny_config())  # 400 tokens fit the tiny preset's 1000
    with pytest.raises(
        ValueError, match=r"The tokenizer has \d+ tokens, more than the text tower's vocabulary \(100\)"
    ):
        processor.check_model_config(tiny_config(text_config={"vocab_size": 100}))
    processor.check_model_config(tiny_config(modality="audio", num_cross_layers=0, text_config={"vocab_size": 100}))


def test_labels_out_of_range_are_rejected(tiny_model, make_batch):
    with pytest.raises(ValueError, match=r"integer class ids in \[0, 4\)"):
        tiny_model(**make_batch(), labels=torch.tensor([0, 1, 4]))


def test_regression_head(make_batch, tiny_config):
    model = CMTForSequenceClassification(tiny_config(num_labels=1))
    outputs = model(**make_batch(), labels=torch.tensor([-1.5, 0.0, 2.5]))
    assert outputs.logits.shape == (3, 1) and model.config.problem_type == "regression"
    torch.testing.assert_close(
        outputs.task_loss, ((outputs.logits.squeeze(-1) - torch.tensor([-1.5, 0.0, 2.5])) ** 2).mean()
    )


# --- precomputed (cached) frozen-tower outputs -------------------------------------------------------------------


def test_cached_tower_outputs_give_the_same_classification(make_batch, tiny_config):
    model = CMTForSequenceClassification(tiny_config(pooling="layer_pooler")).eval()
    batch = make_batch()
    with torch.no_grad():
        expected = model(**batch).logits
        audio = model.cmt.get_audio_features(batch["input_values"], batch["audio_attention_mask"])
        text = model.cmt.get_text_features(batch["input_ids"], batch["attention_mask"])
        cached = model(
            audio_tower_output=audio.last_hidden_state,
            audio_frame_mask=audio.frame_mask,
            text_tower_output=text.last_hidden_state,
            attention_mask=text.attention_mask,
        ).logits
    torch.testing.assert_close(cached, expected, atol=1e-6, rtol=1e-6)


def test_cached_pretraining_masks_the_tower_output_and_needs_unit_labels(make_batch, tiny_config):
    model = fitted_pretraining_model(tiny_config(mlm_loss_weight=0.0)).eval()
    batch = make_batch()
    with torch.no_grad():
        audio = model.cmt.get_audio_features(batch["input_values"], batch["audio_attention_mask"])
        states, frame_mask = audio.last_hidden_state, audio.frame_mask
        units = model.assign_units(
            model.compute_unit_features(batch["input_values"], batch["audio_attention_mask"])[0]
        )
        text = model.cmt.get_text_features(batch["input_ids"], batch["attention_mask"]).last_hidden_state
        cached = {
            "audio_tower_output": states,
            "audio_frame_mask": frame_mask,
            "text_tower_output": text,
            "attention_mask": batch["attention_mask"],
        }
        with pytest.raises(ValueError, match="pass the cached `unit_labels`"):
            model(**cached)
        with pytest.raises(ValueError, match="drop `mlm_labels`"):
            model(**cached, unit_labels=units, mlm_labels=batch["input_ids"])
        mask = torch.zeros_like(units, dtype=torch.bool)
        mask[:, 2:6] = True
        outputs = model(**cached, unit_labels=units, mask_time_indices=mask)
        masked_states = torch.where(mask[..., None], model.cmt.audio_model.masked_spec_embed, states)
        reference = model.cmt(**{**cached, "audio_tower_output": masked_states}).last_hidden_state
    torch.testing.assert_close(outputs.unit_logits, model.unit_head(reference))
    scored = mask & frame_mask
    expected = torch.nn.functional.cross_entropy(outputs.unit_logits[scored], units[scored])
    torch.testing.assert_close(outputs.unit_loss, expected)


def test_cached_tower_outputs_of_the_wrong_shape_are_named(tiny_model):
    with pytest.raises(ValueError, match=r"`audio_tower_output` must have shape \(batch, length, 32\)"):
        tiny_model(audio_tower_output=torch.zeros(2, 5, 16), text_tower_output=torch.zeros(2, 3, 32))
    with pytest.raises(ValueError, match=r"`attention_mask` has shape \(2, 4\), `text_tower_output` has \(2, 3\)"):
        tiny_model(
            audio_tower_output=torch.zeros(2, 5, 32),
            text_tower_output=torch.zeros(2, 3, 32),
            attention_mask=torch.ones(2, 4, dtype=torch.long),
        )
