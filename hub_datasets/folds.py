"""Speaker-independent folds: leave-one-session-out with a session held out for validation, checked for leaks."""

from collections.abc import Sequence

import numpy as np
from datasets import Dataset, DatasetDict, concatenate_datasets


def assert_disjoint(dataset_dict: DatasetDict, columns: Sequence[str]) -> None:
    """Raise if any value of `columns` (e.g. a speaker or a dialog) appears in more than one split.

    Raises:
        `ValueError`: naming the column, the two splits and (some of) the shared values.
    """
    split_names = list(dataset_dict)
    for column in columns:
        values = {name: set(dataset_dict[name].unique(column)) for name in split_names}
        for index, first in enumerate(split_names):
            for second in split_names[index + 1 :]:
                shared = sorted(map(str, values[first] & values[second]))
                if shared:
                    raise ValueError(
                        f"Leak between splits '{first}' and '{second}': {len(shared)} value(s) of '{column}' are on "
                        f"both sides, e.g. {', '.join(shared[:5])}."
                    )


def session_fold(
    dataset_dict: DatasetDict,
    test_session: int,
    validation_session: int | None = None,
    num_sessions: int = 5,
    disjoint_columns: Sequence[str] = ("speaker",),
) -> DatasetDict:
    """Fold `test_session` of a leave-one-session-out protocol as `train` / `validation` / `test`.

    The rows of every split of `dataset_dict` are pooled and regrouped by their `session` column: `test` is
    `test_session`, `validation` is `validation_session` (by default the next session, cyclically) and `train` is
    every other session. Whole sessions, hence whole speakers, are held out, never random rows.

    Args:
        dataset_dict (`DatasetDict`):
            Any splits of a corpus with a `session` column (e.g. IEMOCAP's `session1` ... `session5`).
        test_session (`int`):
            Session held out for testing, in `1 ... num_sessions`.
        validation_session (`int`, *optional*):
            Training session held out for validation; defaults to `test_session % num_sessions + 1`.
        num_sessions (`int`, defaults to 5):
            Number of sessions of the corpus.
        disjoint_columns (`Sequence[str]`, defaults to `("speaker",)`):
            Columns whose values must not be shared between any two of the returned splits; checked on the data.

    Raises:
        `ValueError`: if a session number is out of range, validation and test coincide, a split comes out empty,
            or a value of `disjoint_columns` is on both sides of a split.
    """
    if validation_session is None:
        validation_session = test_session % num_sessions + 1
    for name, session in (("test_session", test_session), ("validation_session", validation_session)):
        if not 1 <= session <= num_sessions:
            raise ValueError(f"{name} must be in 1 ... {num_sessions}, got {session}.")
    if validation_session == test_session:
        raise ValueError(f"validation_session and test_session are both {test_session}; they must differ.")
    pooled: Dataset = concatenate_datasets(list(dataset_dict.values()))
    sessions = np.asarray(pooled["session"])
    is_test, is_validation = sessions == test_session, sessions == validation_session
    fold = DatasetDict(
        train=pooled.select(np.flatnonzero(~is_test & ~is_validation)),
        validation=pooled.select(np.flatnonzero(is_validation)),
        test=pooled.select(np.flatnonzero(is_test)),
    )
    empty = [name for name, split in fold.items() if len(split) == 0]
    if empty:
        raise ValueError(
            f"Fold test_session={test_session}, validation_session={validation_session} has empty {empty}."
        )
    assert_disjoint(fold, disjoint_columns)
    return fold
