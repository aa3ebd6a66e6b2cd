"""PyTorch CMT: a HuBERT audio tower and a RoBERTa text tower joined by audio cross-modal transformer layers.

Chu et al., "Self-supervised Cross-modal Pretraining for Speech Emotion Recognition and Sentiment Analysis", Findings
of EMNLP 2022. The towers come from transformers unchanged; this file adds the cross-modal layers (paper eq. 1-5), the
pooling and fusion (eq. 6), the orthogonality regulariser (eq. 7-8), the layer pooler and the pretraining heads.
The audio tower's speed patches live in `tower_patches.py`; input values are checked where data enters
(`CMTProcessor`, the pipeline), so `forward` checks only shapes.
"""

import inspect
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from huggingface_hub import is_offline_mode
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.dynamic_module_utils import custom_object_save
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.models.hubert.modeling_hubert import eager_attention_forward
from transformers.models.roberta.modeling_roberta import RobertaLMHead
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices
from transformers.processing_utils import Unpack
from transformers.utils import (
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    ModelOutput,
    TransformersKwargs,
    logging,
)
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import (
    OutputRecorder,
    capture_outputs,
    resolve_hidden_states_indices,
    selected_hidden_states,
)

from .configuration_cmt import CMTConfig, load_preset, merge_config_values
from .tower_patches import patch_audio_tower


logger = logging.get_logger(__name__)

# The `from_pretrained` keyword arguments that say where a checkpoint's files are, for reading its config alone.
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")


# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class CMTAudioTowerOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, frames, audio_hidden_size)`):
        The audio tower's last hidden states: what enters the cross-modal stack.
    frame_mask (`torch.BoolTensor` of shape `(batch_size, frames)`, *optional*):
        `True` for real frames, `False` for frames made of padding; `None` when no `audio_attention_mask` was given
        (every frame is real).
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states`):
        The audio tower's hidden states, as the tower returns them.
    attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions`):
        The audio tower's attention weights, as the tower returns them.
    """

    last_hidden_state: torch.FloatTensor | None = None
    frame_mask: torch.BoolTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class CMTTextTowerOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, tokens, text_hidden_size)`):
        The text tower's last hidden states: what cross-attention reads.
    attention_mask (`torch.LongTensor` of shape `(batch_size, tokens)`, *optional*):
        1 for real tokens, 0 for padding: the mask that was given.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states`):
        The text tower's hidden states, as the tower returns them.
    attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions`):
        The text tower's attention weights, as the tower returns them.
    """

    last_hidden_state: torch.FloatTensor | None = None
    attention_mask: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class CMTModelOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, frames, audio_hidden_size)`, *optional*):
        Output of the last audio cross-modal layer (the audio tower's output when `num_cross_layers=0`). `None` for
        `modality="text"`.
    audio_pooled_output (`torch.FloatTensor` of shape `(batch_size, audio_hidden_size)`, *optional*):
        h̄_a: masked mean over frames of the audio representation chosen by `pooling` / `cross_hidden_state_index`.
    text_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, tokens, text_hidden_size)`, *optional*):
        The text tower's last hidden states. `None` for `modality="audio"`.
    text_pooled_output (`torch.FloatTensor` of shape `(batch_size, text_hidden_size)`, *optional*):
        h̄_w: masked mean over tokens of the text tower's last hidden states.
    text_first_token_output (`torch.FloatTensor` of shape `(batch_size, text_hidden_size)`, *optional*):
        h_w0: the text tower's last hidden state of the first token (`<s>`).
    audio_frame_mask (`torch.BoolTensor` of shape `(batch_size, frames)`, *optional*):
        Which audio frames are real (not padding), derived from the sample-level `audio_attention_mask`. A boolean
        tensor, unlike the 0/1 integer masks of the inputs.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states`):
        `num_cross_layers + 1` tensors of shape `(batch_size, frames, audio_hidden_size)`: the audio tower output that
        enters the cross-modal stack, then the output of each cross-modal layer. With a list of indices as
        `output_hidden_states` (transformers 5), the others are `None`.
    attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
        Self-attention weights of each cross-modal layer, `(batch_size, heads, frames, frames)`.
    cross_attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
        Audio-to-text cross-attention weights of each cross-modal layer, `(batch_size, heads, frames, tokens)`.
    layer_pooler_weights (`torch.FloatTensor` of shape `(num_cross_layers,)`, *optional*):
        Softmax weights of the layer pooler (`pooling="layer_pooler"`), one per cross-modal layer.
    """

    last_hidden_state: torch.FloatTensor | None = None
    audio_pooled_output: torch.FloatTensor | None = None
    text_last_hidden_state: torch.FloatTensor | None = None
    text_pooled_output: torch.FloatTensor | None = None
    text_first_token_output: torch.FloatTensor | None = None
    audio_frame_mask: torch.BoolTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    layer_pooler_weights: torch.FloatTensor | None = None


@dataclass
class CMTSequenceClassifierOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
        `task_loss + ortho_weight * ortho_loss` (paper eq. 8).
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
        Classification scores (before softmax) or regression outputs.
    task_loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
        Cross-entropy, MSE or BCE, by `config.problem_type`.
    ortho_loss (`torch.FloatTensor` of shape `()`, *optional*):
        L_ortho (paper eq. 7), batch mean; computed whenever both modalities are present.
    fused_output (`torch.FloatTensor` of shape `(batch_size, fused_size)`):
        h_fuse = h̄_a ⊕ h_w0 (paper eq. 6), the input of the head; one side only for single-modality models.
    hidden_states, attentions, cross_attentions, layer_pooler_weights:
        As in [`CMTModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    task_loss: torch.FloatTensor | None = None
    ortho_loss: torch.FloatTensor | None = None
    fused_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    layer_pooler_weights: torch.FloatTensor | None = None


@dataclass
class CMTForPreTrainingOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*):
        Weighted sum of the pretraining losses that were computed.
    unit_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Masked acoustic unit prediction loss (cross-entropy against codebook units at masked, paired frames).
    mlm_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Masked language modelling loss of the text tower (returned when `mlm_labels` is given).
    matching_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Audio–text matching loss (returned when `matching_loss_weight > 0` and the batch holds >= 2 items).
    unit_logits (`torch.FloatTensor` of shape `(batch_size, frames, codebook_size)`, *optional*):
        Unit predictions from the last cross-modal layer.
    unit_labels (`torch.LongTensor` of shape `(batch_size, frames)`, *optional*):
        The unit targets used (codebook assignments of the unmasked audio, or the given `unit_labels`).
    mask_time_indices (`torch.BoolTensor` of shape `(batch_size, frames)`, *optional*):
        The frames that were masked in the audio tower's input.
    mlm_logits (`torch.FloatTensor` of shape `(masked_tokens, vocab_size)`, *optional*):
        Masked language modelling predictions at the masked tokens.
    matching_logits (`torch.FloatTensor` of shape `(batch_size, 2)`, *optional*):
        Audio–text matching scores (index 1 = paired).
    matching_labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
        1 where the audio item was paired with its own transcript, 0 where with another item's.
    hidden_states, attentions, cross_attentions:
        As in [`CMTModelOutput`], for the (possibly masked and re-paired) inputs the losses were computed on.
    """

    loss: torch.FloatTensor | None = None
    unit_loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    matching_loss: torch.FloatTensor | None = None
    unit_logits: torch.FloatTensor | None = None
    unit_labels: torch.LongTensor | None = None
    mask_time_indices: torch.BoolTensor | None = None
    mlm_logits: torch.FloatTensor | None = None
    matching_logits: torch.FloatTensor | None = None
    matching_labels: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Functions
# ---------------------------------------------------------------------------------------------------------------------


def masked_mean(hidden_states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over dim 1 of `(batch, length, hidden)` states, counting only positions where `mask` is true."""
    if mask is None:
        return hidden_states.mean(dim=1)
    mask = mask.to(hidden_states.dtype).unsqueeze(-1)  # (batch, length, 1)
    return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def orthogonality_loss(audio_pooled: torch.Tensor, text_pooled: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """
    L_ortho = |h̄_aᵀ h̄_w| / (‖h̄_a‖ ‖h̄_w‖) (paper eq. 7): the absolute cosine between pooled audio and pooled text,
    averaged over the batch. Both inputs are `(batch, hidden)` of the same width.
    """
    cosine = nn.functional.cosine_similarity(audio_pooled, text_pooled, dim=-1, eps=eps)  # (batch,)
    return cosine.abs().mean()


def _check_tower_output(name: str, states: torch.Tensor, width: int, mask_name: str, mask: torch.Tensor | None):
    """A precomputed tower output must be `(batch, length, width)`, and its mask `(batch, length)`."""
    if states.dim() != 3 or states.shape[-1] != width:
        raise ValueError(f"`{name}` must have shape (batch, length, {width}), got {tuple(states.shape)}.")
    if mask is not None and mask.shape != states.shape[:2]:
        raise ValueError(f"`{mask_name}` has shape {tuple(mask.shape)}, `{name}` has {tuple(states.shape[:2])}.")


def _select_hidden_states(model: PreTrainedModel, states: tuple, output_hidden_states) -> tuple | None:
    """`states` as `output_hidden_states` asks: `None`, all of them, or (an index or a list of indices, as transformers
    5 accepts) the selected ones with `None` in the other places."""
    if output_hidden_states is None or output_hidden_states is False:
        return None
    selected = selected_hidden_states(output_hidden_states)
    if selected is None:
        return states
    kept = resolve_hidden_states_indices(model, selected, num_hidden_states=len(states))
    return tuple(state if index in kept else None for index, state in enumerate(states))


def _build_text_tower(text_config) -> PreTrainedModel:
    """The text tower as its transformers base model, without a pooling layer where the class has one."""
    model_class = MODEL_MAPPING[type(text_config)]
    if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        return model_class(text_config, add_pooling_layer=False)
    return model_class(text_config)


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------------


class CMTAttention(nn.Module):
    """Multi-head attention over the audio frames (self-attention) or from audio frames to text tokens (cross)."""

    def __init__(self, config: CMTConfig):
        super().__init__()
        self.config = config
        self.embed_dim = config.audio_config.hidden_size
        self.num_heads = config.cross_num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.cross_attention_dropout
        self.is_causal = False

        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, query_length, _ = hidden_states.shape
        key_value_states = hidden_states if key_value_states is None else key_value_states
        query = self.q_proj(hidden_states).view(batch_size, query_length, -1, self.head_dim).transpose(1, 2)
        key = self.k_proj(key_value_states).view(batch_size, key_value_states.shape[1], -1, self.head_dim)
        value = self.v_proj(key_value_states).view(batch_size, key_value_states.shape[1], -1, self.head_dim)
        key, value = key.transpose(1, 2), value.transpose(1, 2)  # (batch, heads, keys, head_dim)

        # Attention maps are only materialised by the eager kernel; the others return None for the weights.
        implementation = "eager" if kwargs.get("output_attentions") else self.config._attn_implementation
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        if implementation == "eager" and attention_mask is not None and attention_mask.dtype == torch.bool:
            attention_mask = torch.zeros_like(attention_mask, dtype=query.dtype).masked_fill(
                ~attention_mask, torch.finfo(query.dtype).min
            )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(batch_size, query_length, -1).contiguous()  # (batch, frames, hidden)
        return self.out_proj(attn_output), attn_weights


class CMTFeedForward(nn.Module):
    def __init__(self, config: CMTConfig):
        super().__init__()
        hidden_size = config.audio_config.hidden_size
        self.intermediate_dense = nn.Linear(hidden_size, config.cross_intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.cross_hidden_act]
        self.intermediate_dropout = nn.Dropout(config.cross_activation_dropout)
        self.output_dense = nn.Linear(config.cross_intermediate_size, hidden_size)
        self.output_dropout = nn.Dropout(config.cross_hidden_dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.intermediate_dropout(self.intermediate_act_fn(self.intermediate_dense(hidden_states)))
        return self.output_dropout(self.output_dense(hidden_states))


class CMTCrossModalLayer(GradientCheckpointingLayer):
    """
    One audio cross-modal transformer layer (paper eq. 1-5, post-LN). Parameter names of the self-attention and
    feed-forward blocks match a HuBERT encoder layer, so the tower's top layers can seed them.
    """

    def __init__(self, config: CMTConfig):
        super().__init__()
        hidden_size, eps = config.audio_config.hidden_size, config.cross_layer_norm_eps
        self.attention = CMTAttention(config)
        self.dropout = nn.Dropout(config.cross_hidden_dropout)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.cross_attention = CMTAttention(config)
        self.cross_attention_layer_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.feed_forward = CMTFeedForward(config)
        self.final_layer_norm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        text_states: torch.Tensor,
        text_attention_mask: torch.Tensor | None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        # eq. 1-2: self-attention over the audio frames, add & LayerNorm
        attended, _ = self.attention(hidden_states, attention_mask=attention_mask, **kwargs)
        hidden_states = self.layer_norm(hidden_states + self.dropout(attended))
        # eq. 3-4: cross-attention from audio frames to text tokens, add & LayerNorm
        attended, _ = self.cross_attention(
            hidden_states, key_value_states=text_states, attention_mask=text_attention_mask, **kwargs
        )
        hidden_states = self.cross_attention_layer_norm(hidden_states + self.dropout(attended))
        # eq. 5: feed-forward, add & LayerNorm
        return self.final_layer_norm(hidden_states + self.feed_forward(hidden_states))


class CMTCrossModalEncoder(nn.Module):
    """The stack of audio cross-modal layers; returns every layer's output for the pooler and the hidden-state choice."""

    def __init__(self, config: CMTConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([CMTCrossModalLayer(config) for _ in range(config.num_cross_layers)])

    def forward(
        self,
        hidden_states: torch.Tensor,
        frame_mask: torch.Tensor | None,
        text_states: torch.Tensor,
        text_mask: torch.Tensor | None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, ...]:
        attention_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden_states, attention_mask=frame_mask
        )  # audio keys: padded frames masked
        text_attention_mask = create_bidirectional_mask(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=text_mask,
            encoder_hidden_states=text_states,
        )  # text keys: padded tokens masked
        all_hidden_states = (hidden_states,)
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask, text_states, text_attention_mask, **kwargs)
            all_hidden_states += (hidden_states,)
        return all_hidden_states


class CMTLayerPooler(nn.Module):
    """The paper's layer pooler: a learned softmax-weighted average of the cross-modal layers' outputs."""

    def __init__(self, num_layers: int):
        super().__init__()
        self.layer_weights = nn.Parameter(torch.zeros(num_layers))

    def forward(self, layer_states: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        weights = nn.functional.softmax(self.layer_weights, dim=-1)  # (layers,)
        stacked = torch.stack(layer_states, dim=0)  # (layers, batch, frames, hidden)
        pooled = (weights.to(stacked.dtype)[:, None, None, None] * stacked).sum(dim=0)  # (batch, frames, hidden)
        return pooled, weights


class CMTClassificationHead(nn.Module):
    """RoBERTa-style head on h_fuse: dropout, dense + tanh, dropout, projection to the labels."""

    def __init__(self, input_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(input_size, input_size)
        self.out_proj = nn.Linear(input_size, num_labels)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.dense(self.dropout(fused)))
        return self.out_proj(self.dropout(hidden))


# ---------------------------------------------------------------------------------------------------------------------
# Loading checkpoints
# ---------------------------------------------------------------------------------------------------------------------


class CMTCheckpointError(Exception):
    """
    A checkpoint whose weights CMT will not load: stored only as a pickle (which can run code when loaded), or a
    damaged safetensors file. Not an `OSError` or `ValueError` on purpose: `transformers.pipeline()` catches those
    from every model class it tries and re-raises them as one dump of tracebacks; this error reaches the caller as the
    one sentence it is.
    """


def _refuse_pickle_weights(name_or_path, subfolder: str = "") -> None:
    """Raises `CMTCheckpointError` when the local folder `name_or_path` holds pickle weights (`pytorch_model.bin`)
    but no safetensors weights."""
    folder = os.path.join(name_or_path, subfolder)
    if not os.path.isdir(folder):
        return
    files = set(os.listdir(folder))
    pickles = [name for name in (WEIGHTS_NAME, WEIGHTS_INDEX_NAME) if name in files]
    if pickles and not files & {SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME}:
        raise CMTCheckpointError(
            f"{os.fspath(name_or_path)!r} holds its weights only as a pickle ({pickles[0]}), and loading a pickle can "
            "run any code hidden in it, so CMT loads safetensors weights only. If you trust where the file comes "
            "from, opt in with `use_safetensors=False` (a pipeline: `model_kwargs={'use_safetensors': False}`; "
            "cmt-predict, examples/explain.py and the training scripts: `--allow_pickle`), then `save_pretrained` "
            "the model once to get a model.safetensors."
        )


@contextmanager
def _clear_loading_errors(name_or_path, use_safetensors: bool | None, subfolder: str = ""):
    """Around a `from_pretrained`: refuses pickle-only folders (with `use_safetensors=True`) and names a damaged
    safetensors file, instead of the pickle loading or a bare `SafetensorError`."""
    if use_safetensors:
        _refuse_pickle_weights(name_or_path, subfolder)
    try:
        yield
    except SafetensorError as error:
        raise CMTCheckpointError(
            f"The safetensors weights of {os.fspath(name_or_path)!r} are damaged or incomplete ({error}), most likely "
            "cut short by an interrupted download or save: download or save them again."
        ) from error


def _offline_hint(name_or_path) -> str:
    """What to do when a Hub id cannot be loaded: how HF_HUB_OFFLINE=1 helps, or what it implies when it is set."""
    if os.path.isdir(name_or_path):
        return ""
    if is_offline_mode():
        return (
            f" HF_HUB_OFFLINE is set, so only the local Hugging Face cache is searched: download {name_or_path!r} "
            f"where there is network (`hf download {name_or_path}`) or pass a local folder."
        )
    return (
        " On a machine without network, set HF_HUB_OFFLINE=1: loading then uses only the local Hugging Face cache "
        "and fails at once instead of retrying."
    )


def _check_model_type(model_class, name_or_path, kwargs: dict) -> None:
    """Raises a `ValueError` unless the checkpoint's config (or the `config` passed) is a CMT config."""
    config = kwargs.get("config")
    if isinstance(config, PretrainedConfig):
        model_type = config.model_type
    else:
        hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
        model_type = PretrainedConfig.get_config_dict(config or name_or_path, **hub_kwargs)[0].get("model_type")
    if model_type != CMTConfig.model_type:
        raise ValueError(
            f"{os.fspath(name_or_path)!r} holds a {model_type!r} model, not a CMT checkpoint, so "
            f"{model_class.__name__}.from_pretrained cannot load it. To build CMT on tower checkpoints, use "
            f"{model_class.__name__}.from_audio_text_pretrained(audio_model_name_or_path, text_model_name_or_path)."
        )


# ---------------------------------------------------------------------------------------------------------------------
# Pretrained model base
# ---------------------------------------------------------------------------------------------------------------------


class CMTPreTrainedModel(PreTrainedModel):
    config_class = CMTConfig
    config: CMTConfig
    base_model_prefix = "cmt"
    main_input_name = "input_values"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _no_split_modules = ["CMTCrossModalLayer"]
    _can_record_outputs = {
        "attentions": OutputRecorder(CMTAttention, index=1, layer_name="attention"),
        "cross_attentions": OutputRecorder(CMTAttention, index=1, layer_name="cross_attention"),
    }
    # `forward(**kwargs)` would make Trainer pass `num_items_in_batch` and scale the logged loss by the number of
    # processes; the losses here are means over the batch.
    accepts_loss_kwargs = False
    # The pipeline class whose `custom_pipelines` entry and code a checkpoint of this class carries, so that
    # `pipeline(task, model=path, trust_remote_code=True)` works without the package; the package sets it at import.
    pipeline_class = None

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, CMTLayerPooler):
            init.zeros_(module.layer_weights)  # uniform average until trained
        elif isinstance(module, RobertaLMHead):
            init.zeros_(module.bias)
        elif isinstance(module, CMTForPreTraining):
            init.zeros_(module.codebook)  # all-zero = not fitted yet

    # --- loading ------------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path, *model_args, use_safetensors: bool | None = True, **kwargs
    ) -> "CMTPreTrainedModel":
        """
        As `PreTrainedModel.from_pretrained`, but from safetensors weights only unless told otherwise: a folder whose
        weights are only a pickle (`pytorch_model.bin`) is refused with a `CMTCheckpointError`, since loading a
        pickle can run code hidden in it. `use_safetensors=False` (or `None`, transformers' default) opts in. A
        checkpoint of another model type is refused with a `ValueError`, a damaged weights file is named.
        """
        if pretrained_model_name_or_path is None:
            return super().from_pretrained(None, *model_args, use_safetensors=use_safetensors, **kwargs)
        _check_model_type(cls, pretrained_model_name_or_path, kwargs)
        with _clear_loading_errors(pretrained_model_name_or_path, use_safetensors, kwargs.get("subfolder", "")):
            return super().from_pretrained(
                pretrained_model_name_or_path, *model_args, use_safetensors=use_safetensors, **kwargs
            )

    # --- construction from tower checkpoints and presets -------------------------------------------------------------

    # Whether `from_audio_text_pretrained` loads the text checkpoint's LM head too (the pretraining MLM head).
    _loads_text_lm_head = False

    @classmethod
    def from_audio_text_pretrained(
        cls, audio_model_name_or_path: str, text_model_name_or_path: str, **kwargs
    ) -> "CMTPreTrainedModel":
        """
        Builds a CMT model whose towers are loaded from two checkpoints (Hub ids or local folders) and whose
        cross-modal layers and heads are new.

        Keyword arguments prefixed with `audio_` / `text_` go to the tower's `from_pretrained` (e.g.
        `audio_revision="main"`, `text_attn_implementation="eager"`); the others configure [`CMTConfig`] (e.g.
        `num_cross_layers=4`, `num_labels=4`, `attn_implementation="sdpa"`). The towers load from safetensors weights
        only, as [`from_pretrained`] does; `use_safetensors` goes to both towers with transformers' meaning (`None`:
        safetensors where there are, else the pickle) and `audio_use_safetensors=False` loads one tower's pickle.

        Example:

        ```python
        >>> model = CMTForSequenceClassification.from_audio_text_pretrained(
        ...     "facebook/hubert-base-ls960", "FacebookAI/roberta-base", num_cross_layers=4, num_labels=4
        ... )
        ```"""
        audio_kwargs = {key[len("audio_") :]: kwargs.pop(key) for key in list(kwargs) if key.startswith("audio_")}
        text_kwargs = {key[len("text_") :]: kwargs.pop(key) for key in list(kwargs) if key.startswith("text_")}
        if "attn_implementation" in kwargs:
            audio_kwargs.setdefault("attn_implementation", kwargs["attn_implementation"])
            text_kwargs.setdefault("attn_implementation", kwargs["attn_implementation"])
        use_safetensors = kwargs.pop("use_safetensors", True)
        audio_kwargs.setdefault("use_safetensors", use_safetensors)
        text_kwargs.setdefault("use_safetensors", use_safetensors)

        audio_model = _load_tower(AutoModel, audio_model_name_or_path, "audio", audio_kwargs)
        wants_lm_head = cls._loads_text_lm_head and kwargs.get("mlm_loss_weight", CMTConfig.mlm_loss_weight) > 0
        text_model = _load_tower(
            AutoModelForMaskedLM if wants_lm_head else AutoModel, text_model_name_or_path, "text", text_kwargs
        )
        lm_head = getattr(text_model, "lm_head", None) if wants_lm_head else None
        if wants_lm_head:
            text_model = text_model.base_model

        audio_config = audio_model.config.to_dict()
        audio_state = audio_model.state_dict()
        num_cross_layers = kwargs.get("num_cross_layers", CMTConfig.num_cross_layers)
        moved_layers = {}
        if kwargs.get("cross_layer_init", "random") == "audio_top_layers" and num_cross_layers > 0:
            audio_config, audio_state, moved_layers = _split_top_layers(
                audio_config, audio_state, num_cross_layers, kwargs
            )

        config = CMTConfig(audio_config=audio_config, text_config=text_model.config.to_dict(), **kwargs)
        model = cls(config)
        cmt = model.base_model
        if cmt.audio_model is not None:
            cmt.audio_model.load_state_dict(audio_state, strict=True)
        if cmt.text_model is not None:
            missing, unexpected = cmt.text_model.load_state_dict(text_model.state_dict(), strict=False)
            unexpected = [key for key in unexpected if not key.startswith("pooler.")]
            if missing or unexpected:
                raise ValueError(
                    f"The text checkpoint {text_model_name_or_path!r} does not fit the text tower: missing "
                    f"{missing[:5]}, unexpected {unexpected[:5]}."
                )
        for index, layer_state in moved_layers.items():
            missing, unexpected = cmt.encoder.layers[index].load_state_dict(layer_state, strict=False)
            if unexpected or any(
                not key.startswith(("cross_attention.", "cross_attention_layer_norm.")) for key in missing
            ):
                raise ValueError(
                    f"Audio tower layer weights do not fit cross-modal layer {index}: missing {missing[:5]}, "
                    f"unexpected {unexpected[:5]}. Use cross_layer_init='random'."
                )
        loaded_from = {"audio_model.", "text_model."}
        if isinstance(lm_head, RobertaLMHead):
            model.mlm_head.load_state_dict(lm_head.state_dict())
            loaded_from.add("mlm_head.")
        new_modules = sorted(
            {
                ".".join(name.split(".")[: 3 if name.startswith("cmt.") else 2])
                for name, _ in model.named_parameters()
                if not any(part in name for part in loaded_from)
            }
        )
        seeded = (
            f"; self-attention and feed-forward of cross-modal layers {sorted(moved_layers)} come from the top audio tower layers"
            if moved_layers
            else ""
        )
        logger.warning(
            f"{cls.__name__}: towers loaded from {audio_model_name_or_path!r} and {text_model_name_or_path!r}{seeded}. "
            f"Newly initialised (train before use): {', '.join(new_modules) or 'nothing'}."
        )
        return model

    @classmethod
    def from_preset(cls, name: str, load_towers: bool = True, **overrides) -> "CMTPreTrainedModel":
        """
        Builds a model from a named preset (`tiny`, `demo`, `cmt-4`, `cmt-base`, `cmt-large`). With
        `load_towers=True` and a preset that names tower checkpoints, the towers are loaded with
        [`from_audio_text_pretrained`] (their configs come from the checkpoints); otherwise every weight is random
        (e.g. for benchmarks). Keyword arguments override the preset's values as in [`CMTConfig.from_preset`].
        """
        preset = load_preset(name)
        if load_towers and "audio_model_name_or_path" in preset:
            values = merge_config_values(preset["config"], overrides)
            tower_free = {key: value for key, value in values.items() if key not in ("audio_config", "text_config")}
            return cls.from_audio_text_pretrained(
                preset["audio_model_name_or_path"], preset["text_model_name_or_path"], **tower_free
            )
        return cls(CMTConfig.from_preset(name, **overrides))

    def save_pretrained(self, save_directory, *args, **kwargs):
        """
        As `PreTrainedModel.save_pretrained`; with the Auto classes registered (the package registers them), a head's
        checkpoint also lists its base model in `auto_map` (so it loads with `AutoModel`), and a class with a
        `pipeline_class` carries that pipeline (`custom_pipelines` in config.json, and its code).
        """
        if self._auto_class is not None:
            os.makedirs(save_directory, exist_ok=True)
            if self.base_model is not self and self.base_model._auto_class is not None:
                custom_object_save(self.base_model, save_directory, config=self.config)
            if self.pipeline_class is not None:
                self.config.custom_pipelines = self.pipeline_class.custom_pipelines()
                custom_object_save(self.pipeline_class, save_directory)
        return super().save_pretrained(save_directory, *args, **kwargs)

    # --- training controls -------------------------------------------------------------------------------------------

    def freeze_feature_encoder(self):
        """Stops gradients to the audio tower's convolutional feature encoder (the usual fine-tuning setting)."""
        audio_model = self.base_model.audio_model
        if audio_model is not None:
            audio_model.feature_extractor._freeze_parameters()

    def freeze_towers(self):
        """Freezes both towers (stage 1 of pretraining, probing): only cross-modal layers and heads train."""
        for tower in (self.base_model.audio_model, self.base_model.text_model):
            if tower is not None:
                tower.requires_grad_(False)

    def unfreeze_towers(self, include_feature_encoder: bool = False):
        """
        Unfreezes both towers (stage 2 of pretraining). The audio feature encoder stays frozen unless
        `include_feature_encoder=True`.
        """
        for tower in (self.base_model.audio_model, self.base_model.text_model):
            if tower is not None:
                tower.requires_grad_(True)
        if not include_feature_encoder:
            self.freeze_feature_encoder()


def _load_tower(auto_class, name_or_path: str, side: str, tower_kwargs: dict) -> PreTrainedModel:
    hub_kwargs = {key: tower_kwargs[key] for key in HUB_KWARGS if key in tower_kwargs}
    try:
        config = tower_kwargs.pop("config", None) or AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
    except OSError as error:
        raise ValueError(
            f"Could not load the {side} tower config from {name_or_path!r}: {error}{_offline_hint(name_or_path)}"
        ) from error
    if (
        auto_class is AutoModel
        and "add_pooling_layer" in inspect.signature(MODEL_MAPPING[type(config)].__init__).parameters
    ):
        tower_kwargs.setdefault("add_pooling_layer", False)
    try:
        with _clear_loading_errors(name_or_path, tower_kwargs.get("use_safetensors"), hub_kwargs.get("subfolder", "")):
            return auto_class.from_pretrained(name_or_path, config=config, **tower_kwargs)
    except OSError as error:
        raise ValueError(
            f"Could not load the {side} tower weights from {name_or_path!r}: {error}{_offline_hint(name_or_path)}"
        ) from error


def _split_top_layers(audio_config: dict, audio_state: dict, num_layers: int, kwargs: dict):
    """Removes the top `num_layers` layers from a post-LN audio tower; returns the shortened config and state and the
    moved layers' weights keyed by cross-modal layer index."""
    total = audio_config["num_hidden_layers"]
    if audio_config.get("do_stable_layer_norm", False):
        raise ValueError(
            "cross_layer_init='audio_top_layers' needs a post-LN audio tower (do_stable_layer_norm=False, as "
            "hubert-base); this tower is pre-LN (e.g. hubert-large). Use cross_layer_init='random'."
        )
    if num_layers > total:
        raise ValueError(f"num_cross_layers={num_layers} exceeds the audio tower's {total} layers.")
    tower_shape = {
        "cross_num_attention_heads": audio_config["num_attention_heads"],
        "cross_intermediate_size": audio_config["intermediate_size"],
        "cross_hidden_act": audio_config["hidden_act"],
        "cross_layer_norm_eps": audio_config["layer_norm_eps"],
    }
    for key, value in tower_shape.items():
        if kwargs.setdefault(key, value) != value:
            raise ValueError(
                f"cross_layer_init='audio_top_layers' copies tower layers, so {key} must equal the tower's {value!r} "
                f"(got {kwargs[key]!r})."
            )
    keep = total - num_layers
    audio_config = {**audio_config, "num_hidden_layers": keep}
    kept_state, moved = {}, {index: {} for index in range(num_layers)}
    for key, value in audio_state.items():
        if key.startswith("encoder.layers."):
            layer_index, rest = key[len("encoder.layers.") :].split(".", 1)
            if int(layer_index) >= keep:
                moved[int(layer_index) - keep][rest] = value
                continue
        kept_state[key] = value
    return audio_config, kept_state, moved


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------


class CMTModel(CMTPreTrainedModel):
    """
    The bare CMT model: audio tower, text tower, audio cross-modal layers, and the pooled representations h̄_a, h̄_w
    and h_w0. Single-modality configurations (`modality="audio"` / `"text"`) build only the tower they use.
    """

    def __init__(self, config: CMTConfig):
        super().__init__(config)
        uses_audio = config.modality in ("both", "audio")
        uses_text = config.modality in ("both", "text")
        self.audio_model = AutoModel.from_config(config.audio_config) if uses_audio else None
        if self.audio_model is not None:
            patch_audio_tower(
                self.audio_model, config.positional_conv_implementation, config.feature_encoder_chunk_samples
            )
        self.text_model = _build_text_tower(config.text_config) if uses_text else None
        audio_width, text_width = config.audio_config.hidden_size, config.text_config.hidden_size
        # Text states enter cross-attention (and L_ortho) in the audio width.
        self.text_projection = (
            nn.Linear(text_width, audio_width) if uses_audio and uses_text and audio_width != text_width else None
        )
        self.encoder = CMTCrossModalEncoder(config) if config.num_cross_layers > 0 else None
        self.layer_pooler = CMTLayerPooler(config.num_cross_layers) if config.pooling == "layer_pooler" else None
        self.post_init()

    def get_input_embeddings(self):
        return self.text_model.get_input_embeddings() if self.text_model is not None else None

    def set_input_embeddings(self, value: nn.Module):
        if self.text_model is None:
            raise ValueError("A `modality='audio'` model has no text tower, so no input embeddings to set.")
        self.text_model.set_input_embeddings(value)

    def min_input_samples(self) -> int:
        """The shortest audio (in samples) that the audio tower's convolutional front end turns into one frame."""
        return self.config.min_input_samples()

    def audio_frame_mask(self, audio_attention_mask: torch.Tensor) -> torch.BoolTensor:
        """Which frames of the audio tower's output are real, `(batch, frames)`, from the sample-level mask
        `(batch, samples)` (right-padded, as the processor pads)."""
        frames = self.config.audio_frames(audio_attention_mask.shape[-1])
        lengths = self.config.audio_frames(audio_attention_mask.sum(-1))  # (batch,)
        return torch.arange(frames, device=audio_attention_mask.device)[None, :] < lengths[:, None]

    @can_return_tuple
    def get_audio_features(
        self,
        input_values: torch.Tensor,
        audio_attention_mask: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CMTAudioTowerOutput:
        r"""
        The audio tower's output for raw audio and its frame mask: what `forward` feeds the cross-modal stack.
        Keyword arguments (e.g. `output_hidden_states`) go to the tower.

        Example:

        ```python
        >>> inputs = processor(audio=waveform, sampling_rate=16000)
        >>> audio = model.get_audio_features(inputs["input_values"], inputs["audio_attention_mask"])
        >>> audio.last_hidden_state.shape, audio.frame_mask.shape  # (batch, frames, hidden), (batch, frames)
        ```"""
        if self.audio_model is None:
            raise ValueError(f"A modality={self.config.modality!r} model has no audio tower.")
        outputs = self.audio_model(
            input_values.to(self.audio_model.dtype),
            attention_mask=audio_attention_mask,
            mask_time_indices=mask_time_indices,
            return_dict=True,
            **kwargs,
        )
        frame_mask = self.audio_frame_mask(audio_attention_mask) if audio_attention_mask is not None else None
        return CMTAudioTowerOutput(
            last_hidden_state=outputs.last_hidden_state,  # (batch, frames, hidden)
            frame_mask=frame_mask,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CMTTextTowerOutput:
        r"""
        The text tower's output for token ids and its token mask: what cross-attention reads. Keyword arguments go
        to the tower.
        """
        if self.text_model is None:
            raise ValueError(f"A modality={self.config.modality!r} model has no text tower.")
        outputs = self.text_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        return CMTTextTowerOutput(
            last_hidden_state=outputs.last_hidden_state,  # (batch, tokens, text_hidden)
            attention_mask=attention_mask,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def project_text(self, text_states: torch.Tensor) -> torch.Tensor:
        """Maps text-tower states into the audio width (identity when the widths already match)."""
        return self.text_projection(text_states) if self.text_projection is not None else text_states

    def _mask_tower_output(self, audio_states: torch.Tensor, mask_time_indices: torch.Tensor) -> torch.Tensor:
        """With a precomputed tower output, masked frames of that output take the tower's mask embedding."""
        mask_embedding = getattr(self.audio_model, "masked_spec_embed", None)
        if mask_embedding is None:
            raise ValueError("The audio tower has no mask embedding (`audio_config.mask_time_prob` is 0).")
        return torch.where(mask_time_indices[..., None], mask_embedding.to(audio_states.dtype), audio_states)

    def _check_input_shapes(
        self,
        input_values,
        audio_attention_mask,
        input_ids,
        attention_mask,
        audio_tower_output,
        audio_frame_mask,
        text_tower_output,
    ):
        """Shapes and presence only: reading values would force a host sync on every step (the processor and the
        pipeline check values where data enters)."""
        batch_sizes = {}
        if self.audio_model is not None and audio_tower_output is not None:
            width = self.config.audio_config.hidden_size
            _check_tower_output("audio_tower_output", audio_tower_output, width, "audio_frame_mask", audio_frame_mask)
            batch_sizes["audio_tower_output"] = audio_tower_output.shape[0]
        elif self.audio_model is not None:
            if input_values is None:
                raise ValueError(
                    f"modality={self.config.modality!r} needs `input_values` (raw 16 kHz audio of shape (batch, samples)"
                    "); CMTProcessor builds them from arrays or files."
                )
            if input_values.dim() != 2 or not torch.is_floating_point(input_values):
                raise ValueError(
                    f"`input_values` must be a float tensor of shape (batch, samples), got {input_values.dtype} of "
                    f"shape {tuple(input_values.shape)}; CMTProcessor converts, downmixes and resamples audio."
                )
            if audio_attention_mask is not None and audio_attention_mask.shape != input_values.shape:
                raise ValueError(
                    f"`audio_attention_mask` has shape {tuple(audio_attention_mask.shape)} but `input_values` has "
                    f"{tuple(input_values.shape)}; they must match (one entry per sample)."
                )
            if input_values.shape[1] < self.config.min_input_samples():
                raise ValueError(
                    f"The audio batch has {input_values.shape[1]} samples, but the audio tower's convolutional front "
                    f"end needs at least {self.config.min_input_samples()}."
                )
            batch_sizes["input_values"] = input_values.shape[0]
        if self.text_model is not None and text_tower_output is not None:
            width = self.config.text_config.hidden_size
            _check_tower_output("text_tower_output", text_tower_output, width, "attention_mask", attention_mask)
            batch_sizes["text_tower_output"] = text_tower_output.shape[0]
        elif self.text_model is not None:
            if input_ids is None:
                raise ValueError(
                    f"modality={self.config.modality!r} needs `input_ids` (the tokenized transcript); CMTProcessor "
                    "tokenizes text."
                )
            if input_ids.dim() != 2 or torch.is_floating_point(input_ids) or input_ids.dtype == torch.bool:
                raise ValueError(
                    f"`input_ids` must be an integer tensor of token ids of shape (batch, tokens), got "
                    f"{input_ids.dtype} of shape {tuple(input_ids.shape)}; CMTProcessor tokenizes text."
                )
            if attention_mask is not None and attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"`attention_mask` has shape {tuple(attention_mask.shape)} but `input_ids` has "
                    f"{tuple(input_ids.shape)}."
                )
            batch_sizes["input_ids"] = input_ids.shape[0]
        if len(set(batch_sizes.values())) > 1:
            raise ValueError(f"Audio and text batch sizes differ: {batch_sizes}. Pass one transcript per audio item.")

    @capture_outputs
    def forward(
        self,
        input_values: torch.Tensor | None = None,
        audio_attention_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
        audio_tower_output: torch.Tensor | None = None,
        audio_frame_mask: torch.Tensor | None = None,
        text_tower_output: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CMTModelOutput:
        r"""
        input_values (`torch.FloatTensor` of shape `(batch_size, samples)`):
            Raw 16 kHz audio, normalised as the feature extractor does.
        audio_attention_mask (`torch.LongTensor` of shape `(batch_size, samples)`, *optional*):
            1 for real samples, 0 for padding; converted to frames with the tower's convolution output lengths.
        input_ids (`torch.LongTensor` of shape `(batch_size, tokens)`):
            Transcript token ids.
        attention_mask (`torch.LongTensor` of shape `(batch_size, tokens)`, *optional*):
            1 for real tokens, 0 for padding (padded tokens are masked in cross-attention and pooling).
        mask_time_indices (`torch.BoolTensor` of shape `(batch_size, frames)`, *optional*):
            Frames to replace with the tower's mask embedding (masked acoustic unit prediction): in the tower's
            input features normally, in the given `audio_tower_output` when the tower is skipped.
        audio_tower_output (`torch.FloatTensor` of shape `(batch_size, frames, audio_hidden_size)`, *optional*):
            Precomputed output of the (frozen) audio tower, e.g. from a cache: the tower is skipped. Give
            `audio_frame_mask` (`(batch_size, frames)`, 1 = real frame) with it when the batch is padded.
        text_tower_output (`torch.FloatTensor` of shape `(batch_size, tokens, text_hidden_size)`, *optional*):
            Precomputed last hidden states of the (frozen) text tower: the tower is skipped; `attention_mask` still
            marks the real tokens.
        output_attentions (`bool`, *optional*):
            Return the cross-modal layers' self- and cross-attention weights (computed with the eager kernel for this
            call, whatever `attn_implementation` is).
        output_hidden_states (`bool`, `int` or `list[int]`, *optional*):
            Return the cross-modal hidden states: all of them, or the ones at the given indices.
        """
        output_hidden_states = kwargs.pop("output_hidden_states", None)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        self._check_input_shapes(
            input_values,
            audio_attention_mask,
            input_ids,
            attention_mask,
            audio_tower_output,
            audio_frame_mask,
            text_tower_output,
        )

        text_states = text_pooled = text_first = None
        if self.text_model is not None:
            text_states = text_tower_output
            if text_states is None:
                text_states = self.get_text_features(input_ids, attention_mask).last_hidden_state
            text_pooled = masked_mean(text_states, attention_mask)  # (batch, text_hidden)
            text_first = text_states[:, 0]  # (batch, text_hidden)

        audio_states = audio_pooled = frame_mask = hidden_states = pooler_weights = None
        if self.audio_model is not None:
            if audio_tower_output is not None:
                audio_states, frame_mask = audio_tower_output, audio_frame_mask
                if mask_time_indices is not None:
                    audio_states = self._mask_tower_output(audio_states, mask_time_indices)
            else:
                audio = self.get_audio_features(input_values, audio_attention_mask, mask_time_indices)
                audio_states, frame_mask = audio.last_hidden_state, audio.frame_mask  # (batch, frames, hidden)
            layer_states = (audio_states,)
            if self.encoder is not None:
                layer_states = self.encoder(
                    audio_states, frame_mask, self.project_text(text_states), attention_mask, **kwargs
                )
            if self.layer_pooler is not None:
                audio_representation, pooler_weights = self.layer_pooler(layer_states[1:])
            else:
                audio_representation = layer_states[self.config.cross_hidden_state_index]
            audio_states = layer_states[-1]
            audio_pooled = masked_mean(audio_representation, frame_mask)  # (batch, hidden)
            hidden_states = _select_hidden_states(self, layer_states, output_hidden_states)

        return CMTModelOutput(
            last_hidden_state=audio_states,
            audio_pooled_output=audio_pooled,
            text_last_hidden_state=text_states,
            text_pooled_output=text_pooled,
            text_first_token_output=text_first,
            audio_frame_mask=frame_mask,
            hidden_states=hidden_states,
            layer_pooler_weights=pooler_weights,
        )


class CMTForSequenceClassification(CMTPreTrainedModel):
    """
    CMT with a classification / regression head on h_fuse = h̄_a ⊕ h_w0 (paper eq. 6) and the orthogonality
    regulariser `L_FT = L_task + α · L_ortho` (eq. 7-8). `num_cross_layers=0` is Shallow-Fusion; `modality="audio"` /
    `"text"` are the HuBERT-only / RoBERTa-only baselines (the head then reads h̄_a / h_w0 alone).
    """

    def __init__(self, config: CMTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.cmt = CMTModel(config)
        fused_size = {
            "both": config.audio_config.hidden_size + config.text_config.hidden_size,
            "audio": config.audio_config.hidden_size,
            "text": config.text_config.hidden_size,
        }[config.modality]
        self.classifier = CMTClassificationHead(fused_size, config.num_labels, config.classifier_dropout)
        self.post_init()

    def _task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int, torch.int16, torch.int8, torch.uint8):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        problem_type = self.config.problem_type
        if labels.shape[0] != logits.shape[0]:
            raise ValueError(f"Got {labels.shape[0]} labels for a batch of {logits.shape[0]} items.")
        if problem_type == "regression":
            if not torch.isfinite(labels).all():
                raise ValueError("Regression labels contain NaN or Inf.")
            return nn.functional.mse_loss(
                logits.squeeze(-1), labels.to(logits.dtype).view(logits.shape[0], -1).squeeze(-1)
            )
        if problem_type == "single_label_classification":
            if torch.is_floating_point(labels) or labels.min() < 0 or labels.max() >= self.num_labels:
                raise ValueError(
                    f"Classification labels must be integer class ids in [0, {self.num_labels}) for this head; got "
                    f"values from {labels.min().item()} to {labels.max().item()}. Check `num_labels` / `label2id`."
                )
            return nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        if labels.shape != logits.shape:
            raise ValueError(f"Multi-label targets must have shape {tuple(logits.shape)}, got {tuple(labels.shape)}.")
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor | None = None,
        audio_attention_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        audio_tower_output: torch.Tensor | None = None,
        audio_frame_mask: torch.Tensor | None = None,
        text_tower_output: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CMTSequenceClassifierOutput:
        r"""
        labels (`torch.Tensor` of shape `(batch_size,)` or `(batch_size, num_labels)`, *optional*):
            Class ids (cross-entropy), floats with `num_labels=1` (MSE, e.g. CMU-MOSEI sentiment), or multi-hot
            targets (BCE).
        audio_tower_output, audio_frame_mask, text_tower_output:
            Precomputed frozen-tower outputs that replace the towers, as in [`CMTModel.forward`].
        output_attentions, output_hidden_states:
            As in [`CMTModel.forward`].
        """
        outputs = self.cmt(
            input_values=input_values,
            audio_attention_mask=audio_attention_mask,
            input_ids=input_ids,
            attention_mask=attention_mask,
            audio_tower_output=audio_tower_output,
            audio_frame_mask=audio_frame_mask,
            text_tower_output=text_tower_output,
            return_dict=True,
            **kwargs,
        )
        parts = [outputs.audio_pooled_output, outputs.text_first_token_output]
        fused = torch.cat([part for part in parts if part is not None], dim=-1)  # (batch, fused_size)
        logits = self.classifier(fused)

        ortho_loss = None
        if self.config.modality == "both":
            ortho_loss = orthogonality_loss(
                outputs.audio_pooled_output, self.cmt.project_text(outputs.text_pooled_output)
            )
        loss = task_loss = None
        if labels is not None:
            task_loss = self._task_loss(logits, labels)
            loss = task_loss
            if ortho_loss is not None and self.config.ortho_weight > 0:
                loss = task_loss + self.config.ortho_weight * ortho_loss

        return CMTSequenceClassifierOutput(
            loss=loss,
            logits=logits,
            task_loss=task_loss,
            ortho_loss=ortho_loss,
            fused_output=fused,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            cross_attentions=outputs.cross_attentions,
            layer_pooler_weights=outputs.layer_pooler_weights,
        )


class CMTForPreTraining(CMTPreTrainedModel):
    """
    CMT with the self-supervised cross-modal pretraining heads: masked acoustic unit prediction conditioned on the
    transcript (k-means units of the audio tower's `codebook_layer` features, stored in the `codebook` buffer), masked
    language modelling on the text tower (a RoBERTa LM head tied to the word embeddings) and optional audio–text
    matching from h_fuse. Each loss has a config weight; a weight of 0 switches it off and its head is not built, so
    every parameter of a head gets a gradient in every step (as DDP without `find_unused_parameters` needs). With the
    MLM loss alone, nothing reads the audio side: freeze it or leave it out of DDP's reducer.
    """

    _loads_text_lm_head = True
    _tied_weights_keys = {
        "mlm_head.decoder.weight": "cmt.text_model.embeddings.word_embeddings.weight",
        "mlm_head.decoder.bias": "mlm_head.bias",
    }

    def __init__(self, config: CMTConfig):
        super().__init__(config)
        if config.modality != "both":
            raise ValueError(f"Cross-modal pretraining needs modality='both', got {config.modality!r}.")
        audio_config = config.audio_config
        if config.unit_loss_weight > 0 and not (
            getattr(audio_config, "apply_spec_augment", True) and audio_config.mask_time_prob > 0
        ):
            raise ValueError(
                "Masked acoustic unit prediction masks frames with the audio tower's mask embedding, which exists "
                "only when `audio_config.apply_spec_augment=True` and `audio_config.mask_time_prob > 0`; set them or "
                "`unit_loss_weight=0`."
            )
        self.cmt = CMTModel(config)
        audio_width = audio_config.hidden_size
        self.unit_head = nn.Linear(audio_width, config.codebook_size) if config.unit_loss_weight > 0 else None
        self.mlm_head = None
        if config.mlm_loss_weight > 0:
            if not hasattr(getattr(self.cmt.text_model, "embeddings", None), "word_embeddings"):
                raise ValueError(
                    "The MLM head is tied to `embeddings.word_embeddings`: use a BERT/RoBERTa-family text tower."
                )
            self.mlm_head = RobertaLMHead(config.text_config)
        else:
            self._tied_weights_keys = {}
        self.matching_head = None
        if config.matching_loss_weight > 0:
            self.matching_head = nn.Linear(audio_width + config.text_config.hidden_size, 2)
        self.register_buffer("codebook", torch.zeros(config.codebook_size, audio_width))  # (units, hidden)
        self.post_init()

    def get_output_embeddings(self):
        return self.mlm_head.decoder if self.mlm_head is not None else None

    def set_output_embeddings(self, new_embeddings):
        self.mlm_head.decoder = new_embeddings

    @property
    def codebook_is_fitted(self) -> bool:
        return bool(self.codebook.abs().sum() > 0)

    def set_codebook(self, centroids: torch.Tensor):
        """Stores k-means centroids of shape `(codebook_size, audio_hidden_size)` as the unit codebook."""
        expected = tuple(self.codebook.shape)
        centroids = torch.as_tensor(centroids)
        if tuple(centroids.shape) != expected or not torch.isfinite(centroids).all():
            raise ValueError(
                f"Codebook centroids must be a finite tensor of shape {expected} (codebook_size, audio width), got "
                f"shape {tuple(centroids.shape)}."
            )
        with torch.no_grad():
            self.codebook.copy_(centroids.to(self.codebook))

    @torch.no_grad()
    def compute_unit_features(
        self, input_values: torch.Tensor, audio_attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        The unmasked audio tower's hidden state at `config.codebook_layer`, `(batch, frames, hidden)`, and the frame
        mask: the features the codebook is fitted on and units are assigned from. Runs the tower in eval mode (no
        SpecAugment, dropout or layerdrop).
        """
        audio_model = self.cmt.audio_model
        was_training = audio_model.training
        audio_model.eval()
        try:
            audio = self.cmt.get_audio_features(
                input_values, audio_attention_mask, output_hidden_states=[self.config.codebook_layer]
            )
        finally:
            audio_model.train(was_training)
        return audio.hidden_states[self.config.codebook_layer], audio.frame_mask

    @torch.no_grad()
    def assign_units(self, features: torch.Tensor) -> torch.LongTensor:
        """Nearest-centroid unit ids, `(batch, frames)`, for features of shape `(batch, frames, hidden)`."""
        if not self.codebook_is_fitted:
            raise ValueError(
                "The unit codebook has not been fitted: run `examples/fit_codebook.py` (or call `set_codebook`) "
                "before pretraining with unit_loss_weight > 0."
            )
        distances = torch.cdist(features.float(), self.codebook.float().unsqueeze(0))  # (batch, frames, units)
        return distances.argmin(dim=-1)

    def _mask_frames(self, batch_size: int, frames: int, frame_mask: torch.Tensor | None, device) -> torch.Tensor:
        if frames < self.config.unit_mask_length:
            raise ValueError(
                f"The audio gives {frames} frames, fewer than unit_mask_length={self.config.unit_mask_length}: use "
                "longer utterances or a shorter mask span."
            )
        mask = _compute_mask_indices(
            (batch_size, frames),
            mask_prob=self.config.unit_mask_prob,
            mask_length=self.config.unit_mask_length,
            attention_mask=frame_mask.long() if frame_mask is not None else None,
            min_masks=1,
        )
        return torch.as_tensor(mask, dtype=torch.bool, device=device)

    def _matching_pairs(self, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """A permutation of the batch's transcripts that rotates a random half of the items among themselves (so
        every transcript is still used once) and the labels: 1 = the audio keeps its own transcript."""
        shuffled = (torch.rand(batch_size) < 0.5).nonzero().flatten()
        permutation = torch.arange(batch_size)
        if len(shuffled) >= 2:
            permutation[shuffled] = shuffled.roll(1)
        labels = (permutation == torch.arange(batch_size)).long()
        return permutation.to(device), labels.to(device)

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor | None = None,
        audio_attention_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        unit_labels: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
        audio_tower_output: torch.Tensor | None = None,
        audio_frame_mask: torch.Tensor | None = None,
        text_tower_output: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CMTForPreTrainingOutput:
        r"""
        mlm_labels (`torch.LongTensor` of shape `(batch_size, tokens)`, *optional*):
            Original ids at the tokens masked in `input_ids` and -100 elsewhere (as `DataCollatorForLanguageModeling`
            makes them); the MLM loss is computed when given.
        unit_labels (`torch.LongTensor` of shape `(batch_size, frames)`, *optional*):
            Precomputed unit targets; by default they are assigned from the codebook on the unmasked audio.
        mask_time_indices (`torch.BoolTensor` of shape `(batch_size, frames)`, *optional*):
            Frames to mask; by default spans are drawn with `unit_mask_prob` / `unit_mask_length`.
        audio_tower_output, audio_frame_mask, text_tower_output:
            Precomputed frozen-tower outputs (stage 1 from a cache), as in [`CMTModel.forward`]. Masked frames then
            take the mask embedding in the tower's output instead of its input, `unit_labels` must be given, and MLM
            is unavailable (it needs the text tower to read the masked tokens).
        output_attentions, output_hidden_states:
            As in [`CMTModel.forward`].
        """
        config = self.config
        if (input_values is None and audio_tower_output is None) or (input_ids is None and text_tower_output is None):
            raise ValueError("Pretraining needs paired audio and transcript (raw inputs or cached tower outputs).")
        if text_tower_output is not None and mlm_labels is not None:
            raise ValueError("MLM needs the text tower to read the masked tokens: drop `mlm_labels` with cached text.")
        cached_audio = audio_tower_output is not None
        audio_input = audio_tower_output if cached_audio else input_values
        batch_size, device = audio_input.shape[0], audio_input.device

        if self.unit_head is not None:
            self.cmt._check_input_shapes(
                input_values,
                audio_attention_mask,
                input_ids,
                attention_mask,
                audio_tower_output,
                audio_frame_mask,
                text_tower_output,
            )
            if cached_audio:
                if unit_labels is None:
                    raise ValueError("With `audio_tower_output`, pass the cached `unit_labels` too.")
                frames, frame_mask = audio_tower_output.shape[1], audio_frame_mask
            elif unit_labels is None:
                features, frame_mask = self.compute_unit_features(input_values, audio_attention_mask)
                unit_labels = self.assign_units(features)  # (batch, frames)
                frames = unit_labels.shape[1]
            else:
                frames = config.audio_frames(input_values.shape[1])
                frame_mask = (
                    self.cmt.audio_frame_mask(audio_attention_mask) if audio_attention_mask is not None else None
                )
            if unit_labels.shape != (batch_size, frames):
                raise ValueError(
                    f"`unit_labels` must have shape {(batch_size, frames)}, got {tuple(unit_labels.shape)}."
                )
            if mask_time_indices is None:
                mask_time_indices = self._mask_frames(batch_size, frames, frame_mask, device)

        matching_labels = None
        if self.matching_head is not None and batch_size >= 2:
            permutation, matching_labels = self._matching_pairs(batch_size, device)
            input_ids, attention_mask, mlm_labels, text_tower_output = (
                tensor[permutation] if tensor is not None else None
                for tensor in (input_ids, attention_mask, mlm_labels, text_tower_output)
            )

        outputs = self.cmt(
            input_values=input_values,
            audio_attention_mask=audio_attention_mask,
            input_ids=input_ids,
            attention_mask=attention_mask,
            mask_time_indices=mask_time_indices,
            audio_tower_output=audio_tower_output,
            audio_frame_mask=audio_frame_mask,
            text_tower_output=text_tower_output,
            return_dict=True,
            **kwargs,
        )

        losses = {}
        unit_logits = mlm_logits = matching_logits = None
        if self.unit_head is not None:
            unit_logits = self.unit_head(outputs.last_hidden_state)  # (batch, frames, units)
            scored = mask_time_indices.clone()
            if outputs.audio_frame_mask is not None:
                scored &= outputs.audio_frame_mask
            if matching_labels is not None:
                scored &= matching_labels.bool()[:, None]  # units are predicted only where the transcript is right
            if scored.any():
                losses["unit"] = nn.functional.cross_entropy(unit_logits[scored], unit_labels[scored])
            else:
                losses["unit"] = unit_logits.sum() * 0.0
        if self.mlm_head is not None and mlm_labels is not None:
            masked = mlm_labels != -100  # (batch, tokens)
            mlm_logits = self.mlm_head(outputs.text_last_hidden_state[masked])  # (masked_tokens, vocab)
            losses["mlm"] = (
                nn.functional.cross_entropy(mlm_logits, mlm_labels[masked]) if masked.any() else mlm_logits.sum() * 0.0
            )
        if matching_labels is not None:
            fused = torch.cat([outputs.audio_pooled_output, outputs.text_first_token_output], dim=-1)
            matching_logits = self.matching_head(fused)  # (batch, 2)
            losses["matching"] = nn.functional.cross_entropy(matching_logits, matching_labels)

        weights = {
            "unit": config.unit_loss_weight,
            "mlm": config.mlm_loss_weight,
            "matching": config.matching_loss_weight,
        }
        loss = sum(weights[name] * value for name, value in losses.items()) if losses else None
        return CMTForPreTrainingOutput(
            loss=loss,
            unit_loss=losses.get("unit"),
            mlm_loss=losses.get("mlm"),
            matching_loss=losses.get("matching"),
            unit_logits=unit_logits,
            unit_labels=unit_labels,
            mask_time_indices=mask_time_indices,
            mlm_logits=mlm_logits,
            matching_logits=matching_logits,
            matching_labels=matching_labels,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            cross_attentions=outputs.cross_attentions,
        )


__all__ = [
    "CMTAudioTowerOutput",
    "CMTCheckpointError",
    "CMTForPreTraining",
    "CMTForSequenceClassification",
    "CMTModel",
    "CMTModelOutput",
    "CMTPreTrainedModel",
    "CMTTextTowerOutput",
    "masked_mean",
    "orthogonality_loss",
]
