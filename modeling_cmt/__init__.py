"""CMT: cross-modal pretrained transformer (HuBERT + RoBERTa) for speech emotion recognition and sentiment analysis.

Importing the package registers CMT with the transformers Auto classes, so `AutoModel.from_pretrained(path)` works
without `trust_remote_code`, and registers the `"audio-text-classification"` pipeline task; checkpoints saved from
these classes also carry the remote code (pipeline included) for a plain `trust_remote_code=True` load elsewhere.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
    AutoProcessor,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_cmt import CMTConfig, list_presets, load_preset
from .modeling_cmt import (
    CMTForPreTraining,
    CMTForSequenceClassification,
    CMTModel,
    CMTPreTrainedModel,
    masked_mean,
    orthogonality_loss,
)
from .pipeline_cmt import TASK as PIPELINE_TASK
from .pipeline_cmt import AudioTextClassificationPipeline
from .processing_cmt import CMTProcessor


__version__ = "0.1.0.dev0"

AutoConfig.register("cmt", CMTConfig, exist_ok=True)
AutoModel.register(CMTConfig, CMTModel, exist_ok=True)
AutoModelForSequenceClassification.register(CMTConfig, CMTForSequenceClassification, exist_ok=True)
AutoModelForPreTraining.register(CMTConfig, CMTForPreTraining, exist_ok=True)
AutoProcessor.register(CMTConfig, CMTProcessor, exist_ok=True)

CMTConfig.register_for_auto_class()
CMTModel.register_for_auto_class("AutoModel")
CMTForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
CMTForPreTraining.register_for_auto_class("AutoModelForPreTraining")
CMTProcessor.register_for_auto_class("AutoProcessor")

PIPELINE_REGISTRY.register_pipeline(
    PIPELINE_TASK,
    pipeline_class=AudioTextClassificationPipeline,
    pt_model=AutoModelForSequenceClassification,
    type="multimodal",
)

__all__ = [
    "AudioTextClassificationPipeline",
    "CMTConfig",
    "CMTForPreTraining",
    "CMTForSequenceClassification",
    "CMTModel",
    "CMTPreTrainedModel",
    "CMTProcessor",
    "list_presets",
    "load_preset",
    "masked_mean",
    "orthogonality_loss",
]
