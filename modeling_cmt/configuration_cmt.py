"""CMT model configuration: an audio tower, a text tower and the audio cross-modal transformer layers joining them."""

import json
from pathlib import Path
from typing import Literal

import torch
from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import logging


logger = logging.get_logger(__name__)

# The wav2vec2-family audio towers are trained on 16 kHz audio; CMTProcessor resamples everything to it.
SAMPLING_RATE = 16000
PRESETS_DIR = Path(__file__).parent / "presets"
TOWER_CONFIGS = ("audio_config", "text_config")


@strict
class CMTConfig(PreTrainedConfig):
    r"""
    Configuration of a CMT model (Chu et al., "Self-supervised Cross-modal Pretraining for Speech Emotion Recognition
    and Sentiment Analysis", Findings of EMNLP 2022): an audio tower (HuBERT by default; any wav2vec2-family encoder),
    a text tower (RoBERTa by default; any encoder-only model) and `num_cross_layers` audio cross-modal transformer
    layers on top of the audio tower whose cross-attention reads the text tower's states.

    The values are checked when the config is built and again when it is saved (`validate_architecture`), so an
    invalid config can be neither used nor saved; a choice field refuses an unknown value as soon as it is assigned.

    Args:
        audio_config (`dict` or `PreTrainedConfig`, *optional*):
            Configuration of the audio tower. Defaults to `HubertConfig()` (the hubert-base architecture).
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Configuration of the text tower. Defaults to `RobertaConfig()` (the roberta-base architecture).
        modality (`str`, *optional*, defaults to `"both"`):
            `"both"` (CMT and Shallow-Fusion), `"audio"` (the paper's HuBERT-only baseline: no text tower is built) or
            `"text"` (the RoBERTa-only baseline: no audio tower is built). Single-modality models need
            `num_cross_layers=0`.
        num_cross_layers (`int`, *optional*, defaults to 4):
            Number of audio cross-modal transformer layers (CMT-4 has 4). `0` with `modality="both"` is the paper's
            Shallow-Fusion baseline: pooled audio tower output concatenated with the text tower's first token.
        cross_num_attention_heads (`int`, *optional*):
            Attention heads of the cross-modal layers (self- and cross-attention). Defaults to the audio tower's.
        cross_intermediate_size (`int`, *optional*):
            Feed-forward width of the cross-modal layers. Defaults to the audio tower's.
        cross_hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation of the cross-modal feed-forward blocks.
        cross_hidden_dropout (`float`, *optional*, defaults to 0.1):
            Dropout on the outputs of the attention and feed-forward blocks of the cross-modal layers.
        cross_attention_dropout (`float`, *optional*, defaults to 0.1):
            Dropout on the attention probabilities of the cross-modal layers.
        cross_activation_dropout (`float`, *optional*, defaults to 0.0):
            Dropout after the activation inside the cross-modal feed-forward blocks.
        cross_layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the cross-modal layers' LayerNorms.
        cross_layer_init (`str`, *optional*, defaults to `"random"`):
            How [`CMTPreTrainedModel.from_audio_text_pretrained`] initialises the cross-modal layers: `"random"`, or
            `"audio_top_layers"`, which moves the top `num_cross_layers` layers of the audio tower into the
            cross-modal stack (their self-attention and feed-forward weights; cross-attention is always new) and
            removes them from the tower, so the audio path keeps its depth. Needs a post-LN audio tower
            (`do_stable_layer_norm=False`, as in hubert-base). After loading, `audio_config` describes the shortened
            tower.
        pooling (`str`, *optional*, defaults to `"mean"`):
            Which audio representation is mean-pooled into h̄_a: `"mean"` uses the hidden state picked by
            `cross_hidden_state_index`; `"layer_pooler"` uses a learned softmax-weighted average of the outputs of
            all cross-modal layers (the paper's layer pooler).
        cross_hidden_state_index (`int`, *optional*, defaults to -1):
            With `pooling="mean"`, the index into the cross-modal hidden states (0 = the audio tower's output that
            enters the stack, `num_cross_layers` = the last layer's output; negative indices count from the end) that
            is pooled into h̄_a. The paper's Figure 2 compares these.
        ortho_weight (`float`, *optional*, defaults to 0.0):
            α of the orthogonality regulariser, `L_FT = L_task + α · L_ortho` (paper eq. 8).
        classifier_dropout (`float`, *optional*, defaults to 0.1):
            Dropout of the classification / regression head.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialiser of the new (non-tower) weights.
        codebook_size (`int`, *optional*, defaults to 100):
            Number of k-means clusters (acoustic units) used as targets of masked acoustic unit prediction.
        codebook_layer (`int`, *optional*):
            Which audio-tower hidden state (0 = after the feature projection and positional embedding, i = after
            layer i) the codebook clusters. Defaults to the middle layer of the tower.
        unit_mask_prob (`float`, *optional*, defaults to 0.08):
            Probability of each frame starting a masked span for masked acoustic unit prediction (HuBERT's value).
        unit_mask_length (`int`, *optional*, defaults to 10):
            Length of the masked spans, in frames.
        unit_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the masked acoustic unit prediction loss in pretraining. 0 switches the loss off, and
            [`CMTForPreTraining`] then builds no unit head.
        mlm_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the masked language modelling loss on the text tower in pretraining. 0 switches the loss off
            and [`CMTForPreTraining`] then builds no MLM head.
        matching_loss_weight (`float`, *optional*, defaults to 0.0):
            Weight of the audio–text matching loss (paired vs. in-batch shuffled transcript) in pretraining; the
            matching head exists only when it is above 0.
        positional_conv_implementation (`str`, *optional*, defaults to `"auto"`):
            How the audio tower's convolutional positional embedding (a grouped convolution with a long kernel,
            128 taps in hubert-base) is computed: `"fft"` through real FFTs in float32 (same weights and
            parameter names, same result to float32 rounding), `"conv"` (the tower's own `nn.Conv1d`), or `"auto"`:
            FFT on CUDA devices, where grouped convolutions with long kernels are slow, and the convolution
            elsewhere. A runtime choice that leaves the model's function unchanged; it is saved with the config
            (as transformers saves `chunk_size_feed_forward`) because `"auto"` is a per-device policy rather than
            a measurement of one machine, and `from_pretrained(path, positional_conv_implementation=...)`
            overrides it.
        feature_encoder_chunk_samples (`int`, *optional*, defaults to 160000):
            When the audio tower's convolutional feature encoder needs no gradient (frozen, the fine-tuning default,
            or at inference), it runs over the batch in chunks of at most this many padded samples (160000 = 10 s at
            16 kHz; at least one item per chunk; 4x that on CUDA devices, whose larger batches keep convolutions
            efficient). This bounds the memory its first, widest layers need for a moment, which otherwise grows
            with the batch. The outputs are the same; `None` runs the whole batch at once. Saved with the config for
            the same reason as `positional_conv_implementation`.
        tie_word_embeddings (`bool`, *optional*, defaults to `True`):
            Whether the pretraining MLM head's decoder shares the text tower's word embeddings (as RoBERTa's does).

    Example:

    ```python
    >>> from modeling_cmt import CMTConfig, CMTModel

    >>> config = CMTConfig(num_cross_layers=4)  # hubert-base + roberta-base shaped, random weights
    >>> model = CMTModel(config)
    >>> tiny = CMTConfig.from_preset("tiny", text_config={"vocab_size": 2000})  # presets: tiny, demo, cmt-4, ...
    ```"""

    model_type = "cmt"
    sub_configs_defaults = {
        "audio_config": SubConfigSpec(config_class=AutoConfig, model_type="hubert"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="roberta"),
    }

    audio_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    modality: Literal["both", "audio", "text"] = "both"
    num_cross_layers: int = 4
    cross_num_attention_heads: int | None = None
    cross_intermediate_size: int | None = None
    cross_hidden_act: str = "gelu"
    cross_hidden_dropout: float = 0.1
    cross_attention_dropout: float = 0.1
    cross_activation_dropout: float = 0.0
    cross_layer_norm_eps: float = 1e-5
    cross_layer_init: Literal["random", "audio_top_layers"] = "random"
    pooling: Literal["mean", "layer_pooler"] = "mean"
    cross_hidden_state_index: int = -1
    ortho_weight: float = 0.0
    classifier_dropout: float = 0.1
    initializer_range: float = 0.02
    codebook_size: int = 100
    codebook_layer: int | None = None
    unit_mask_prob: float = 0.08
    unit_mask_length: int = 10
    unit_loss_weight: float = 1.0
    mlm_loss_weight: float = 1.0
    matching_loss_weight: float = 0.0
    positional_conv_implementation: Literal["auto", "fft", "conv"] = "auto"
    feature_encoder_chunk_samples: int | None = 160000
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        custom_pipelines = {
            task: entry
            for task, entry in (kwargs.pop("custom_pipelines", None) or {}).items()
            if not _installed_beside_this_config(task, entry)
        }
        if custom_pipelines:
            kwargs["custom_pipelines"] = custom_pipelines
        super().__post_init__(**kwargs)
        if self.cross_num_attention_heads is None:
            self.cross_num_attention_heads = self.audio_config.num_attention_heads
        if self.cross_intermediate_size is None:
            self.cross_intermediate_size = self.audio_config.intermediate_size
        if self.codebook_layer is None:
            self.codebook_layer = self.audio_config.num_hidden_layers // 2

    def validate_architecture(self):
        """Part of `@strict`-powered validation (on init and on save): refuses values no CMT model can be built from."""
        super().validate_architecture()
        audio_config, text_config = self.audio_config, self.text_config
        if not (hasattr(audio_config, "conv_kernel") and hasattr(audio_config, "conv_stride")):
            raise ValueError(
                f"The audio tower must be a wav2vec2-family encoder with a convolutional front end (hubert, wav2vec2, "
                f"wavlm, data2vec-audio, ...); got model_type={audio_config.model_type!r}."
            )
        if getattr(audio_config, "add_adapter", False):
            raise ValueError(
                "Audio towers with adapter layers (`add_adapter=True`) change the frame rate: unsupported."
            )
        if getattr(text_config, "is_decoder", False):
            raise ValueError("The text tower must be an encoder (`text_config.is_decoder` is True).")
        if self.feature_encoder_chunk_samples is not None and self.feature_encoder_chunk_samples < 1:
            raise ValueError(
                f"`feature_encoder_chunk_samples` must be a positive number of samples or None, got "
                f"{self.feature_encoder_chunk_samples}."
            )
        if self.num_cross_layers < 0:
            raise ValueError(f"`num_cross_layers` must be >= 0, got {self.num_cross_layers}.")
        if self.modality != "both" and self.num_cross_layers > 0:
            raise ValueError(
                f"`modality={self.modality!r}` has no second modality for cross-attention: set `num_cross_layers=0` "
                f"(got {self.num_cross_layers})."
            )
        if self.pooling == "layer_pooler" and self.num_cross_layers == 0:
            raise ValueError("`pooling='layer_pooler'` averages cross-modal layers: it needs `num_cross_layers` > 0.")
        if not -(self.num_cross_layers + 1) <= self.cross_hidden_state_index <= self.num_cross_layers:
            raise ValueError(
                f"`cross_hidden_state_index` must be in [{-(self.num_cross_layers + 1)}, {self.num_cross_layers}] "
                f"for {self.num_cross_layers} cross-modal layers, got {self.cross_hidden_state_index}."
            )
        if audio_config.hidden_size % self.cross_num_attention_heads != 0:
            raise ValueError(
                f"The audio width ({audio_config.hidden_size}) must be divisible by `cross_num_attention_heads` "
                f"({self.cross_num_attention_heads})."
            )
        for name in (
            "cross_hidden_dropout",
            "cross_attention_dropout",
            "cross_activation_dropout",
            "classifier_dropout",
        ):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {getattr(self, name)}.")
        for name in ("ortho_weight", "unit_loss_weight", "mlm_loss_weight", "matching_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        if not 0.0 <= self.unit_mask_prob <= 1.0:
            raise ValueError(f"`unit_mask_prob` must be in [0, 1], got {self.unit_mask_prob}.")
        if self.unit_mask_length < 1 or self.codebook_size < 2:
            raise ValueError(
                f"`unit_mask_length` must be >= 1 and `codebook_size` >= 2, got {self.unit_mask_length} and "
                f"{self.codebook_size}."
            )
        if not 0 <= self.codebook_layer <= audio_config.num_hidden_layers:
            raise ValueError(
                f"`codebook_layer` must be in [0, {audio_config.num_hidden_layers}] (the audio tower's hidden "
                f"states), got {self.codebook_layer}."
            )

    @property
    def hidden_size(self) -> int:
        """Width of the audio cross-modal stack (the audio tower's width)."""
        return self.audio_config.hidden_size

    # --- the audio tower's convolutional front end ----------------------------------------------------------------

    def audio_frames(self, num_samples: int | torch.Tensor) -> int | torch.Tensor:
        """
        How many frames the audio tower's convolutional front end makes of `num_samples` samples (an `int`, or a
        tensor of per-item lengths such as `audio_attention_mask.sum(-1)`); 0 for audio shorter than
        [`min_input_samples`].
        """
        frames = num_samples
        for kernel, stride in zip(self.audio_config.conv_kernel, self.audio_config.conv_stride):
            frames = (frames - kernel) // stride + 1
        return frames.clamp(min=0) if isinstance(frames, torch.Tensor) else max(int(frames), 0)

    def min_input_samples(self) -> int:
        """The shortest audio, in samples, that the audio tower's convolutional front end turns into one frame."""
        samples = 1
        for kernel, stride in reversed(list(zip(self.audio_config.conv_kernel, self.audio_config.conv_stride))):
            samples = (samples - 1) * stride + kernel
        return samples

    # --- presets ----------------------------------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "CMTConfig":
        """
        Builds the configuration of a named preset (`tiny`, `demo`, `cmt-4`, `cmt-base`, `cmt-large`; see
        [`list_presets`]). Keyword arguments override the preset's values; a dict given for `audio_config` or
        `text_config` overrides single tower values (`text_config={"vocab_size": 2000}`), see
        [`merge_config_values`].
        """
        return cls(**merge_config_values(load_preset(name)["config"], overrides))


def merge_config_values(values: dict, overrides: dict) -> dict:
    """
    `CMTConfig` keyword arguments `values` updated with `overrides`: top-level keys are replaced, and a dict override
    of `audio_config` / `text_config` is merged key by key into the tower's dict (unless it names another
    `model_type`, which replaces the tower). This is how presets take overrides.
    """
    merged = {**values, **overrides}
    for key in TOWER_CONFIGS:
        base, override = values.get(key), overrides.get(key)
        same_tower = isinstance(base, dict) and isinstance(override, dict)
        if same_tower and override.get("model_type", base.get("model_type")) == base.get("model_type"):
            merged[key] = {**base, **override}
    return merged


def _installed_beside_this_config(task: str, entry: dict) -> bool:
    """
    Whether the pipeline a checkpoint's `custom_pipelines` entry names is registered in this process from the package
    this config class comes from. transformers' `pipeline()` demands `trust_remote_code` for any task listed in
    `custom_pipelines`, even one registered in-process; a config loaded by the installed package therefore leaves
    out the entries its own package provides, and `pipeline()` finds them in its registry. A config loaded as remote
    code keeps them. Classification checkpoints write the entry again when saved.
    """
    from transformers.pipelines import PIPELINE_REGISTRY

    registered = PIPELINE_REGISTRY.supported_tasks.get(task)
    if registered is None:
        return False
    impl = registered["impl"]
    same_package = impl.__module__.rpartition(".")[0] == __name__.rpartition(".")[0]
    return same_package and impl.__name__ == str(entry.get("impl", "")).rpartition(".")[2]


def list_presets() -> list[str]:
    """Names of the presets shipped in `modeling_cmt/presets/`."""
    return sorted(path.stem for path in PRESETS_DIR.glob("*.json"))


def load_preset(name: str) -> dict:
    """
    Reads a preset: a JSON object with `config` (the `CMTConfig` keyword arguments, tower configs included) and, for
    presets built on pretrained towers, `audio_model_name_or_path` / `text_model_name_or_path`.
    """
    path = PRESETS_DIR / f"{name}.json"
    if not path.is_file():
        available = list_presets()
        if not available:
            raise ValueError(
                f"Unknown preset {name!r}: no presets found in {PRESETS_DIR} (presets ship with the installed "
                f"`modeling_cmt` package, not with Hub remote code)."
            )
        raise ValueError(f"Unknown preset {name!r}. Available presets: {', '.join(available)}.")
    return json.loads(path.read_text())


__all__ = ["SAMPLING_RATE", "CMTConfig", "list_presets", "load_preset", "merge_config_values"]
