"""Fit the k-means codebook of masked acoustic unit prediction and write the starting pretraining checkpoint.

Features are the audio tower's hidden states at `codebook_layer` (unmasked, eval mode) on a sample of the corpus;
scikit-learn's MiniBatchKMeans clusters them and the centroids are stored in `CMTForPreTraining.codebook` (a model
tensor, saved in safetensors, never a pickle). The output folder is a complete CMT checkpoint (config, weights,
codebook, processor) for `run_pretrain.py --model_name_or_path`.

    python examples/fit_codebook.py --audio_model_name_or_path facebook/hubert-base-ls960 \
        --text_model_name_or_path FacebookAI/roberta-base --task iemocap --data_dir IEMOCAP_full_release \
        --codebook_size 100 --output_dir runs/codebook
    python examples/fit_codebook.py --preset tiny --task synthetic_emotion --output_dir runs/codebook   # CPU, seconds
"""

import os


# OpenMP threads that spin while they wait starve any other CPU-bound process (and are starved by it): a train step
# then runs many times slower. Waiting threads sleep instead; this must be set before torch loads (README, "Threads").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import MiniBatchKMeans
from tqdm.auto import tqdm
from transformers import set_seed

from cmt_training.arguments import CodebookArguments, DataArguments, ModelArguments, parse_args
from cmt_training.build import build_model, build_processor
from cmt_training.data import AudioTextCollator, prepare_split
from cmt_training.tasks import load_pretraining_corpus
from cmt_training.trainer import check_output_dir
from modeling_cmt import CMTForPreTraining


logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> Path:
    model_args, data_args, args = parse_args((ModelArguments, DataArguments, CodebookArguments), argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    check_output_dir(args)
    set_seed(args.seed)
    output_dir = Path(args.output_dir)

    # Data: a sample of the pretraining corpus (its training split)
    corpus = load_pretraining_corpus(data_args)
    if len(corpus) > args.max_utterances:
        corpus = corpus.shuffle(seed=args.seed).select(range(args.max_utterances))
    prepared = prepare_split(corpus, None, data_args.max_audio_seconds, data_args.preprocessing_num_workers)

    # Model: the pretraining model whose codebook this fits
    processor = build_processor(model_args, prepared["text"], output_dir)
    overrides = {"codebook_size": args.codebook_size}
    if args.codebook_layer is not None:
        overrides["codebook_layer"] = args.codebook_layer
    model = build_model(CMTForPreTraining, model_args, processor, **overrides).eval()

    # Features at the codebook layer, real frames only
    collator = AudioTextCollator(processor, min_audio_samples=model.config.min_input_samples())
    chunks = []
    batches = range(0, len(prepared), args.batch_size)
    for start in tqdm(batches, desc="codebook-layer features", unit="batch", disable=args.disable_tqdm):
        batch = collator([prepared[index] for index in range(start, min(start + args.batch_size, len(prepared)))])
        features, frame_mask = model.compute_unit_features(batch["input_values"], batch["audio_attention_mask"])
        chunks.append(
            features[frame_mask].float().numpy() if frame_mask is not None else features.flatten(0, 1).numpy()
        )
    features = np.concatenate(chunks)
    if len(features) < args.codebook_size:
        raise ValueError(
            f"Only {len(features)} frames for {args.codebook_size} clusters: use more utterances or a smaller codebook."
        )
    logger.info(f"clustering {len(features):,} frames of width {features.shape[1]} into {args.codebook_size} units")

    # k-means
    kmeans = MiniBatchKMeans(
        n_clusters=args.codebook_size, batch_size=4096, n_init=3, random_state=args.seed, max_iter=100
    ).fit(features)
    model.set_codebook(torch.from_numpy(kmeans.cluster_centers_))
    usage = np.bincount(kmeans.labels_, minlength=args.codebook_size)
    logger.info(
        f"inertia per frame {kmeans.inertia_ / len(features):.4f}; units used {int((usage > 0).sum())}/"
        f"{args.codebook_size}; largest unit holds {usage.max() / len(features):.1%} of frames"
    )

    # Save: a complete pretraining checkpoint
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    logger.info(f"codebook stored in {output_dir}/model.safetensors (tensor `codebook`)")
    return output_dir


if __name__ == "__main__":
    main()
