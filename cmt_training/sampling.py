"""Dynamic batching by audio duration, as fairseq's `max_tokens` and SpeechBrain's `DynamicBatchSampler` do it: a
batch holds as many utterances as fit in a budget of padded audio seconds, so short utterances come in large batches
and long ones in small batches, at nearly no padding."""

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class DurationBatchSampler(Sampler[list[int]]):
    """
    Batches of dataset indices whose padded audio, batch size x longest utterance, is at most `max_batch_seconds`.

    Every epoch the utterances are sorted by duration with ties broken at random (fairseq's ordering), cut greedily
    into batches, and the batches shuffled; the batch with the most padded audio comes first, so that an
    out-of-memory shows in the first step (as transformers' `LengthGroupedSampler` arranges it). The batch sizes are
    the same every epoch, so `len()` is fixed, as the Trainer and accelerate need.

    The order depends only on `seed` and the epoch (`set_epoch`): every process of a distributed job computes the
    same batches without communicating, and accelerate's `BatchSamplerShard` hands batch `i` to rank `i % N`. With
    its `even_batches` (the default) it repeats the first batches of the epoch so that every rank gets
    `ceil(len / N)` batches.

    Args:
        seconds (`Sequence[float]`): duration of every utterance of the dataset, in dataset order.
        max_batch_seconds (`float`): budget of padded audio per batch; every utterance must fit in it.
        seed (`int`, defaults to 0): seed of the tie-breaking and of the batch order.
    """

    def __init__(self, seconds: Sequence[float], max_batch_seconds: float, seed: int = 0):
        if max_batch_seconds <= 0:
            raise ValueError(f"max_batch_seconds must be positive, got {max_batch_seconds}.")
        self.seconds = np.asarray(seconds, dtype=np.float64)
        if self.seconds.ndim != 1 or len(self.seconds) == 0:
            raise ValueError("DurationBatchSampler needs the duration of at least one utterance.")
        longest = int(np.argmax(self.seconds))
        if self.seconds[longest] > max_batch_seconds:
            raise ValueError(
                f"--max_batch_seconds {max_batch_seconds:g} is shorter than the longest utterance (row {longest}, "
                f"{self.seconds[longest]:.2f} s): raise it, or cut utterances shorter with --max_audio_seconds."
            )
        self.max_batch_seconds = float(max_batch_seconds)
        self.seed = seed
        self.epoch = 0
        self.batch_sizes = self._batch_sizes(np.sort(self.seconds))

    def _batch_sizes(self, ascending: np.ndarray) -> list[int]:
        """Greedy cuts of the ascending durations: each new utterance is the longest of its batch so far."""
        sizes, count = [], 0
        for duration in ascending:
            if count and (count + 1) * duration > self.max_batch_seconds:
                sizes.append(count)
                count = 0
            count += 1
        sizes.append(count)
        return sizes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batch_sizes)

    def __iter__(self) -> Iterator[list[int]]:
        generator = np.random.default_rng([self.seed, self.epoch])
        shuffled = generator.permutation(len(self.seconds))
        ascending = shuffled[np.argsort(self.seconds[shuffled], kind="stable")]
        bounds = np.cumsum([0, *self.batch_sizes])
        batches = [ascending[start:end].tolist() for start, end in zip(bounds[:-1], bounds[1:])]
        padded = [len(batch) * self.seconds[batch[-1]] for batch in batches]
        largest = int(np.argmax(padded))
        rest = [batches[index] for index in generator.permutation(len(batches)) if index != largest]
        yield batches[largest]
        yield from rest


__all__ = ["DurationBatchSampler"]
