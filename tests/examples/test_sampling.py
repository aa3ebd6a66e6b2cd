"""cmt_training/sampling.py: batches by audio duration (`--max_batch_seconds`), alone, sharded across ranks as
accelerate shards them, and through run_finetune.py / run_pretrain.py (CPU, one process; several processes are in
test_distributed.py)."""

import itertools
import json

import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from safetensors.torch import load_file
from transformers import TrainerCallback

from cmt_training.sampling import DurationBatchSampler
from cmt_training.trainer import CMTTrainer


def lognormal_seconds(count: int = 1000, seed: int = 0) -> np.ndarray:
    """IEMOCAP-like durations: median 3.5 s, mean 4.5 s, 0.6-34 s."""
    sigma = np.sqrt(2 * np.log(4.5 / 3.5))
    return np.clip(np.random.default_rng(seed).lognormal(np.log(3.5), sigma, count), 0.6, 34.0)


def padded_seconds(seconds: np.ndarray, batch: list[int]) -> float:
    return len(batch) * float(seconds[batch].max())


def test_every_utterance_once_per_epoch_within_the_budget():
    seconds = lognormal_seconds()
    sampler = DurationBatchSampler(seconds, max_batch_seconds=40.0, seed=3)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)  # the same count every epoch: Trainer and accelerate rely on len()
        assert sorted(itertools.chain(*batches)) == list(range(len(seconds)))
        assert all(padded_seconds(seconds, batch) <= 40.0 for batch in batches)
        assert padded_seconds(seconds, batches[0]) == max(padded_seconds(seconds, batch) for batch in batches)
        epochs.append(batches)
    assert epochs[0] != epochs[1]  # reshuffled every epoch
    sizes = [len(batch) for batch in epochs[0]]
    assert min(sizes) == 1 and max(sizes) > 20  # long utterances alone, short ones many at a time


def test_the_order_depends_only_on_seed_and_epoch():
    seconds = lognormal_seconds(200)
    first, second = DurationBatchSampler(seconds, 30.0, seed=1), DurationBatchSampler(seconds, 30.0, seed=1)
    first.set_epoch(4)
    second.set_epoch(4)
    assert list(first) == list(second)  # what every rank computes without communicating
    second.set_epoch(5)
    assert list(first) != list(second)


def test_batches_by_duration_pad_far_less_than_fixed_batches():
    seconds = lognormal_seconds()
    sampler = DurationBatchSampler(seconds, max_batch_seconds=8 * float(np.mean(seconds)))
    batches = list(sampler)
    real = sum(float(seconds[batch].sum()) for batch in batches)
    padding = 1 - real / sum(padded_seconds(seconds, batch) for batch in batches)
    order = np.random.default_rng(0).permutation(len(seconds))
    random_batches = [order[start : start + 8].tolist() for start in range(0, len(order), 8)]
    random_padding = 1 - real / sum(padded_seconds(seconds, batch) for batch in random_batches)
    assert padding < 0.02 < 0.3 < random_padding


@pytest.mark.parametrize("num_processes", [2, 3])
def test_accelerate_gives_every_rank_the_same_number_of_batches(num_processes):
    for count in itertools.count(301):  # a dataset whose batches do not split evenly: where ranks could differ
        seconds = lognormal_seconds(count)
        sampler = DurationBatchSampler(seconds, max_batch_seconds=40.0, seed=0)
        if len(sampler) % num_processes:
            break
    shards = [BatchSamplerShard(sampler, num_processes, rank) for rank in range(num_processes)]
    per_rank = [list(shard) for shard in shards]
    expected = -(-len(sampler) // num_processes)
    assert [len(batches) for batches in per_rank] == [len(shard) for shard in shards] == [expected] * num_processes
    seen = list(itertools.chain(*itertools.chain(*per_rank)))
    assert set(seen) == set(range(len(seconds)))  # every utterance trained on
    repeated = len(seen) - len(seconds)
    first_batches = list(sampler)[: num_processes - 1]
    assert 0 < repeated <= sum(len(batch) for batch in first_batches)  # even_batches repeats a few first batches


def test_an_utterance_longer_than_the_budget_is_refused():
    with pytest.raises(
        ValueError, match=r"--max_batch_seconds 5 is shorter than the longest utterance \(row 2, 7.00 s\)"
    ):
        DurationBatchSampler([1.0, 2.0, 7.0, 3.0], max_batch_seconds=5)
    with pytest.raises(ValueError, match="must be positive"):
        DurationBatchSampler([1.0], max_batch_seconds=0)


# --- through the training scripts ---------------------------------------------------------------------------------


TINY = [
    "--preset", "tiny", "--learning_rate", "3e-3", "--disable_tqdm", "true", "--logging_steps", "1",
    "--max_audio_seconds", "3", "--dataloader_pin_memory", "false", "--seed", "0",
]  # fmt: skip


def test_run_finetune_trains_on_batches_by_duration(run_script, trainers, word_dataset, tmp_path):
    output = tmp_path / "run"
    run_script(
        "run_finetune", "--task", "dataset", "--dataset_path", word_dataset, *TINY, "--max_batch_seconds", "2.5",
        "--num_train_epochs", "2", "--output_dir", output,
    )  # fmt: skip
    trainer = trainers[0]
    loader = trainer.get_train_dataloader()
    sampler = loader.batch_sampler  # one process: accelerate keeps the batch sampler as it is
    assert isinstance(sampler, DurationBatchSampler)
    sizes = [len(batch["labels"]) for batch in loader]
    assert len(sizes) == len(sampler) and sum(sizes) == 96 and len(set(sizes)) > 1
    seconds = np.asarray(trainer.train_dataset["length"]) / 16000  # word_dataset: 0.25-0.5 s utterances
    assert all(padded_seconds(seconds, batch) <= 2.5 for batch in sampler)
    results = json.loads((output / "results.json").read_text())
    assert results["protocol"]["training"]["max_batch_seconds"] == 2.5
    assert trainer.state.global_step == 2 * len(sampler)


def test_predictions_come_back_in_the_dataset_order(run_script, trainers, word_dataset, tmp_path):
    """Training batches by length (the default) must not reorder evaluation: the scripts pair predictions with the
    dataset's rows (per-item-type metrics, `test_logits`)."""
    run_script(
        "run_finetune", "--task", "dataset", "--dataset_path", word_dataset, *TINY, "--max_steps", "1",
        "--per_device_eval_batch_size", "8", "--output_dir", tmp_path / "run",
    )  # fmt: skip
    trainer = trainers[0]
    assert trainer.args.train_sampling_strategy == "group_by_length"
    validation = trainer.eval_dataset
    assert sorted(validation["length"], reverse=True) != list(validation["length"])
    assert trainer.predict(validation).label_ids.tolist() == list(validation["labels"])


def test_a_run_resumed_mid_epoch_gets_the_same_batches(run_script, trainers, word_dataset, tmp_path, monkeypatch):
    arguments = [
        "--task", "dataset", "--dataset_path", word_dataset, *TINY, "--max_batch_seconds", "2.5",
        "--num_train_epochs", "2", "--save_strategy", "steps", "--eval_strategy", "no",
        "--load_best_model_at_end", "false",
    ]  # fmt: skip
    run_script("run_finetune", *arguments, "--save_steps", "1000", "--output_dir", tmp_path / "straight")
    steps_per_epoch = trainers[0].state.global_step // 2
    kill_at = steps_per_epoch + steps_per_epoch // 2  # in the middle of the second epoch

    class KillAfterSaving(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == kill_at:
                raise KeyboardInterrupt("killed after a checkpoint")

    resumed = [*arguments, "--save_steps", str(kill_at), "--output_dir", tmp_path / "resumed"]
    original = CMTTrainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.add_callback(KillAfterSaving())

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(CMTTrainer, "__init__", init)
        run_script("run_finetune", *resumed)
    state = json.loads((tmp_path / "resumed" / f"checkpoint-{kill_at}" / "trainer_state.json").read_text())
    assert 1 < state["epoch"] < 2
    run_script("run_finetune", *resumed, "--resume_from_checkpoint", "true")
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_cached_tower_outputs_and_streams_are_refused(run_script, word_dataset, tmp_path):
    with pytest.raises(ValueError, match="--max_batch_seconds batches waveforms by duration; cached tower outputs"):
        run_script(
            "run_finetune", "--task", "dataset", "--dataset_path", word_dataset, *TINY, "--freeze_towers", "true",
            "--cache_tower_outputs", "true", "--max_batch_seconds", "4", "--output_dir", tmp_path / "run",
        )  # fmt: skip
    with pytest.raises(ValueError, match="--max_batch_seconds plans batches from every utterance's duration"):
        run_script(
            "run_pretrain", "--task", "audio_text_pairs", "--data_dir", tmp_path, "--streaming", "true",
            "--max_steps", "2", *TINY, "--max_batch_seconds", "4", "--output_dir", tmp_path / "pretrain",
        )  # fmt: skip


def test_length_grouped_batches_read_the_length_column_once(tmp_path):
    """`group_by_length` (the default): the same batches as Trainer's own sampler, from the `length` column read as
    a list (datasets 4 hands Trainer a lazy Column, which LengthGroupedSampler indexes one whole row at a time)."""
    from datasets import Dataset
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from cmt_training.arguments import CMTTrainingArguments

    lengths = np.random.default_rng(0).integers(100, 5000, 200).tolist()
    dataset = Dataset.from_dict({"length": lengths, "waveform": [np.zeros(4, np.float32)] * 200})
    dataset = dataset.with_format("numpy", columns=["waveform"], output_all_columns=True)
    args = CMTTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, use_cpu=True, eval_strategy="no",
        save_strategy="no", load_best_model_at_end=False,
    )  # fmt: skip
    trainer = CMTTrainer(model=torch.nn.Linear(1, 1), args=args, train_dataset=dataset)
    ours, stock = trainer._get_train_sampler(), Trainer._get_train_sampler(trainer)
    assert isinstance(ours, LengthGroupedSampler) and type(ours.lengths) is list and ours.lengths == lengths
    assert not isinstance(stock.lengths, list)  # the lazy column this override replaces
    torch.manual_seed(3)
    order = list(ours)
    torch.manual_seed(3)
    assert order == list(stock) and sorted(order) == list(range(200))
    # megabatches of 6 batches of 8 (200 // 32), each sorted longest first, the longest row of all first
    assert lengths[order[0]] == max(lengths)
    for start in range(0, 200, 48):
        chunk = [lengths[i] for i in order[start : start + 48]][1:]  # its first may be the swapped-in longest
        assert chunk == sorted(chunk, reverse=True)
