"""The tasks the scripts train on: each is one `Task` record in `TASKS` that names its corpus, label column and
protocol and carries the two callables that load the corpus and cut one fold of it. Adding a corpus is one
`register_task(Task(...))`.

The user's own data is the `dataset` task (`--task dataset --dataset_path ... --label_column ...`), described from
its label column's type by `get_task`."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from datasets import ClassLabel, Dataset, DatasetDict, load_dataset, load_from_disk

import hub_datasets


@dataclass(frozen=True)
class Task:
    """A corpus and its evaluation protocol.

    Args:
        name: what `--task` calls it.
        corpus: the corpus it reads (the model card's dataset).
        label_column: the target column.
        problem: `"classification"` or `"regression"`.
        description: one line for results cards.
        load: `load(data_args) -> DatasetDict`, the whole corpus as `hub_datasets` builds it.
        fold: `fold(corpus, held_out) -> DatasetDict` with `train` / `validation` / `test` (speaker-disjoint);
            `held_out` is the test session for leave-one-session-out tasks, None for fixed splits.
        folds: the held-out sessions of a leave-one-session-out task; () for fixed splits.
        best_metric / greater_is_better: how the best validation checkpoint is chosen.
        split: how the folds are cut, for results cards.
    """

    name: str
    corpus: str
    label_column: str
    problem: Literal["classification", "regression"]
    description: str
    load: Callable[..., DatasetDict]
    fold: Callable[[DatasetDict, int | None], DatasetDict]
    folds: tuple[int, ...] = ()
    best_metric: str = "ua"
    greater_is_better: bool = True
    split: str = "standard train/validation/test"

    @property
    def regression(self) -> bool:
        return self.problem == "regression"

    def label_names(self, dataset: Dataset) -> list[str] | None:
        """Class names in id order (None for regression)."""
        return None if self.regression else dataset.features[self.label_column].names


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Adds `task` to `TASKS` (what `--task` accepts); a task of the same name is replaced."""
    TASKS[task.name] = task
    return task


def fixed_splits(corpus: DatasetDict, held_out: int | None = None) -> DatasetDict:
    """The corpus's own train / validation / test splits."""
    return DatasetDict({name: corpus[name] for name in ("train", "validation", "test")})


def corpus_options(data_args) -> dict:
    """What every corpus loader takes from the data arguments: the cache folder, and whether to rebuild."""
    return {
        "cache_dir": data_args.cache_dir,
        "download_mode": "force_redownload" if getattr(data_args, "rebuild_dataset", False) else None,
    }


def _needs_data_dir(corpus: str, data_args) -> str:
    if not data_args.data_dir:
        raise ValueError(f"Task on {corpus} needs --data_dir pointing at your local copy of the corpus.")
    return data_args.data_dir


LOSO = "leave-one-session-out, validation = next session"
SESSIONS = (1, 2, 3, 4, 5)

register_task(Task(
    name="synthetic_emotion", corpus="synthetic_emotion", label_column="label", problem="classification",
    description="embedded espeak-ng corpus, 4 classes, leave-one-session-out (2 voices per session)",
    load=lambda args: hub_datasets.load_synthetic_emotion(
        "emotion", num_utterances=args.synthetic_size, **corpus_options(args)
    ),
    fold=lambda corpus, session: hub_datasets.synthetic_emotion_loso_fold(corpus, test_session=session),
    folds=SESSIONS, split=LOSO,
))  # fmt: skip
register_task(Task(
    name="synthetic_sentiment", corpus="synthetic_emotion", label_column="sentiment", problem="regression",
    description="embedded espeak-ng corpus, sentiment score in [-3, 3], speaker-disjoint train/validation/test",
    load=lambda args: hub_datasets.load_synthetic_emotion(
        "sentiment", num_utterances=args.synthetic_size, **corpus_options(args)
    ),
    fold=fixed_splits, best_metric="mae", greater_is_better=False,
))  # fmt: skip
register_task(Task(
    name="iemocap", corpus="iemocap", label_column="label", problem="classification",
    description="IEMOCAP 4 classes (hap+exc merged), leave-one-session-out, validation = the next session",
    load=lambda args: hub_datasets.load_iemocap(_needs_data_dir("iemocap", args), "4class", **corpus_options(args)),
    fold=lambda corpus, session: hub_datasets.iemocap_loso_fold(corpus, test_session=session),
    folds=SESSIONS, split=LOSO,
))  # fmt: skip
register_task(Task(
    name="mosei", corpus="cmu_mosei", label_column="sentiment", problem="regression",
    description="CMU-MOSEI sentiment regression in [-3, 3], standard folds",
    load=lambda args: hub_datasets.load_cmu_mosei(_needs_data_dir("cmu_mosei", args), **corpus_options(args)),
    fold=fixed_splits, best_metric="mae", greater_is_better=False,
))  # fmt: skip


def load_user_dataset(path: str | None) -> DatasetDict:
    """A DatasetDict saved with `save_to_disk`, or anything `load_dataset` reads, with train/validation/test splits
    and `audio` and `text` columns."""
    if not path:
        raise ValueError("--task dataset needs --dataset_path (a DatasetDict folder or a dataset name).")
    corpus = load_from_disk(path) if (Path(path) / "dataset_dict.json").is_file() else load_dataset(path)
    missing = [name for name in ("train", "validation", "test") if name not in corpus]
    if missing:
        raise ValueError(f"{path} lacks the split(s) {missing}; it has {list(corpus)}. Provide train/validation/test.")
    absent = [name for name in ("audio", "text") if name not in corpus["train"].column_names]
    if absent:
        raise ValueError(f"{path} lacks the column(s) {absent}; columns: {', '.join(corpus['train'].column_names)}.")
    return corpus


def dataset_task(dataset_path: str | None, label_column: str) -> Task:
    """The user's DatasetDict as a task: classification for a ClassLabel column, regression for a float one."""
    corpus = load_user_dataset(dataset_path)
    feature = corpus["train"].features.get(label_column)
    if feature is None:
        raise ValueError(
            f"--label_column {label_column!r} is not a column of {dataset_path}; columns: "
            f"{', '.join(corpus['train'].column_names)}."
        )
    if isinstance(feature, ClassLabel):
        problem, best_metric, greater_is_better = "classification", "ua", True
    elif getattr(feature, "dtype", "").startswith("float"):
        problem, best_metric, greater_is_better = "regression", "mae", False
    else:
        raise ValueError(
            f"--label_column {label_column!r} must be a ClassLabel (classification) or a float (regression)."
        )
    return Task(
        name="dataset", corpus="dataset", label_column=label_column, problem=problem, description=str(dataset_path),
        load=lambda args: corpus, fold=fixed_splits, best_metric=best_metric, greater_is_better=greater_is_better,
    )  # fmt: skip


def get_task(data_args) -> Task:
    """The task named by `--task`."""
    if data_args.task == "dataset":
        return dataset_task(data_args.dataset_path, data_args.label_column)
    if data_args.task not in TASKS:
        raise ValueError(f"Unknown task {data_args.task!r}. Available tasks: {', '.join(TASKS)}, dataset.")
    return TASKS[data_args.task]


def resolve_folds(task: Task, test_fold: str | None) -> list[int | None]:
    """`test_fold` as the list of held-out sessions to run: one (`3`), several (`1,3,5`) or all of them (`all`)."""
    if not task.folds:
        if test_fold not in (None, "", "none"):
            raise ValueError(
                f"This task has fixed train/validation/test splits; drop --test_fold (got {test_fold!r})."
            )
        return [None]
    if test_fold in (None, ""):
        raise ValueError(f"Pass --test_fold with one of {list(task.folds)} or 'all' (leave-one-session-out).")
    if test_fold == "all":
        return list(task.folds)
    folds = test_fold.split(",")
    if not all(fold.strip().isdigit() and int(fold) in task.folds for fold in folds) or len(set(folds)) != len(folds):
        raise ValueError(
            f"--test_fold must be one of {list(task.folds)}, a comma-separated list of them, or 'all'; got {test_fold!r}."
        )
    return [int(fold) for fold in folds]


def load_pretraining_corpus(data_args) -> Dataset:
    """Audio-transcript pairs for pretraining: an `audio_text_pairs` source (`--data_dir`: a folder with a metadata
    file, a dataset folder or a Hub dataset name; streaming with `--streaming`), or, for task-adaptive pretraining
    (TAPT), the training split of a task's fold (labels unused, the fold's test speakers never included)."""
    if data_args.task == "audio_text_pairs":
        if not data_args.data_dir:
            raise ValueError(
                "--task audio_text_pairs needs --data_dir (a folder with metadata.csv/.jsonl, or a dataset)."
            )
        return hub_datasets.load_audio_text_pairs(
            data_args.data_dir,
            audio_column=data_args.audio_column,
            text_column=data_args.text_column,
            split="train",
            streaming=data_args.streaming,
            **corpus_options(data_args),
        )
    task = get_task(data_args)
    folds = resolve_folds(task, data_args.test_fold)
    if len(folds) != 1:
        raise ValueError(
            "Pretraining on a task (TAPT) uses one fold's training split: pass --test_fold with one session."
        )
    return task.fold(task.load(data_args), folds[0])["train"]
