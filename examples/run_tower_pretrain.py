"""Single-modal self-supervised pretraining of one tower, saved as a plain transformers checkpoint.

The paper starts CMT from `facebook/hubert-base-ls960` and `FacebookAI/roberta-base`. Where those are out of reach
(the synthetic corpus, a new language, no network), this script makes the same kind of starting point from unlabelled
audio-transcript pairs:

- `--tower audio`: HuBERT's first iteration. Every 20 ms frame gets discrete targets from hand-made features, a
  k-means unit of its MFCCs (13 + deltas + delta-deltas, standardised) as in HuBERT, and, because MFCCs discard the
  pitch that carries much of the emotion in speech, a quantile bin of its log-F0 and one of its log-energy. Spans of
  frames are masked (`--mask_time_prob`, `--mask_time_length`: HuBERT's 0.8 and 10) and a linear head per target set
  predicts the masked frames' targets from the transformer's output; the loss is the sum of the cross-entropies.
  The result is saved as a `HubertModel` with its feature extractor.
- `--tower text`: masked language modelling (RoBERTa's recipe: 15 % of the tokens, 80/10/10) with a byte-level BPE
  tokenizer trained on the corpus' transcripts; saved as a `RobertaForMaskedLM` with its tokenizer, the layout of
  `FacebookAI/roberta-base`.

The tower's shape comes from a preset's `audio_config` / `text_config` (`--preset demo`). Both checkpoints load with
plain `HubertModel.from_pretrained` / `RobertaModel.from_pretrained`, and together start CMT as the Hub towers do:

    python examples/run_tower_pretrain.py --tower audio --preset demo --task audio_text_pairs --data_dir my_pairs \
        --num_train_epochs 10 --output_dir runs/hubert-demo
    python examples/run_tower_pretrain.py --tower text --preset demo --task audio_text_pairs --data_dir my_pairs \
        --num_train_epochs 10 --output_dir runs/roberta-demo
    python examples/fit_codebook.py --audio_model_name_or_path runs/hubert-demo \
        --text_model_name_or_path runs/roberta-demo --task audio_text_pairs --data_dir my_pairs --output_dir runs/codebook
"""

import os


# Waiting OpenMP threads sleep instead of spinning (README, "Threads"); set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchaudio
from sklearn.cluster import MiniBatchKMeans
from torch import nn
from transformers import (
    DataCollatorForLanguageModeling,
    HubertConfig,
    HubertModel,
    RobertaConfig,
    RobertaForMaskedLM,
    Trainer,
    Wav2Vec2FeatureExtractor,
    set_seed,
)
from transformers.models.hubert.modeling_hubert import HubertPreTrainedModel
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

from cmt_training.arguments import CMTPretrainingArguments, DataArguments, parse_args
from cmt_training.build import build_bpe_tokenizer
from cmt_training.cpu import apply_cpu_allocator_tuning
from cmt_training.data import prepare_split
from cmt_training.logging_utils import setup_logging
from cmt_training.results import command_line, environment_card, write_json
from cmt_training.tasks import load_pretraining_corpus
from cmt_training.trainer import check_output_dir
from modeling_cmt import SAMPLING_RATE, CMTConfig


logger = logging.getLogger(__name__)

TARGET_SETS = ("units", "pitch", "energy")


@dataclass
class TowerArguments:
    tower: str = field(metadata={"help": "audio (HuBERT masked unit prediction) or text (RoBERTa MLM)."})
    preset: str = field(default="demo", metadata={"help": "Preset whose audio_config / text_config shapes the tower."})
    num_units: int = field(default=50, metadata={"help": "k-means units of the MFCC frames (HuBERT: 100)."})
    pitch_bins: int = field(default=16, metadata={"help": "Quantile bins of the frames' log-F0 (0: no pitch target)."})
    energy_bins: int = field(default=8, metadata={"help": "Quantile bins of the frames' log-energy (0: none)."})
    mask_time_prob: float = field(default=0.8, metadata={"help": "Share of frames starting a masked span."})
    mask_time_length: int = field(default=10, metadata={"help": "Frames per masked span."})
    mlm_probability: float = field(default=0.15, metadata={"help": "Share of tokens masked (text tower)."})
    max_kmeans_frames: int = field(default=200_000, metadata={"help": "Frames the k-means is fitted on, at most."})

    def __post_init__(self):
        if self.tower not in ("audio", "text"):
            raise ValueError(f"--tower must be audio or text, got {self.tower!r}.")


# --- audio: frame targets -------------------------------------------------------------------------------------------


class FrameFeatures:
    """MFCCs (+ deltas), log-F0 and log-energy of a waveform, one row per frame of the audio tower."""

    def __init__(self, config: HubertConfig):
        self.model_frames = HubertModel(config)._get_feat_extract_output_lengths
        self.stride = int(np.prod(config.conv_stride))
        self.mfcc = torchaudio.transforms.MFCC(
            SAMPLING_RATE,
            n_mfcc=13,
            melkwargs={"n_fft": 400, "win_length": 400, "hop_length": self.stride, "n_mels": 40, "center": True},
        )

    def __call__(self, waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        audio = torch.from_numpy(np.asarray(waveform, dtype=np.float32))
        frames = int(self.model_frames(torch.tensor(len(audio))))
        mfcc = self.mfcc(audio)  # (13, frames + 1 or so): centred windows every `stride` samples
        mfcc = torch.cat([mfcc, torchaudio.functional.compute_deltas(mfcc)], dim=0)
        mfcc = torch.cat([mfcc, torchaudio.functional.compute_deltas(mfcc[13:])], dim=0)
        mfcc = _fit(mfcc.T, frames)
        pitch = torchaudio.functional.detect_pitch_frequency(
            audio[None],
            SAMPLING_RATE,
            frame_time=self.stride / SAMPLING_RATE,
            win_length=30,
            freq_low=60,
            freq_high=500,
        )[0]
        pitch = _fit(pitch.clamp_min(1.0).log()[:, None], frames)[:, 0]
        padded = torch.nn.functional.pad(audio, (0, frames * self.stride + 400 - len(audio)))
        windows = padded.unfold(0, 400, self.stride)[:frames]
        energy = (windows.pow(2).mean(-1) + 1e-8).log()
        return mfcc.numpy(), pitch.numpy(), energy.numpy()


def _fit(rows: torch.Tensor, frames: int) -> torch.Tensor:
    """`rows` stretched or cut to `frames` rows by nearest index (the feature frames and the model's differ by a few)."""
    index = torch.linspace(0, len(rows) - 1, frames).round().long()
    return rows[index]


def audio_targets(waveforms, config: HubertConfig, args: TowerArguments, seed: int) -> tuple[list[dict], dict]:
    """Per utterance, the frame targets of each set, and what was fitted (k-means, bin edges, cluster usage)."""
    features = FrameFeatures(config)
    computed = [features(waveform) for waveform in waveforms]
    mfcc = np.concatenate([item[0] for item in computed]) if computed else np.zeros((0, 39))
    if len(mfcc) < args.num_units:
        raise ValueError(
            f"The corpus has {len(waveforms)} utterances and {len(mfcc)} audio frames, fewer than --num_units "
            f"{args.num_units} k-means units: give more audio or fewer units."
        )
    mean, std = mfcc.mean(0), mfcc.std(0) + 1e-5
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(mfcc), size=min(len(mfcc), args.max_kmeans_frames), replace=False)
    kmeans = MiniBatchKMeans(args.num_units, random_state=seed, n_init=3, batch_size=4096)
    kmeans.fit((mfcc[sample] - mean) / std)
    edges = {}
    for name, position, bins in (("pitch", 1, args.pitch_bins), ("energy", 2, args.energy_bins)):
        if bins:
            values = np.concatenate([item[position] for item in computed])
            edges[name] = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    targets = []
    for item in computed:
        entry = {"units": kmeans.predict((item[0] - mean) / std).astype(np.int64)}
        for name, position in (("pitch", 1), ("energy", 2)):
            if name in edges:
                entry[name] = np.searchsorted(edges[name], item[position]).astype(np.int64)
        targets.append(entry)
    usage = np.bincount(np.concatenate([entry["units"] for entry in targets]), minlength=args.num_units)
    fitted = {
        "num_frames": int(len(mfcc)),
        "units_used": int((usage > 0).sum()),
        "largest_unit_share": float(usage.max() / usage.sum()),
        "bin_edges": {name: values.tolist() for name, values in edges.items()},
    }
    return targets, fitted


class HubertForMaskedFramePrediction(HubertPreTrainedModel):
    """HubertModel with one linear head per target set, trained to predict the targets of masked frames."""

    def __init__(self, config: HubertConfig, target_sizes: dict[str, int], mask_time_prob: float, mask_length: int):
        super().__init__(config)
        self.hubert = HubertModel(config)
        self.heads = nn.ModuleDict({name: nn.Linear(config.hidden_size, size) for name, size in target_sizes.items()})
        self.mask_time_prob, self.mask_length = mask_time_prob, mask_length
        self.post_init()

    def forward(self, input_values, attention_mask, **targets):
        frames = self.hubert._get_feat_extract_output_lengths(attention_mask.sum(-1))
        num_frames = next(iter(targets.values())).shape[1]
        frame_mask = torch.arange(num_frames, device=frames.device)[None] < frames[:, None]
        mask = _compute_mask_indices(
            (len(frames), num_frames), self.mask_time_prob, self.mask_length, frame_mask.cpu(), min_masks=2
        )
        mask = torch.from_numpy(mask).to(frame_mask.device) & frame_mask
        hidden = self.hubert(input_values, attention_mask=attention_mask, mask_time_indices=mask).last_hidden_state
        hidden = hidden[:, :num_frames][mask]
        losses = {
            name: nn.functional.cross_entropy(self.heads[name](hidden), targets[name][mask]) for name in self.heads
        }
        return {"loss": sum(losses.values()), **{f"{name}_loss": loss.detach() for name, loss in losses.items()}}


class FrameTargetCollator:
    """Pads waveforms (with the feature extractor's normalisation and attention mask) and frame targets (-100)."""

    def __init__(self, feature_extractor: Wav2Vec2FeatureExtractor, names: list[str]):
        self.feature_extractor, self.names = feature_extractor, names

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.feature_extractor(
            [np.asarray(row["waveform"], dtype=np.float32) for row in rows],
            sampling_rate=SAMPLING_RATE,
            padding=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        longest = max(len(row["units"]) for row in rows)
        for name in self.names:
            padded = torch.full((len(rows), longest), -100, dtype=torch.long)
            for index, row in enumerate(rows):
                padded[index, : len(row[name])] = torch.tensor(row[name])
            batch[name] = padded
        return dict(batch)


def pretrain_audio(tower_args, data_args, training_args, corpus) -> dict:
    config = HubertConfig(**CMTConfig.from_preset(tower_args.preset).audio_config.to_dict())
    prepared = prepare_split(corpus, None, data_args.max_audio_seconds)
    started = time.time()
    targets, fitted = audio_targets(prepared["waveform"], config, tower_args, training_args.seed)
    logger.info("frame targets of %d utterances in %.0f s: %s", len(prepared), time.time() - started, fitted)
    names = [name for name in TARGET_SETS if name in targets[0]]
    for name in names:
        prepared = prepared.add_column(name, [entry[name] for entry in targets])
    sizes = {"units": tower_args.num_units, "pitch": tower_args.pitch_bins, "energy": tower_args.energy_bins}
    model = HubertForMaskedFramePrediction(
        config, {name: sizes[name] for name in names}, tower_args.mask_time_prob, tower_args.mask_time_length
    )
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=SAMPLING_RATE, do_normalize=True, return_attention_mask=True)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=prepared.with_format("numpy", columns=["waveform", *names], output_all_columns=True),
        data_collator=FrameTargetCollator(extractor, names),
    )
    trained = trainer.train()
    if trainer.is_world_process_zero():
        model.hubert.save_pretrained(training_args.output_dir)
        extractor.save_pretrained(training_args.output_dir)
    return {"targets": fitted, "target_sets": names, "train": trained.metrics}, trainer.state.log_history


# --- text: masked language modelling --------------------------------------------------------------------------------


def pretrain_text(tower_args, data_args, training_args, corpus) -> dict:
    texts = list(corpus["text"])
    output_dir = Path(training_args.output_dir)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = build_bpe_tokenizer(texts, Path(scratch))
    text_config = CMTConfig.from_preset(tower_args.preset, text_config={"vocab_size": len(tokenizer)}).text_config
    model = RobertaForMaskedLM(RobertaConfig(**text_config.to_dict()))
    tokenizer.model_max_length = model.config.max_position_embeddings - 2  # RoBERTa's positions start after padding
    tokenized = corpus.map(
        lambda rows: tokenizer(rows["text"], truncation=True),
        batched=True,
        remove_columns=corpus.column_names,
        desc="tokenizing",
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=tokenized,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=tower_args.mlm_probability),
    )
    trained = trainer.train()
    if trainer.is_world_process_zero():
        model.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
    return {"vocab_size": len(tokenizer), "train": trained.metrics}, trainer.state.log_history


def main(argv: list[str] | None = None) -> dict:
    tower_args, data_args, training_args = parse_args((TowerArguments, DataArguments, CMTPretrainingArguments), argv)
    if tower_args.tower == "text":
        training_args.train_sampling_strategy = "random"  # tokenized rows carry no `length` column
    setup_logging(training_args, logger)
    apply_cpu_allocator_tuning(training_args)
    Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
    check_output_dir(training_args)
    set_seed(training_args.seed)
    corpus = load_pretraining_corpus(data_args)
    started = time.time()
    pretrain = pretrain_audio if tower_args.tower == "audio" else pretrain_text
    summary, log_history = pretrain(tower_args, data_args, training_args, corpus)
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    results = {
        "tower": tower_args.tower,
        "preset": tower_args.preset,
        "num_utterances": len(corpus),
        "wall_seconds": round(time.time() - started, 1),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        **summary,
        "log_history": log_history,
        **environment_card(command_line(__file__, argv)),
    }
    if training_args.process_index == 0:
        write_json(Path(training_args.output_dir) / "tower_results.json", results)
    return results


if __name__ == "__main__":
    main()
