"""What did CMT look at? For one utterance (audio file + transcript) and a CMT classification checkpoint, draws

1. the audio-frame x word cross-attention of every cross-modal layer (heads averaged; BPE tokens summed into the
   transcript's whitespace-separated words through a fast tokenizer's offsets, one column per token with a slow
   tokenizer; `<s>` and `</s>` keep their own columns, since audio frames often park attention there);
2. the layer pooler's weights over the cross-modal layers (or a note that the model mean-pools one hidden state);
3. a modality ablation: the prediction with the real inputs, with the audio replaced by silence of the same length,
   and with the transcript emptied (the text tower then reads only `<s></s>`).

It writes `<name>.png` and `<name>.json` (every number in the figure) to `--output_dir`:

    python examples/explain.py --model_name_or_path runs/iemocap-cmt --audio utterance.wav \
        --text "I can't believe you did that." --output_dir explanations

Attention weights need the eager attention kernel: the model switches to it when asked for `output_attentions`. The
figure is drawn on matplotlib's Agg canvas, so no display is needed. Weights load from safetensors files only, unless
`--allow_pickle`; the checkpoint's model type and the output folder are checked before the model loads.
"""

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoProcessor, HfArgumentParser

from cmt_training.trainer import check_writable
from modeling_cmt.pipeline_cmt import as_audio_text_input, check_classification_model, check_waveform, read_audio


@dataclass
class ExplainArguments:
    model_name_or_path: str = field(metadata={"help": "A CMT classification checkpoint (folder or Hub id)."})
    audio: str = field(metadata={"help": "The utterance: an audio file in any format FFmpeg decodes."})
    text: str = field(metadata={"help": "Its transcript."})
    output_dir: str = field(default="explanations", metadata={"help": "Where the PNG and JSON are written."})
    name: str | None = field(default=None, metadata={"help": "File name stem of the outputs (default: the audio's)."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run the model code stored with the checkpoint instead of the package's."}
    )
    allow_pickle: bool = field(
        default=False,
        metadata={
            "help": "Also load weights stored as a pickle (pytorch_model.bin), which can run code hidden in the file: "
            "only for checkpoints you trust. By default only safetensors weights load."
        },
    )
    device: str = field(default="cpu", metadata={"help": "'cpu', 'cuda' or 'cuda:N'."})


# ---------------------------------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------------------------------


def word_columns(tokenizer, text: str, input_ids: list[int]) -> tuple[list[str], list[list[int]]]:
    """
    Column names and, per column, the token positions it sums. With a fast tokenizer, tokens are grouped into the
    transcript's whitespace-separated words through their character offsets (so "tired," is one column); special
    tokens keep a column each. With a slow tokenizer (or if re-tokenizing does not give back `input_ids`), one column
    per token.
    """
    if getattr(tokenizer, "is_fast", False):
        encoding = tokenizer(
            text,
            truncation=True,
            max_length=len(input_ids),
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        if encoding["input_ids"] == input_ids:
            words = [(match.start(), match.end()) for match in re.finditer(r"\S+", text)]
            names, groups, column_of_word = [], [], {}
            offsets, special = encoding["offset_mapping"], encoding["special_tokens_mask"]
            for position, ((start, _), is_special) in enumerate(zip(offsets, special)):
                word = next((index for index, (first, last) in enumerate(words) if first <= start < last), None)
                if is_special or word is None:
                    names.append(tokenizer.convert_ids_to_tokens(input_ids[position]))
                    groups.append([position])
                elif word in column_of_word:
                    groups[column_of_word[word]].append(position)
                else:
                    column_of_word[word] = len(names)
                    names.append(text[words[word][0] : words[word][1]])
                    groups.append([position])
            return names, groups
    tokens = tokenizer.convert_ids_to_tokens(input_ids)
    names = [tokenizer.convert_tokens_to_string([token]).strip() or token for token in tokens]
    return names, [[position] for position in range(len(input_ids))]


def _scores(model, inputs) -> dict[str, float]:
    """Probabilities per label (softmax; sigmoid for multi-label heads), or the raw outputs of a regression head."""
    with torch.no_grad():
        logits = model(**inputs).logits[0].float()
    config = model.config
    if config.num_labels == 1:
        return {"score": logits.item()}
    if config.problem_type == "regression":
        values = logits
    elif config.problem_type == "multi_label_classification":
        values = logits.sigmoid()
    else:
        values = logits.softmax(-1)
    return {config.id2label[index]: value for index, value in enumerate(values.tolist())}


def explain(model, processor, audio, text: str, sampling_rate: int | None = None) -> dict:
    """
    The numbers behind the figure for one utterance: cross-attention heatmaps (frames x words per cross-modal
    layer), layer-pooler weights and the modality ablation. `audio` is anything the audio-text-classification
    pipeline takes (a path, `{"array", "sampling_rate"}`, or an array with `sampling_rate`).
    """
    check_classification_model(model)
    if model.config.modality != "both":
        raise ValueError(f"Explanations need an audio + text model; this one has modality={model.config.modality!r}.")
    if not isinstance(text, str):
        raise ValueError(f"The transcript must be a string, got {type(text).__name__}.")
    model.eval()
    device = model.device
    item = as_audio_text_input(audio)
    waveform, rate = read_audio(item, processor.feature_extractor.sampling_rate, sampling_rate)
    check_waveform(waveform, rate, item.name, max_audio_seconds=None)

    def prepare(waveform, text):
        try:
            inputs = processor(
                audio=waveform,
                text=text,
                sampling_rate=rate,
                min_audio_samples=model.config.min_input_samples(),
                max_text_length=processor.text_token_limit(model.config),
                return_tensors="pt",
            )
        except ValueError as error:
            raise ValueError(f"{item.name}: {error}") from error
        return inputs.to(device)

    inputs = prepare(waveform, text)
    with torch.no_grad():
        outputs = model(**inputs, output_attentions=True)

    input_ids = inputs["input_ids"][0].tolist()
    columns, groups = word_columns(processor.tokenizer, text, input_ids)
    heatmaps = []
    for layer_attention in outputs.cross_attentions or ():
        per_token = layer_attention[0].float().mean(dim=0).cpu()  # (frames, tokens), heads averaged
        per_word = torch.stack([per_token[:, group].sum(dim=-1) for group in groups], dim=-1)  # (frames, words)
        heatmaps.append(per_word.numpy())
    frames = model.config.audio_frames(inputs["input_values"].shape[-1])
    samples_per_frame = int(np.prod(model.config.audio_config.conv_stride))
    pooler_weights = outputs.layer_pooler_weights

    return {
        "model": getattr(model, "name_or_path", ""),
        "audio": item.name,
        "text": text,
        "duration_seconds": max(waveform.shape) / rate,
        "frames": frames,
        "frame_seconds": samples_per_frame / processor.feature_extractor.sampling_rate,
        "words": columns,
        "tokens": processor.tokenizer.convert_ids_to_tokens(input_ids),
        "heatmap_shape": [frames, len(columns)],
        "cross_attention": [heatmap.tolist() for heatmap in heatmaps],
        "pooling": "layer_pooler" if pooler_weights is not None else "mean",
        "cross_hidden_state_index": None if pooler_weights is not None else model.config.cross_hidden_state_index,
        "layer_pooler_weights": pooler_weights.float().cpu().tolist() if pooler_weights is not None else None,
        "ablation": {
            "full": _scores(model, inputs),
            "silent_audio": _scores(model, prepare(np.zeros(waveform.shape, dtype=np.float32), text)),
            "empty_text": _scores(model, prepare(waveform, "")),
        },
    }


# ---------------------------------------------------------------------------------------------------------------------
# Figure
# ---------------------------------------------------------------------------------------------------------------------


def plot(explanation: dict, path: str | os.PathLike) -> None:
    """Heatmap per cross-modal layer (time across, words down), then pooler weights and the ablation side by side.
    Drawn on an Agg canvas, so no display is needed."""
    heatmaps = [np.asarray(heatmap) for heatmap in explanation["cross_attention"]]
    words = explanation["words"]
    duration = explanation["frames"] * explanation["frame_seconds"]
    heatmap_height = 0.8 + 0.22 * len(words)
    rows = max(len(heatmaps), 1)
    figure = Figure(figsize=(10, rows * heatmap_height + 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(rows + 1, 2, height_ratios=[heatmap_height] * rows + [3.0])

    for layer, heatmap in enumerate(heatmaps):
        axis = figure.add_subplot(grid[layer, :])
        image = axis.imshow(heatmap.T, aspect="auto", cmap="viridis", extent=(0, duration, len(words) - 0.5, -0.5))
        axis.set_yticks(range(len(words)), words, fontsize=8)
        axis.set_title(f"Cross-modal layer {layer + 1}: audio-to-text attention (heads averaged)", fontsize=9)
        figure.colorbar(image, ax=axis, pad=0.01)
        if layer == len(heatmaps) - 1:
            axis.set_xlabel("time (s)")
    if not heatmaps:
        axis = figure.add_subplot(grid[0, :])
        axis.axis("off")
        axis.text(0.5, 0.5, "No cross-modal layers (Shallow-Fusion): no cross-attention to show.", ha="center")

    axis = figure.add_subplot(grid[-1, 0])
    weights = explanation["layer_pooler_weights"]
    if weights is not None:
        axis.bar([str(layer + 1) for layer in range(len(weights))], weights, color="tab:blue")
        axis.set_xlabel("cross-modal layer")
        axis.set_ylabel("weight")
        axis.set_title("Layer pooler weights", fontsize=9)
    else:
        axis.axis("off")
        index = explanation["cross_hidden_state_index"]
        axis.text(0.5, 0.5, f"mean pooling\n(no layer pooler; hidden state {index})", ha="center", va="center")

    axis = figure.add_subplot(grid[-1, 1])
    conditions = {"full": "audio + text", "silent_audio": "silent audio", "empty_text": "empty transcript"}
    labels = list(explanation["ablation"]["full"])
    width = 0.8 / len(conditions)
    for offset, (key, title) in enumerate(conditions.items()):
        values = [explanation["ablation"][key][label] for label in labels]
        axis.bar(np.arange(len(labels)) + (offset - 1) * width, values, width, label=title)
    axis.set_xticks(range(len(labels)), labels, fontsize=8)
    axis.set_ylabel("score" if labels == ["score"] else "probability")
    axis.set_title("Modality ablation", fontsize=9)
    axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(conditions))

    figure.suptitle(f"{explanation['audio']}: {explanation['text'][:80]}", fontsize=10)
    figure.savefig(path, dpi=100)


# ---------------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser(ExplainArguments)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        (args,) = parser.parse_json_file(argv[0])
    else:
        (args,) = parser.parse_args_into_dataclasses(argv)

    # what the model is and where the figure goes, checked before the model loads
    config = AutoConfig.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    if config.model_type != "cmt":
        raise ValueError(
            f"--model_name_or_path {args.model_name_or_path!r} is a {config.model_type!r} model, not a CMT "
            "classification checkpoint."
        )
    output_dir = Path(args.output_dir)
    check_writable(output_dir)

    # importing modeling_cmt (above) registers CMT with the Auto classes; None: safetensors, else the pickle
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model_name_or_path,
        config=config,
        trust_remote_code=args.trust_remote_code,
        use_safetensors=None if args.allow_pickle else True,
    ).to(args.device)
    processor = AutoProcessor.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    explanation = explain(model, processor, args.audio, args.text)

    stem = args.name or Path(args.audio).stem
    plot(explanation, output_dir / f"{stem}.png")
    (output_dir / f"{stem}.json").write_text(json.dumps(explanation, indent=1))
    print(f"wrote {output_dir / f'{stem}.png'} and {output_dir / f'{stem}.json'}")
    return explanation


if __name__ == "__main__":
    main()
