"""Corpus builders for CMT: each corpus as a `datasets.DatasetDict` with an `audio` column (16 kHz) and a transcript.

One module per corpus, each a `datasets.GeneratorBasedBuilder` with a one-call `load_<corpus>` helper:

- `iemocap`: the user's `IEMOCAP_full_release`, splits `session1` ... `session5`, `iemocap_loso_fold` for folds;
- `cmu_mosei`: the user's raw CMU-MOSEI release, cut into labelled segments, standard `train` / `validation` / `test`;
- `audio_text_pairs`: audio-transcript pairs for pretraining, from a folder with a metadata file or any dataset;
- `synthetic_emotion`: the embedded default corpus, rendered locally with espeak-ng.

`python -m hub_datasets.prepare <corpus> ...` writes a corpus as Parquet shards with a dataset card, ready for
`push_to_hub` and then plain `datasets.load_dataset("org/name")`.
"""

from .audio_text_pairs import AudioTextPairs, AudioTextPairsConfig, load_audio_text_pairs, normalize_audio_text_columns
from .cmu_mosei import CmuMosei, CmuMoseiConfig, load_cmu_mosei
from .folds import assert_disjoint, session_fold
from .iemocap import Iemocap, IemocapConfig, iemocap_loso_fold, load_iemocap
from .synthetic_emotion import (
    SyntheticEmotion,
    SyntheticEmotionConfig,
    load_synthetic_emotion,
    synthetic_emotion_ceilings,
    synthetic_emotion_loso_fold,
)


__all__ = [
    "AudioTextPairs",
    "AudioTextPairsConfig",
    "CmuMosei",
    "CmuMoseiConfig",
    "Iemocap",
    "IemocapConfig",
    "SyntheticEmotion",
    "SyntheticEmotionConfig",
    "assert_disjoint",
    "iemocap_loso_fold",
    "load_audio_text_pairs",
    "load_cmu_mosei",
    "load_iemocap",
    "load_synthetic_emotion",
    "normalize_audio_text_columns",
    "session_fold",
    "synthetic_emotion_ceilings",
    "synthetic_emotion_loso_fold",
]
