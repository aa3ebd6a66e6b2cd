"""CMTModel, CMTForSequenceClassification and CMTForPreTraining on tiny random towers."""

import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import HubertConfig, HubertModel, RobertaConfig, RobertaForMaskedLM, RobertaModel

from modeling_cmt import (
    CMTConfig,
    CMTForPreTraining,
    CMTForSequenceClassification,
    CMTModel,
    masked_mean,
    orthogonality_loss,
)
from modeling_cmt.configuration_cmt import load_preset


NO_DROPOUT = {"hidden_dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "feat_proj_dropout": 0.0}


class CMTModelTester:
    """Builds tiny configs (from the `tiny` preset) and the matching models."""

    def __init__(self, **overrides):
        self.overrides = {"num_labels": 4, **overrides}

    def config(self, **overrides) -> CMTConfig:
        return CMTConfig.from_preset("tiny", **{**self.overrides, **overrides})

    @staticmethod
    def no_dropout_config(**overrides) -> CMTConfig:
        preset = load_preset("tiny")["config"]
        audio = {**preset["audio_config"], **NO_DROPOUT, "mask_time_prob": 0.0}
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


def fitted_pretraining_model(config: CMTConfig) -> CMTForPreTraining:
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


# --- shapes ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("modality,num_cross_layers", [("both", 2), ("both", 0), ("audio", 0), ("text", 0)], ids=str)
def test_output_shapes_for_every_modality(make_batch, modality, num_cross_layers):
    config = CMTModelTester().config(modality=modality, num_cross_layers=num_cross_layers)
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
        frames = (batch["input_values"].shape[1] - 325) // 320 + 1  # tiny front end: stride 320, receptive field 325
        assert base.last_hidden_state.shape == (3, frames, 32)
        assert base.audio_pooled_output.shape == (3, 32)
        assert base.audio_frame_mask.shape == (3, frames)
        assert len(base.hidden_states) == num_cross_layers + 1
    if modality == "audio":
        assert model.cmt.text_model is None and base.text_last_hidden_state is None
    else:
        assert base.text_last_hidden_state.shape == (3, batch["input_ids"].shape[1], 32)
        assert base.text_first_token_output.shape == base.text_pooled_output.shape == (3, 32)


def test_pretraining_outputs_and_losses(make_batch):
    config = CMTModelTester().config(matching_loss_weight=0.5)
    model = fitted_pretraining_model(config).train()
    batch = make_batch()
    input_ids, mlm_labels = mlm_inputs(batch)
    outputs = model(**{**batch, "input_ids": input_ids}, mlm_labels=mlm_labels)
    frames = (batch["input_values"].shape[1] - 325) // 320 + 1
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
def test_each_pretraining_loss_can_be_switched_off(make_batch, disabled):
    config = CMTModelTester().config(**{"matching_loss_weight": 1.0, disabled: 0.0})
    model = fitted_pretraining_model(config)
    batch = make_batch()
    input_ids, mlm_labels = mlm_inputs(batch)
    outputs = model(**{**batch, "input_ids": input_ids}, mlm_labels=mlm_labels)
    name = disabled.replace("_weight", "")
    assert getattr(outputs, name) is None
    others = [n for n in ("unit_loss", "mlm_loss", "matching_loss") if n != name]
    torch.testing.assert_close(outputs.loss, sum(getattr(outputs, n) for n in others))


def test_unfitted_codebook_is_a_clear_error(make_batch):
    model = CMTForPreTraining(CMTModelTester().config())
    with pytest.raises(ValueError, match="codebook has not been fitted"):
        model(**make_batch())


def test_matching_pairs_rotate_transcripts_without_duplicates():
    model = CMTForPreTraining(CMTModelTester().config(matching_loss_weight=1.0))
    for _ in range(20):
        permutation, labels = model._matching_pairs(6, "cpu")
        assert sorted(permutation.tolist()) == list(range(6))
        assert torch.equal(labels.bool(), permutation == torch.arange(6))


# --- gradients ---------------------------------------------------------------------------------------------------


def _assert_all_trainable_parameters_get_gradients(model, skip=()):
    missing = [
        name
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
        and name not in skip
        and (parameter.grad is None or not torch.isfinite(parameter.grad).all() or parameter.grad.abs().sum() == 0)
    ]
    assert not missing, f"no (finite, non-zero) gradient for {missing}"


def test_gradients_reach_every_trainable_parameter_classification(make_batch):
    config = CMTModelTester().config(pooling="layer_pooler", ortho_weight=0.5)
    model = CMTForSequenceClassification(config).train()
    outputs = model(**make_batch(), labels=torch.tensor([0, 2, 3]))
    assert torch.isfinite(outputs.loss)
    torch.testing.assert_close(outputs.loss, outputs.task_loss + 0.5 * outputs.ortho_loss)
    outputs.loss.backward()
    # The mask embedding is used only when SpecAugment happens to mask a frame.
    _assert_all_trainable_parameters_get_gradients(model, skip={"cmt.audio_model.masked_spec_embed"})


def _matching_draw(model, seed):
    torch.manual_seed(seed)
    return int(model._matching_pairs(4, "cpu")[1].sum())


def test_gradients_reach_every_trainable_parameter_pretraining(make_batch):
    model = fitted_pretraining_model(CMTModelTester().config(matching_loss_weight=1.0)).train()
    batch = make_batch(lengths=(8000, 8000, 7200, 6400))
    input_ids, mlm_labels = mlm_inputs(batch)
    seed = next(s for s in range(100) if 0 < _matching_draw(model, s) < 4)  # some transcripts shuffled, some kept
    torch.manual_seed(seed)
    outputs = model(**{**batch, "input_ids": input_ids}, mlm_labels=mlm_labels)
    assert 0 < outputs.matching_labels.sum() < 4
    outputs.loss.backward()
    _assert_all_trainable_parameters_get_gradients(model)


def test_freezing_controls(make_batch):
    model = CMTForSequenceClassification(CMTModelTester().config())
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


def test_activation_checkpointing_gives_the_same_gradients(make_batch):
    config = CMTModelTester.no_dropout_config(ortho_weight=0.1)
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
def test_padded_batch_equals_items_one_by_one(make_batch, pooling):
    model = CMTForSequenceClassification(CMTModelTester().config(pooling=pooling)).eval()
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


SENT_LONG = "I can't believe you did that, it is wonderful and terrible at once!"


def test_eager_and_sdpa_attention_agree(make_batch, tmp_path):
    model = CMTForSequenceClassification(CMTModelTester().config(pooling="layer_pooler")).eval()
    model.save_pretrained(tmp_path)
    eager = CMTForSequenceClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    sdpa = CMTForSequenceClassification.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    assert sdpa.cmt.audio_model.config._attn_implementation == "sdpa"
    batch = make_batch()
    with torch.no_grad():
        torch.testing.assert_close(eager(**batch).logits, sdpa(**batch).logits, atol=1e-5, rtol=1e-5)


def test_attention_maps_on_request(make_batch):
    model = CMTModel(CMTModelTester().config()).eval()
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
        actual_audio = model.cmt.audio_model(batch["input_values"], attention_mask=batch["audio_attention_mask"])
        expected_text = roberta(batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        actual_text = model.cmt.text_model(batch["input_ids"], attention_mask=batch["attention_mask"])
    if positional_conv != "fft":  # the tower's own convolution (on CPU, "auto" is the convolution): bit for bit
        assert torch.equal(actual_audio.last_hidden_state, expected_audio)
    else:  # the positional convolution by FFT: the same to float32 rounding on every real frame (padded frames
        # are near-zero vectors that the tower's LayerNorm blows up, in both implementations: meaningless values)
        frames = hubert._get_feature_vector_attention_mask(expected_audio.shape[1], batch["audio_attention_mask"])
        assert frames.sum() < frames.numel()  # the batch is padded
        torch.testing.assert_close(
            actual_audio.last_hidden_state[frames.bool()], expected_audio[frames.bool()], rtol=1e-5, atol=1e-5
        )
    assert torch.equal(actual_text.last_hidden_state, expected_text)
    assert model.config.audio_config._attn_implementation == hubert.config._attn_implementation


@pytest.mark.parametrize(
    ("batch", "channels", "frames", "kernel", "groups"),
    [(2, 768, 249, 128, 16), (3, 32, 7, 16, 4), (1, 8, 1, 4, 2), (2, 12, 40, 5, 3)],
)
def test_fft_grouped_conv1d_equals_conv1d_values_and_gradients(batch, channels, frames, kernel, groups):
    from modeling_cmt.modeling_cmt import fft_grouped_conv1d

    torch.manual_seed(0)
    inputs = torch.randn(batch, channels, frames, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(channels, channels // groups, kernel, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(channels, dtype=torch.float64, requires_grad=True)
    padding = kernel // 2
    expected = torch.nn.functional.conv1d(inputs, weight, bias, padding=padding, groups=groups)
    actual = fft_grouped_conv1d(inputs, weight, bias, padding, groups)  # float32 inside
    assert actual.shape == expected.shape and actual.dtype == torch.float32
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual.double(), expected, rtol=0, atol=2e-6 * scale)
    probe = torch.randn_like(expected)
    expected_grads = torch.autograd.grad((expected * probe).sum(), (inputs, weight, bias))
    actual_grads = torch.autograd.grad((actual.double() * probe).sum(), (inputs, weight, bias))
    for got, want in zip(actual_grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=2e-6 * want.abs().max().item())


def test_fft_positional_conv_keeps_parameters_and_trains_like_the_tower(make_batch):
    torch.manual_seed(0)
    fft = CMTForSequenceClassification(CMTModelTester.no_dropout_config(positional_conv_implementation="fft")).train()
    conv = CMTForSequenceClassification(
        CMTModelTester.no_dropout_config(positional_conv_implementation="conv")
    ).train()
    assert type(fft.cmt.audio_model.encoder.pos_conv_embed).__name__ == "CMTHubertPositionalConvEmbedding"
    assert type(conv.cmt.audio_model.encoder.pos_conv_embed).__name__ == "HubertPositionalConvEmbedding"
    assert fft.state_dict().keys() == conv.state_dict().keys()
    conv.load_state_dict(fft.state_dict())
    batch = {**make_batch(), "labels": torch.tensor([0, 1, 3])}
    fft_loss, conv_loss = fft(**batch).loss, conv(**batch).loss
    torch.testing.assert_close(fft_loss, conv_loss, rtol=1e-5, atol=1e-6)
    fft_loss.backward()
    conv_loss.backward()
    for (name, got), (_, want) in zip(fft.named_parameters(), conv.named_parameters()):
        if want.grad is not None:
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-6, msg=name)
    copied = __import__("copy").deepcopy(fft)  # the swapped class survives copies (Trainer, EMA, pickling)
    assert type(copied.cmt.audio_model.encoder.pos_conv_embed) is type(fft.cmt.audio_model.encoder.pos_conv_embed)


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


def test_pretraining_model_loads_the_text_mlm_head(tower_dirs):
    audio_dir, text_dir = tower_dirs
    model = CMTForPreTraining.from_audio_text_pretrained(str(audio_dir), str(text_dir))
    reference = RobertaForMaskedLM.from_pretrained(text_dir)
    assert torch.equal(model.mlm_head.dense.weight, reference.lm_head.dense.weight)
    assert model.mlm_head.decoder.weight is model.cmt.text_model.embeddings.word_embeddings.weight
    assert torch.equal(model.mlm_head.decoder.weight, reference.lm_head.decoder.weight)


# --- save / load -------------------------------------------------------------------------------------------------


def test_save_and_load_round_trip_is_bit_exact(make_batch, tmp_path):
    model = fitted_pretraining_model(CMTModelTester().config(pooling="layer_pooler"))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    stored = load_file(tmp_path / "model.safetensors")
    assert torch.equal(stored["codebook"], model.codebook)
    loaded = CMTForPreTraining.from_pretrained(tmp_path)
    for (name, expected), (loaded_name, actual) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert name == loaded_name and torch.equal(expected, actual), name
    assert loaded.codebook_is_fitted
    classifier = CMTForSequenceClassification(CMTModelTester().config())
    classifier.save_pretrained(tmp_path / "cls")
    batch = make_batch()
    with torch.no_grad():
        assert torch.equal(
            classifier.eval()(**batch).logits,
            CMTForSequenceClassification.from_pretrained(tmp_path / "cls").eval()(**batch).logits,
        )


def test_wrong_num_labels_needs_ignore_mismatched_sizes(tmp_path):
    CMTForSequenceClassification(CMTModelTester().config(num_labels=4)).save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="size mismatch|ignore_mismatched_sizes"):
        CMTForSequenceClassification.from_pretrained(tmp_path, num_labels=3)
    model = CMTForSequenceClassification.from_pretrained(tmp_path, num_labels=3, ignore_mismatched_sizes=True)
    assert model.classifier.out_proj.weight.shape == (3, 64)


def test_no_parameter_comes_back_uninitialised(tmp_path):
    CMTModel(CMTModelTester().config()).save_pretrained(tmp_path)
    for model_class in (CMTForSequenceClassification, CMTForPreTraining):
        model = model_class.from_pretrained(tmp_path)
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                assert torch.isfinite(tensor).all() and tensor.abs().max() < 50, name
        if model_class is CMTForPreTraining:
            assert not model.codebook_is_fitted  # a missing codebook stays zero, never garbage
        head = model.classifier.dense.weight if model_class is CMTForSequenceClassification else model.unit_head.weight
        assert 0.005 < head.std() < 0.05  # initializer_range=0.02, not left at torch defaults or zeros


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


def test_model_ortho_loss_uses_projected_pooled_text(make_batch):
    config = CMTModelTester().config(
        text_config={**load_preset("tiny")["config"]["text_config"], "hidden_size": 48, "num_attention_heads": 4}
    )
    model = CMTForSequenceClassification(config).eval()
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


def test_layer_pooler_weights_are_a_softmax(make_batch):
    model = CMTModel(CMTModelTester().config(pooling="layer_pooler")).eval()
    with torch.no_grad():
        model.layer_pooler.layer_weights.copy_(torch.tensor([0.5, -1.0]))
        outputs = model(**make_batch(), output_hidden_states=True)
    weights = outputs.layer_pooler_weights
    torch.testing.assert_close(weights, torch.softmax(torch.tensor([0.5, -1.0]), -1))
    assert weights.sum().item() == pytest.approx(1.0)
    mixed = weights[0] * outputs.hidden_states[1] + weights[1] * outputs.hidden_states[2]
    torch.testing.assert_close(outputs.audio_pooled_output, masked_mean(mixed, outputs.audio_frame_mask))


def test_cross_hidden_state_index_picks_the_pooled_state(make_batch):
    model = CMTModel(CMTModelTester().config(cross_hidden_state_index=0)).eval()
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


@pytest.fixture
def tiny_model():
    return CMTForSequenceClassification(CMTModelTester().config()).eval()


def test_audio_shorter_than_the_front_end_is_rejected(tiny_model, make_batch):
    batch = make_batch(lengths=(8000, 60))
    with pytest.raises(ValueError, match="Audio item 1 has 60 samples.*at least 325"):
        tiny_model(**batch)


def test_nan_audio_is_rejected(tiny_model, make_batch):
    batch = make_batch()
    batch["input_values"][2, 10] = float("nan")
    with pytest.raises(ValueError, match="Audio item 2 contains NaN"):
        tiny_model(**batch)


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


def test_token_ids_outside_the_vocabulary_are_rejected(tiny_model, make_batch):
    batch = make_batch()
    batch["input_ids"][0, 1] = 5000
    with pytest.raises(ValueError, match="outside the text tower's vocabulary"):
        tiny_model(**batch)


def test_labels_out_of_range_are_rejected(tiny_model, make_batch):
    with pytest.raises(ValueError, match=r"integer class ids in \[0, 4\)"):
        tiny_model(**make_batch(), labels=torch.tensor([0, 1, 4]))


def test_regression_head(make_batch):
    model = CMTForSequenceClassification(CMTModelTester().config(num_labels=1))
    outputs = model(**make_batch(), labels=torch.tensor([-1.5, 0.0, 2.5]))
    assert outputs.logits.shape == (3, 1) and model.config.problem_type == "regression"
    torch.testing.assert_close(
        outputs.task_loss, ((outputs.logits.squeeze(-1) - torch.tensor([-1.5, 0.0, 2.5])) ** 2).mean()
    )


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"modality": "video"}, "`modality` must be one of"),
        ({"modality": "audio"}, "set `num_cross_layers=0`"),
        ({"pooling": "max"}, "`pooling` must be one of"),
        ({"pooling": "layer_pooler", "num_cross_layers": 0}, "needs `num_cross_layers` > 0"),
        ({"cross_hidden_state_index": 5}, "`cross_hidden_state_index` must be in"),
        ({"cross_num_attention_heads": 5}, "divisible by `cross_num_attention_heads`"),
        ({"num_cross_layers": -1}, "must be >= 0"),
        ({"positional_conv_implementation": "cudnn"}, "`positional_conv_implementation` must be one of"),
        ({"feature_encoder_chunk_samples": 0}, "`feature_encoder_chunk_samples` must be a positive number"),
        ({"ortho_weight": -0.1}, "`ortho_weight` must be >= 0"),
        ({"audio_config": {"model_type": "bert"}}, "wav2vec2-family"),
    ],
)
def test_invalid_config_values_name_the_offending_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        CMTModelTester().config(**overrides)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(
        ValueError, match="Unknown preset 'cmt-huge'. Available presets: cmt-4, cmt-base, cmt-large, demo, tiny"
    ):
        CMTConfig.from_preset("cmt-huge")


def test_presets_describe_the_paper_models():
    cmt4, base, large = (CMTConfig.from_preset(name) for name in ("cmt-4", "cmt-base", "cmt-large"))
    assert cmt4.num_cross_layers == 4 and cmt4.audio_config.hidden_size == 768 and cmt4.text_config.hidden_size == 768
    assert base.audio_config.num_hidden_layers + base.num_cross_layers == 12
    assert large.audio_config.hidden_size == large.text_config.hidden_size == 1024
    assert large.audio_config.do_stable_layer_norm and large.cross_layer_init == "random"


def test_audio_top_layers_refuses_pre_ln_towers(tmp_path, tower_dirs):
    audio_dir, text_dir = tower_dirs
    config = HubertConfig.from_pretrained(audio_dir)
    config.do_stable_layer_norm = True
    HubertModel(config).save_pretrained(tmp_path / "pre_ln")
    with pytest.raises(ValueError, match="needs a post-LN audio tower"):
        CMTModel.from_audio_text_pretrained(
            str(tmp_path / "pre_ln"), str(text_dir), num_cross_layers=1, cross_layer_init="audio_top_layers"
        )


# --- precomputed (cached) frozen-tower outputs -------------------------------------------------------------------


def test_cached_tower_outputs_give_the_same_classification(make_batch):
    model = CMTForSequenceClassification(CMTModelTester().config(pooling="layer_pooler")).eval()
    batch = make_batch()
    with torch.no_grad():
        expected = model(**batch).logits
        audio = model.cmt.audio_model(batch["input_values"], attention_mask=batch["audio_attention_mask"])
        frame_mask = model.cmt.audio_model._get_feature_vector_attention_mask(
            audio.last_hidden_state.shape[1], batch["audio_attention_mask"]
        )
        text = model.cmt.text_model(batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        cached = model(
            audio_tower_output=audio.last_hidden_state,
            audio_frame_mask=frame_mask,
            text_tower_output=text,
            attention_mask=batch["attention_mask"],
        ).logits
    torch.testing.assert_close(cached, expected, atol=1e-6, rtol=1e-6)


def test_cached_pretraining_masks_the_tower_output_and_needs_unit_labels(make_batch):
    model = fitted_pretraining_model(CMTModelTester().config(mlm_loss_weight=0.0)).eval()
    batch = make_batch()
    with torch.no_grad():
        states = model.cmt.audio_model(batch["input_values"], attention_mask=batch["audio_attention_mask"])[0]
        frame_mask = model.cmt.audio_model._get_feature_vector_attention_mask(
            states.shape[1], batch["audio_attention_mask"]
        )
        units = model.assign_units(
            model.compute_unit_features(batch["input_values"], batch["audio_attention_mask"])[0]
        )
        text = model.cmt.text_model(batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
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


def test_frozen_feature_encoder_runs_in_chunks_with_the_same_results(make_batch):
    torch.manual_seed(0)
    chunked = CMTForSequenceClassification(CMTModelTester.no_dropout_config(feature_encoder_chunk_samples=5000))
    whole = CMTForSequenceClassification(CMTModelTester.no_dropout_config(feature_encoder_chunk_samples=None))
    whole.load_state_dict(chunked.state_dict())
    assert chunked.state_dict().keys() == whole.state_dict().keys()
    encoder = chunked.cmt.audio_model.feature_extractor
    assert type(encoder).__name__ == "CMTHubertFeatureEncoder"
    calls = []
    encoder.conv_layers[0].register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    batch = {**make_batch(), "labels": torch.tensor([0, 1, 3])}  # 8000 / 5600 / 4000 samples, padded to 8000

    with torch.no_grad():  # inference: one item per chunk (5000 samples < one padded item)
        torch.testing.assert_close(chunked.eval()(**batch).logits, whole.eval()(**batch).logits, rtol=0, atol=1e-6)
    assert calls == [1, 1, 1]

    calls.clear()  # training with the feature encoder trainable: the whole batch at once (its gradient is needed)
    chunked.train()(**batch).loss.backward()
    assert calls == [3]

    calls.clear()  # fine-tuning default: frozen feature encoder, chunks, same loss and gradients
    for model in (chunked, whole):
        model.zero_grad()
        model.freeze_feature_encoder()
    chunked_loss, whole_loss = chunked.train()(**batch).loss, whole.train()(**batch).loss
    assert calls == [1, 1, 1]
    torch.testing.assert_close(chunked_loss, whole_loss, rtol=0, atol=1e-6)
    chunked_loss.backward()
    whole_loss.backward()
    for (name, got), (_, want) in zip(chunked.named_parameters(), whole.named_parameters()):
        if want.grad is not None:
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-7, msg=name)
