"""End-to-end smoke run of the model package, with nothing downloaded.

1. synthesises one utterance with espeak-ng;
2. builds a tiny random-weight CMT classifier (the `tiny` preset) with a tokenizer trained here;
3. saves it in Hub layout (config, safetensors, processor files, remote code);
4. reloads it in a fresh process through `AutoModelForSequenceClassification` / `AutoProcessor` with
   `trust_remote_code=True` and classifies the utterance, checking the logits match the in-process model.

The weights are random, so the predicted label is meaningless: this checks the plumbing, not the model.

    python examples/quickstart.py --output_dir demo_output/quickstart
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import RobertaTokenizerFast, Wav2Vec2FeatureExtractor
from transformers.audio_utils import load_audio

from modeling_cmt import CMTConfig, CMTForSequenceClassification, CMTProcessor


TRANSCRIPT = "I can't believe it, this is wonderful news!"
LABELS = ["angry", "happy", "neutral", "sad"]

RELOAD = r"""
import json, sys
sys.modules["modeling_cmt"] = None  # prove the checkpoint's own code is used
import torch
from transformers import AutoModelForSequenceClassification, AutoProcessor
from transformers.audio_utils import load_audio

folder, wav, text = sys.argv[1:4]
model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
inputs = processor(audio=load_audio(wav, sampling_rate=16000), text=text, sampling_rate=16000)
with torch.no_grad():
    logits = model(**inputs).logits[0]
probabilities = logits.softmax(-1)
print(json.dumps({"class": type(model).__module__ + "." + type(model).__name__, "logits": logits.tolist(),
                  "label": model.config.id2label[int(probabilities.argmax())], "score": float(probabilities.max())}))
"""


def synthesise(text: str, path: Path):
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is not installed: run `apt-get install -y espeak-ng` (or `make demo`, which installs it).")
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True, capture_output=True)


def build_tokenizer(texts: list[str], directory: Path) -> RobertaTokenizerFast:
    """A byte-level BPE tokenizer in RoBERTa's layout (<s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4)."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(directory))
    tokenizer = RobertaTokenizerFast.from_pretrained(str(directory), model_max_length=128)
    if tokenizer.decode(tokenizer(texts[0])["input_ids"], skip_special_tokens=True) != texts[0]:
        raise RuntimeError("The locally trained tokenizer does not round-trip text.")
    return tokenizer


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="demo_output/quickstart", type=Path)
    args = parser.parse_args(argv)
    folder = args.output_dir / "cmt-tiny"
    if folder.exists() and any(folder.iterdir()) and not (folder / "config.json").is_file():
        sys.exit(f"{folder} exists and is not a CMT checkpoint folder; choose another --output_dir.")
    args.output_dir.mkdir(parents=True, exist_ok=True)

    # Data: one synthetic utterance
    wav = args.output_dir / "utterance.wav"
    synthesise(TRANSCRIPT, wav)
    audio = load_audio(str(wav), sampling_rate=16000)
    print(f"[1/4] synthesised {len(audio) / 16000:.2f} s of speech: {TRANSCRIPT!r} -> {wav}")

    # Model and processor
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = build_tokenizer(
            [TRANSCRIPT, "The meeting is at ten.", "I am so sad and angry."] * 5, Path(scratch)
        )
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=True)
    processor = CMTProcessor(feature_extractor=extractor, tokenizer=tokenizer)
    config = CMTConfig.from_preset(
        "tiny", num_labels=4, id2label=dict(enumerate(LABELS)), label2id={name: i for i, name in enumerate(LABELS)}
    )
    model = CMTForSequenceClassification(config).eval()
    parameters = sum(p.numel() for p in model.parameters())
    print(
        f"[2/4] built a tiny random-weight CMT ({parameters:,} parameters, {config.num_cross_layers} cross-modal layers)"
    )

    # Save in Hub layout
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    print(f"[3/4] saved in Hub layout: {', '.join(sorted(p.name for p in folder.iterdir()))}")

    # Reload in a fresh process with remote code
    with torch.no_grad():
        expected = model(**processor(audio=audio, text=TRANSCRIPT, sampling_rate=16000)).logits[0]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    result = subprocess.run(
        [sys.executable, "-c", RELOAD, str(folder.resolve()), str(wav.resolve()), TRANSCRIPT],
        capture_output=True,
        text=True,
        env=env,
        cwd=args.output_dir,
    )
    if result.returncode != 0:
        sys.exit(f"Reloading {folder} with trust_remote_code failed:\n{result.stderr[-2000:]}")
    reloaded = json.loads(result.stdout.strip().splitlines()[-1])
    difference = (torch.tensor(reloaded["logits"]) - expected).abs().max().item()
    print(f"[4/4] fresh process loaded {reloaded['class']} with trust_remote_code=True")
    print(
        f"      prediction: {reloaded['label']} ({reloaded['score']:.3f}); max |logit difference| vs in-process: {difference:.2e}"
    )
    if difference > 1e-5:
        sys.exit("The reloaded model does not reproduce the in-process logits.")
    print(f"OK. Everything is in {args.output_dir}/ (random weights: the label itself means nothing).")


if __name__ == "__main__":
    main()
