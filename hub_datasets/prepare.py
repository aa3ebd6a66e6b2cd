"""Write a corpus as Parquet shards with its dataset card, ready for the Hub, and optionally push it there.

```
python -m hub_datasets.prepare iemocap --data_dir /data/IEMOCAP_full_release --output_dir iemocap_parquet
python -m hub_datasets.prepare synthetic_emotion --output_dir synthetic --push_to_hub my-org/cmt-synthetic-emotion
```

The output folder is a dataset repository: `<config>/<split>-NNNNN-of-NNNNN.parquet` (audio embedded), a
`<config>/build_report.txt`, and a `README.md` card whose YAML lists the configs, splits and features. So
`datasets.load_dataset(output_dir, config)` works locally and, once pushed, `load_dataset("org/name", config)`.
Running it again for another config adds that config to the same folder.
"""

import argparse
import logging
import re
import shutil
import tempfile
from pathlib import Path

from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, HfApi

from .audio_text_pairs import AudioTextPairs
from .cmu_mosei import CmuMosei
from .iemocap import Iemocap
from .synthetic_emotion import SyntheticEmotion


logger = logging.getLogger(__name__)

CORPORA = {
    "iemocap": Iemocap,
    "cmu_mosei": CmuMosei,
    "audio_text_pairs": AudioTextPairs,
    "synthetic_emotion": SyntheticEmotion,
}
CARDS_DIR = Path(__file__).parent / "cards"


def prepare(
    corpus: str,
    output_dir: str | Path,
    configs: list[str] | None = None,
    max_shard_size: str | int = "500MB",
    num_proc: int | None = None,
    **config_kwargs,
) -> Path:
    """Build `configs` of `corpus` (all of them by default) as Parquet shards plus a dataset card in `output_dir`.

    Args:
        corpus (`str`):
            One of `CORPORA`.
        output_dir (`str` or `Path`):
            Folder of the dataset repository to write; other configs already in it are kept.
        configs (`list[str]`, *optional*):
            Config names; defaults to every config of the corpus.
        max_shard_size (`str` or `int`, defaults to `"500MB"`):
            Largest shard, before Parquet compression.
        num_proc (`int`, *optional*):
            Processes used to build each config.
        config_kwargs:
            Passed to the builder, e.g. `data_dir`, `strict`, or `num_utterances` and `seed` for the synthetic corpus.

    Returns:
        `Path`: `output_dir`.
    """
    if corpus not in CORPORA:
        raise ValueError(f"Unknown corpus {corpus!r}; choose one of {', '.join(CORPORA)}.")
    builder_class = CORPORA[corpus]
    configs = configs or [config.name for config in builder_class.BUILDER_CONFIGS]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    readme = output_dir / "README.md"
    card = DatasetCard(readme.read_text() if readme.exists() else (CARDS_DIR / f"{corpus}.md").read_text())

    infos = {}
    for config_name in configs:
        builder = builder_class(config_name=config_name, **config_kwargs)
        config_dir = output_dir / config_name
        # Build beside the output (same file system, so shards are moved, not copied) and away from it: the
        # builder leaves lock files next to the folder it writes.
        with tempfile.TemporaryDirectory(dir=output_dir.parent) as staging:
            built_dir = Path(staging) / "parquet"
            builder.download_and_prepare(
                output_dir=str(built_dir), file_format="parquet", max_shard_size=max_shard_size, num_proc=num_proc
            )
            shutil.rmtree(config_dir, ignore_errors=True)
            config_dir.mkdir()
            for split in builder.info.splits:
                shard_name = re.compile(
                    rf"{re.escape(builder.dataset_name)}-{re.escape(split)}(-\d+-of-\d+)?\.parquet"
                )
                shards = sorted(path for path in built_dir.iterdir() if shard_name.fullmatch(path.name))
                for index, shard in enumerate(shards):
                    shard.rename(config_dir / f"{split}-{index:05d}-of-{len(shards):05d}.parquet")
        (config_dir / "build_report.txt").write_text(builder.info.description)
        logger.info("Wrote %s/%s to %s:\n%s", corpus, config_name, config_dir, builder.info.description)
        infos[config_name] = builder.info
        metadata = {
            "data_files": [{"split": split, "path": f"{config_name}/{split}-*"} for split in builder.info.splits]
        }
        if config_name == builder_class.DEFAULT_CONFIG_NAME or len(builder_class.BUILDER_CONFIGS) == 1:
            metadata["default"] = True
        MetadataConfigs({config_name: metadata}).to_dataset_card_data(card.data)
    DatasetInfosDict(infos).to_dataset_card_data(card.data)
    card.save(readme)
    return output_dir


def push_to_hub(output_dir: str | Path, repo_id: str, private: bool = False) -> None:
    """Upload a folder written by `prepare` to the dataset repository `repo_id` (created if needed).

    Raises:
        `RuntimeError`: when the Hub cannot be reached or refuses the upload (offline, not logged in, no write
            access); the message says how to upload the (complete) local folder later.
    """
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(output_dir), repo_type="dataset")
    except Exception as error:  # network, authentication and permission errors all leave the local copy usable
        raise RuntimeError(
            f"Could not push {output_dir} to the Hugging Face Hub as {repo_id} ({type(error).__name__}: {error}). "
            f"The Parquet dataset in {output_dir} is complete; check your connection and `hf auth login`, then "
            f"upload it with `hf upload {repo_id} {output_dir} --repo-type dataset`."
        ) from error
    logger.info("Pushed %s to https://huggingface.co/datasets/%s", output_dir, repo_id)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hub_datasets.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", choices=list(CORPORA))
    parser.add_argument("--output_dir", required=True, help="Folder of the dataset repository to write.")
    parser.add_argument("--data_dir", help="The corpus on disk (not needed for synthetic_emotion).")
    parser.add_argument("--config", nargs="+", dest="configs", help="Configs to build (default: all).")
    parser.add_argument("--strict", action="store_true", help="Fail on the first missing or corrupt file.")
    parser.add_argument("--num_utterances", type=int, help="synthetic_emotion: corpus size.")
    parser.add_argument("--seed", type=int, help="synthetic_emotion: seed.")
    parser.add_argument("--max_shard_size", default="500MB")
    parser.add_argument("--num_proc", type=int)
    parser.add_argument("--push_to_hub", metavar="ORG/NAME", help="Also upload the folder to this dataset repo.")
    parser.add_argument("--private", action="store_true", help="Create the Hub repository as private.")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    config_kwargs = {
        name: value
        for name, value in (("data_dir", args.data_dir), ("num_utterances", args.num_utterances), ("seed", args.seed))
        if value is not None
    }
    if args.strict:
        config_kwargs["strict"] = True
    output_dir = prepare(
        args.corpus,
        args.output_dir,
        configs=args.configs,
        max_shard_size=args.max_shard_size,
        num_proc=args.num_proc,
        **config_kwargs,
    )
    if args.push_to_hub:
        try:
            push_to_hub(output_dir, args.push_to_hub, private=args.private)
        except RuntimeError as error:
            raise SystemExit(f"error: {error}") from error


if __name__ == "__main__":
    main()
