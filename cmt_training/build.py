"""The model and processor of a run: from a CMT checkpoint, from two tower checkpoints, or from a random-weight
preset with a byte-level BPE tokenizer trained on the run's own transcripts."""

import os
from pathlib import Path

from transformers import AutoConfig, RobertaTokenizerFast, Wav2Vec2FeatureExtractor

from modeling_cmt import SAMPLING_RATE, CMTConfig, CMTProcessor

from .arguments import ModelArguments


def build_bpe_tokenizer(
    texts: list[str], directory: str | os.PathLike, vocab_size: int = 2000
) -> RobertaTokenizerFast:
    """A byte-level BPE tokenizer in RoBERTa's layout (<s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4) trained on `texts`."""
    from tokenizers import ByteLevelBPETokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(directory))
    tokenizer = RobertaTokenizerFast.from_pretrained(str(directory), model_max_length=128)
    sample = texts[0]
    if tokenizer.decode(tokenizer(sample)["input_ids"], skip_special_tokens=True) != sample:
        raise RuntimeError(f"The tokenizer trained in {directory} does not round-trip {sample!r}.")
    return tokenizer


def ensure_cmt_checkpoint(path: str):
    """Raise a clear error unless `path` holds a CMT checkpoint (not a tower or another model)."""
    try:
        model_type = AutoConfig.from_pretrained(path).model_type
    except (OSError, ValueError) as error:
        raise ValueError(f"--model_name_or_path {path!r} is not a loadable checkpoint: {error}") from error
    if model_type != "cmt":
        raise ValueError(
            f"--model_name_or_path {path!r} is a {model_type!r} checkpoint, not CMT. Pass a tower checkpoint as "
            "--audio_model_name_or_path / --text_model_name_or_path instead."
        )


def build_processor(model_args: ModelArguments, train_texts: list[str], scratch_dir: Path) -> CMTProcessor:
    """The checkpoint's processor, the towers' feature extractor and tokenizer, or (for presets) a new processor
    with a BPE tokenizer trained on `train_texts` in `scratch_dir/tokenizer`."""
    if model_args.model_name_or_path:
        ensure_cmt_checkpoint(model_args.model_name_or_path)
        return CMTProcessor.from_pretrained(model_args.model_name_or_path)
    if model_args.audio_model_name_or_path:
        return CMTProcessor.from_audio_text_pretrained(
            model_args.audio_model_name_or_path, model_args.text_model_name_or_path
        )
    if model_args.tokenizer_name_or_path:
        tokenizer = RobertaTokenizerFast.from_pretrained(model_args.tokenizer_name_or_path)
    else:
        tokenizer = build_bpe_tokenizer(train_texts, scratch_dir / "tokenizer")
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=SAMPLING_RATE, do_normalize=True, return_attention_mask=True)
    return CMTProcessor(feature_extractor=extractor, tokenizer=tokenizer)


def build_model(model_class, model_args: ModelArguments, processor: CMTProcessor, **config_kwargs):
    """A CMT model from a CMT checkpoint, from two tower checkpoints or from a random-weight preset, with the
    feature encoder / towers frozen as `model_args` asks. Checkpoints load from safetensors weights only unless
    `--allow_pickle`. The processor's tokenizer is capped at what the text tower takes, so the processor saved with
    the run truncates transcripts to fit it."""
    config_kwargs = {
        **model_args.config_kwargs(),
        **config_kwargs,
        "attn_implementation": model_args.attn_implementation,
    }
    use_safetensors = None if model_args.allow_pickle else True  # None: safetensors where there are, else the pickle
    sources = [model_args.model_name_or_path, model_args.audio_model_name_or_path, model_args.preset]
    if sum(source is not None for source in sources) != 1:
        raise ValueError(
            "Give exactly one model source: --model_name_or_path (a CMT checkpoint), --audio_model_name_or_path with "
            "--text_model_name_or_path (two towers), or --preset (random weights)."
        )
    if model_args.model_name_or_path:
        path = model_args.model_name_or_path
        ensure_cmt_checkpoint(path)
        model = model_class.from_pretrained(
            path,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            use_safetensors=use_safetensors,
            **config_kwargs,
        )
    elif model_args.audio_model_name_or_path:
        if not model_args.text_model_name_or_path:
            raise ValueError("--audio_model_name_or_path needs --text_model_name_or_path too.")
        model = model_class.from_audio_text_pretrained(
            model_args.audio_model_name_or_path,
            model_args.text_model_name_or_path,
            use_safetensors=use_safetensors,
            **config_kwargs,
        )
    else:
        text_config = {"vocab_size": len(processor.tokenizer)}
        model = model_class(CMTConfig.from_preset(model_args.preset, text_config=text_config, **config_kwargs))
    processor.check_model_config(model.config)
    if model.config.modality != "audio":
        processor.tokenizer.model_max_length = processor.text_token_limit(model.config)
    if model_args.freeze_feature_encoder:
        model.freeze_feature_encoder()
    if model_args.freeze_towers:
        model.freeze_towers()
    if model_args.freeze_audio_tower and model.base_model.audio_model is not None:
        model.base_model.audio_model.requires_grad_(False)
    return model
