"""Run by test_distributed.py with `torchrun --nproc_per_node 2` on CPU (gloo): CMT sharded by accelerate's own FSDP2
preparation (`fsdp2_prepare_model`, and `fsdp2_apply_ac` for activation checkpointing) with the wrap classes of a
shipped FSDP configuration, trained for a few steps with a different batch on each rank.

accelerate 1.15 does not set up FSDP for a CPU job, so its Trainer path cannot run here; this drives the same
preparation functions directly, through a stand-in for the few `Accelerator` attributes they read. Writes
`<output>/rank<N>.json` (losses, a checksum of the gathered parameters, the sharded model's logits on a fixed batch)
and, on rank 0, the gathered model saved with `save_pretrained` in `<output>/model`.

    torchrun --nproc_per_node 2 fsdp_cpu_worker.py CONFIG.yaml OUTPUT_DIR TOKENIZER_DIR [--activation_checkpointing]
"""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
import yaml
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_apply_ac, fsdp2_prepare_model
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule
from transformers import RobertaTokenizerFast, Wav2Vec2FeatureExtractor

from modeling_cmt import CMTConfig, CMTForSequenceClassification, CMTProcessor


TEXTS = ["The day was good.", "The film was awful.", "What a lovely meal.", "A poor trip.", "Great song!", "Bad day."]


def batch(processor: CMTProcessor, seed: int, size: int = 4) -> dict[str, torch.Tensor]:
    generator = np.random.default_rng(seed)
    audio = [
        generator.standard_normal(int(generator.integers(3000, 6000))).astype(np.float32) * 0.1 for _ in range(size)
    ]
    texts = [TEXTS[int(index)] for index in generator.integers(len(TEXTS), size=size)]
    inputs = dict(processor(audio=audio, text=texts, sampling_rate=16000, return_tensors="pt"))
    inputs["labels"] = torch.tensor(generator.integers(2, size=size))
    return inputs


def main(config_path: str, output: str, tokenizer_dir: str, activation_checkpointing: bool = False):
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    fsdp_config = yaml.safe_load(Path(config_path).read_text())["fsdp_config"]
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=fsdp_config["fsdp_version"],
        auto_wrap_policy=fsdp_config["fsdp_auto_wrap_policy"],
        transformer_cls_names_to_wrap=fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(","),
        reshard_after_forward=fsdp_config["fsdp_reshard_after_forward"],
        state_dict_type=fsdp_config["fsdp_state_dict_type"],
        activation_checkpointing=activation_checkpointing,
    )
    accelerator = SimpleNamespace(  # what fsdp2_prepare_model and fsdp2_apply_ac read of an Accelerator
        state=SimpleNamespace(fsdp_plugin=plugin),
        torch_device_mesh=None,
        parallelism_config=None,
        mixed_precision="no",
        is_main_process=rank == 0,
        device=torch.device("cpu"),
    )
    stable_layer_norm = "HubertEncoderLayerStableLayerNorm" in plugin.transformer_cls_names_to_wrap
    torch.manual_seed(0)
    config = CMTConfig.from_preset(
        "tiny",
        num_labels=2,
        audio_config={"do_stable_layer_norm": stable_layer_norm, "mask_time_prob": 0.0},
        cross_hidden_dropout=0.0,
        cross_attention_dropout=0.0,
        classifier_dropout=0.0,
    )
    model = CMTForSequenceClassification(config)
    model.freeze_feature_encoder()
    processor = CMTProcessor(
        feature_extractor=Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=True),
        tokenizer=RobertaTokenizerFast.from_pretrained(tokenizer_dir),
    )
    if activation_checkpointing:
        model = fsdp2_apply_ac(accelerator, model)
    model = fsdp2_prepare_model(accelerator, model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    train, fixed = batch(processor, seed=100 + rank), batch(processor, seed=7)
    losses = []
    model.train()
    for _ in range(8):
        loss = model(**train).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        logits = model(**{key: value for key, value in fixed.items() if key != "labels"}).logits
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))  # on every rank
    checksum = float(sum(tensor.double().sum() + (tensor.double() ** 2).sum() for tensor in full.values()))
    Path(output).mkdir(parents=True, exist_ok=True)
    if rank == 0:
        plain = CMTForSequenceClassification(config)
        plain.load_state_dict(full)
        plain.save_pretrained(Path(output) / "model")
        processor.save_pretrained(Path(output) / "model")
        torch.save(fixed, Path(output) / "fixed_batch.pt")
    # With activation checkpointing accelerate 1.15 shards a layer and its CheckpointWrapper, 1.16 the wrapper alone:
    # either way one unit per layer, named by the layer inside.
    units = {}
    for module in model.modules():
        if isinstance(module, FSDPModule):
            layer = getattr(module, "_checkpoint_wrapped_module", module)
            units[id(layer)] = type(layer).__name__.removeprefix("FSDP")
    result = {
        "losses": losses,
        "checksum": checksum,
        "logits": logits.tolist(),
        "sharded_units": sorted(units.values()),
        "checkpointed_units": sum(isinstance(module, CheckpointWrapper) for module in model.modules()),
    }
    (Path(output) / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4], activation_checkpointing="--activation_checkpointing" in sys.argv[4:])
