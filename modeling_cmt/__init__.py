"""CMT: cross-modal pretrained transformer (HuBERT + RoBERTa) for speech emotion recognition and sentiment analysis.

Importing the package registers CMT with the transformers Auto classes, so `AutoModel.from_pretrained(path)` works
without `trust_remote_code`, and registers the `"audio-text-classification"` pipeline task, so
`pipeline("audio-text-classification", model=path)` runs the installed code. Checkpoints saved from these classes
also carry the remote code (classification checkpoints: the pipeline too) for a `trust_remote_code=True` load where
the package is not installed.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
    AutoProcessor,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_cmt import SAMPLING_RATE, CMTConfig, list_presets, load_preset, merge_config_values
from .modeling_cmt import (
    CMTAudioTowerOutput,
    CMTForPreTraining,
    CMTForSequenceClassification,
    CMTModel,
    CMTModelOutput,
    CMTPreTrainedModel,
    CMTTextTowerOutput,
    masked_mean,
    orthogonality_loss,
)
from .pipeline_cmt import TASK as PIPELINE_TASK
from .pipeline_cmt import AudioTextClassificationPipeline
from .processing_cmt import CMTProcessor, check_waveform


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
CMTForSequenceClassification.pipeline_class = AudioTextClassificationPipeline  # its checkpoints carry the pipeline

__all__ = [
    "SAMPLING_RATE",
    "AudioTextClassificationPipeline",
    "CMTAudioTowerOutput",
    "CMTConfig",
    "CMTForPreTraining",
    "CMTForSequenceClassification",
    "CMTModel",
    "CMTModelOutput",
    "CMTPreTrainedModel",
    "CMTProcessor",
    "CMTTextTowerOutput",
    "check_waveform",
    "list_presets",
    "load_preset",
    "masked_mean",
    "merge_config_values",
    "orthogonality_loss",
]
