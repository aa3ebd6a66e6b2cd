"""Multi-process training through the documented `accelerate launch ... examples/run_finetune.py` (and
run_pretrain.py) commands: every shipped accelerate configuration, on what this machine allows.

- CPU (here and in CI): DDP over gloo with two processes (`cpu_ddp.yaml` and the `--multi_gpu` flags), dynamic
  batches, `find_unused_parameters=False`, streamed corpora read shard by shard on every rank; FSDP and DeepSpeed
  refused (accelerate sets them up only on GPUs); the FSDP wrap classes against the models; the multi-node SLURM
  script's command for a given `SLURM_*` environment.
- GPU (`-m gpu`, skipped without CUDA): `single_gpu_bf16.yaml`, `multi_gpu_ddp.yaml`, `fsdp_base.yaml` (with and
  without activation checkpointing), `deepspeed_zero2.yaml`, `deepspeed_zero3.yaml` on min(2, GPUs) processes.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from datasets import Audio, Dataset, Features, Value
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

import hub_datasets
from cmt_training import distributed
from cmt_training.data import AudioTextCollator, prepare_split, utterance_seconds
from cmt_training.sampling import DurationBatchSampler
from modeling_cmt import CMTForSequenceClassification, CMTProcessor


REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "examples" / "accelerate_configs"
TINY = [
    "--preset", "tiny", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
    "--learning_rate", "3e-3", "--disable_tqdm", "true", "--logging_steps", "5", "--max_audio_seconds", "3",
    "--dataloader_pin_memory", "false", "--seed", "0",
]  # fmt: skip
NO_DROPOUT = [
    "--config_overrides",
    "cross_hidden_dropout=0.0,cross_attention_dropout=0.0,classifier_dropout=0.0",
]
ONE_PROCESS = ["--config_file", "examples/accelerate_configs/cpu.yaml"]
CPU_DDP = ["--config_file", "examples/accelerate_configs/cpu_ddp.yaml"]
MULTI_GPU_FLAGS = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                   "--dynamo_backend", "no"]  # fmt: skip


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def synthetic(cache, *extra):
    return ["--task", "synthetic_emotion", "--synthetic_size", "80", "--cache_dir", str(cache), *extra]


def _launch(
    launcher: list[str], arguments: list[str], output: Path, script: str = "examples/run_finetune.py"
) -> subprocess.CompletedProcess:
    """`accelerate launch <launcher> <script> <arguments>`, as the README types it (no extra environment: on this
    GPU-less machine the script itself must make the processes one job)."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("ACCELERATE_")}
    return subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", *launcher, script, *map(str, arguments),
         "--output_dir", str(output)],
        capture_output=True, text=True, env={**environment, "OMP_NUM_THREADS": "1"}, timeout=600, cwd=REPO,
    )  # fmt: skip


def _rank_checksums(completed: subprocess.CompletedProcess) -> list[tuple[str, str]]:
    return re.findall(r"\[rank (\d)\] parameter checksum: (\S+)", completed.stdout + completed.stderr)


def _succeeded(completed: subprocess.CompletedProcess) -> None:
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]


def _losses_fell(log_history: list[dict]) -> tuple[float, float]:
    """Mean training loss of the first and the last logged third of the run."""
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    third = max(1, len(losses) // 3)
    return float(np.mean(losses[:third])), float(np.mean(losses[-third:]))


def _fold_split(cache, split: str, fold: int = 1):
    corpus = hub_datasets.load_synthetic_emotion("emotion", num_utterances=80, cache_dir=str(cache))
    return prepare_split(hub_datasets.synthetic_emotion_loso_fold(corpus, test_session=fold)[split], "label", 3.0)


def _reloaded_test_logits(folder: Path, cache, device: str = "cpu") -> np.ndarray:
    """Logits of the checkpoint in `folder`, loaded with plain `from_pretrained`, on fold 1's test split."""
    model = CMTForSequenceClassification.from_pretrained(folder).to(device).eval()
    collator = AudioTextCollator(
        CMTProcessor.from_pretrained(folder), min_audio_samples=model.config.min_input_samples()
    )
    test = _fold_split(cache, "test")
    batch = {key: value.to(device) for key, value in collator([test[index] for index in range(len(test))]).items()}
    batch.pop("labels")
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        return model(**batch).logits.float().cpu().numpy()


# --- DDP on CPU (gloo) -------------------------------------------------------------------------------------------


def test_two_process_ddp_matches_one_process(word_dataset, tmp_path):
    common = ["--task", "dataset", "--dataset_path", str(word_dataset), *TINY, *NO_DROPOUT, "--num_train_epochs", "2"]
    common = [a if a != "8" else "4" for a in common]  # 4 per process
    two = _launch(CPU_DDP, [*common, "--train_sampling_strategy", "sequential"], tmp_path / "ddp")
    _succeeded(two)
    checksums = _rank_checksums(two)
    assert sorted(rank for rank, _ in checksums) == ["0", "1"]
    assert checksums[0][1] == checksums[1][1]  # both ranks hold identical parameters
    single = [a if a != "4" else "8" for a in common]
    one = _launch(ONE_PROCESS, [*single, "--train_sampling_strategy", "sequential"], tmp_path / "single")
    assert one.returncode == 0, one.stderr[-3000:]
    ddp_results = read_json(tmp_path / "ddp" / "results.json")
    assert ddp_results["protocol"]["training"]["world_size"] == 2
    single_metrics = read_json(tmp_path / "single" / "results.json")["aggregate"]
    assert ddp_results["aggregate"]["wa"]["mean"] == pytest.approx(single_metrics["wa"]["mean"], abs=1e-6)
    assert ddp_results["folds"][0]["data"]["test"]["rows"] == 40  # no duplicates


def test_the_documented_multi_gpu_flags_make_one_ddp_job_on_cpu(word_dataset, tmp_path):
    arguments = ["--task", "dataset", "--dataset_path", str(word_dataset), *TINY, "--max_steps", "2"]
    completed = _launch(MULTI_GPU_FLAGS, arguments, tmp_path / "ddp")
    _succeeded(completed)
    checksums = _rank_checksums(completed)
    assert sorted(rank for rank, _ in checksums) == ["0", "1"] and checksums[0][1] == checksums[1][1]
    assert read_json(tmp_path / "ddp" / "results.json")["protocol"]["training"]["world_size"] == 2


def test_ddp_with_batches_by_duration_and_no_unused_parameters(synthetic_cache, tmp_path):
    """Dynamic batches on two ranks, DDP without `find_unused_parameters`, the layer pooler and the orthogonality
    loss on: the loss falls, the ranks stay identical, both take the same number of steps, and the checkpoint
    reloads with plain `from_pretrained` to the logits the run tested with."""
    arguments = [
        *synthetic(synthetic_cache, "--test_fold", "1"), *TINY, "--max_batch_seconds", "6", "--num_train_epochs", "4",
        "--logging_steps", "1", "--ddp_find_unused_parameters", "false", "--pooling", "layer_pooler",
        "--ortho_weight", "0.1",
    ]  # fmt: skip
    completed = _launch(CPU_DDP, arguments, tmp_path / "ddp")
    _succeeded(completed)
    checksums = _rank_checksums(completed)
    assert sorted(rank for rank, _ in checksums) == ["0", "1"] and checksums[0][1] == checksums[1][1]
    fold = read_json(tmp_path / "ddp" / "fold_1" / "results.json")
    first, last = _losses_fell(fold["log_history"])
    assert last < first, (first, last)
    batches = len(DurationBatchSampler(utterance_seconds(_fold_split(synthetic_cache, "train")), 6.0))
    steps = [entry["step"] for entry in fold["log_history"] if "loss" in entry]
    assert steps[-1] == 4 * -(-batches // 2)  # every rank ceil(batches / 2) steps an epoch, as the sampler test says
    reloaded = _reloaded_test_logits(tmp_path / "ddp" / "fold_1", synthetic_cache)
    np.testing.assert_allclose(reloaded, np.asarray(fold["test_logits"]), atol=1e-5)


# --- streamed corpora --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded_pairs(tmp_path_factory) -> tuple[Path, list[str]]:
    """An audio-text pairs corpus in 4 Parquet shards (what `load_dataset` streams shard by shard), 20 rows with
    distinct transcripts."""
    generator = np.random.default_rng(0)
    texts = [f"utterance number {index} was {('good', 'bad', 'fine')[index % 3]}" for index in range(20)]
    rows = {
        "audio": [
            {"array": generator.standard_normal(int(generator.integers(4000, 8000))).astype(np.float32) * 0.1,
             "sampling_rate": 16000}
            for _ in texts
        ],
        "text": texts,
    }  # fmt: skip
    pairs = Dataset.from_dict(rows, features=Features({"audio": Audio(sampling_rate=16000), "text": Value("string")}))
    folder = tmp_path_factory.mktemp("sharded_pairs")
    for index in range(4):
        pairs.shard(4, index, contiguous=True).to_parquet(str(folder / f"train-{index:05d}-of-00004.parquet"))
    return folder, texts


def test_streamed_ranks_read_disjoint_shards_that_cover_the_corpus(sharded_pairs, tmp_path):
    folder, texts = sharded_pairs
    arguments = [
        "--task", "audio_text_pairs", "--data_dir", folder, "--streaming", "true", "--max_steps", "10",
        "--save_strategy", "steps", "--per_device_train_batch_size", "3", "--disable_tqdm", "true",
    ]  # fmt: skip
    completed = _launch(CPU_DDP, arguments, tmp_path, script="tests/examples/stream_shards_worker.py")
    _succeeded(completed)
    passes = []
    for rank in (0, 1):
        seen = read_json(tmp_path / f"rank{rank}.json")
        period = len(set(seen))
        assert seen[:period] and len(set(seen[:period])) == period  # one pass: each of its rows once
        assert seen[period : 2 * period] == seen[:period]  # then the rank's stream starts over
        passes.append(set(seen[:period]))
    assert not passes[0] & passes[1]  # disjoint shards
    assert passes[0] | passes[1] == set(texts)  # together every row once per pass


def test_streamed_pretraining_trains_on_two_processes(sharded_pairs, tmp_path):
    folder, _ = sharded_pairs
    arguments = [
        "--task", "audio_text_pairs", "--data_dir", folder, "--streaming", "true", *TINY, "--max_steps", "4",
        "--per_device_train_batch_size", "3", "--save_strategy", "steps", "--save_steps", "4", "--logging_steps", "1",
        "--unit_loss_weight", "0", "--matching_loss_weight", "0.5", "--ddp_find_unused_parameters", "false",
        "--stage", "2",
    ]  # fmt: skip
    completed = _launch(CPU_DDP, arguments, tmp_path / "pretrain", script="examples/run_pretrain.py")
    _succeeded(completed)
    checksums = _rank_checksums(completed)
    assert sorted(rank for rank, _ in checksums) == ["0", "1"] and checksums[0][1] == checksums[1][1]
    logs = [entry for entry in read_json(tmp_path / "pretrain" / "results.json")["log_history"]["stage2"]]
    assert [entry["step"] for entry in logs if "mlm_loss" in entry] == [1, 2, 3, 4]
    assert all(np.isfinite(entry["loss"]) for entry in logs if "loss" in entry)


def test_a_streamed_corpus_on_several_processes_needs_step_strategies():
    stream = Dataset.from_dict({"text": ["a", "b"]}).to_iterable_dataset(num_shards=2)
    arguments = SimpleNamespace(
        world_size=2,
        save_strategy=SaveStrategy.EPOCH,
        eval_strategy=IntervalStrategy.NO,
        logging_strategy=IntervalStrategy.STEPS,
        accelerator_config=SimpleNamespace(dispatch_batches=None),
    )
    with pytest.raises(ValueError, match="no common epoch.*--save_strategy must be 'steps' or 'no'"):
        distributed.read_stream_on_every_rank(stream, arguments)
    arguments.save_strategy = SaveStrategy.STEPS
    repeated = distributed.read_stream_on_every_rank(stream, arguments)
    assert arguments.accelerator_config.dispatch_batches is False
    assert [row["text"] for row, _ in zip(repeated, range(5))] == ["a", "b", "a", "b", "a"]
    arguments.world_size = 1
    assert distributed.read_stream_on_every_rank(stream, arguments) is stream


# --- FSDP and DeepSpeed: GPU engines -----------------------------------------------------------------------------


def test_fsdp_on_a_machine_without_gpus_is_refused_not_run_as_ddp(word_dataset, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    launcher = ["--config_file", "examples/accelerate_configs/fsdp_base.yaml", "--num_processes", "2",
                "--mixed_precision", "no"]  # fmt: skip
    arguments = ["--task", "dataset", "--dataset_path", word_dataset, *TINY, "--max_steps", "1"]
    completed = _launch(launcher, arguments, tmp_path / "fsdp")
    assert completed.returncode != 0
    assert "configured for FSDP, but torch sees no GPU" in completed.stderr
    assert not (tmp_path / "fsdp" / "results.json").exists()


def test_deepspeed_without_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(RuntimeError, match="configured for DeepSpeed, but torch sees no GPU.*cpu_ddp.yaml"):
        distributed.refuse_sharded_engine_without_gpus()
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    distributed.refuse_sharded_engine_without_gpus()


def _wrap_classes(config_name: str) -> list[str]:
    config = yaml.safe_load((CONFIGS / config_name).read_text())
    return config["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"].split(",")


@pytest.mark.parametrize(
    "config_name,stable_layer_norm",
    [("fsdp_base.yaml", False), ("fsdp.yaml", True)],
    ids=["hubert-base", "hubert-large"],
)
def test_fsdp_wrap_policy_names_the_cross_modal_and_both_towers_layers(tiny_config, config_name, stable_layer_norm):
    classes = _wrap_classes(config_name)
    audio_layer = "HubertEncoderLayerStableLayerNorm" if stable_layer_norm else "HubertEncoderLayer"
    assert sorted(classes) == sorted(["CMTCrossModalLayer", audio_layer, "RobertaLayer"])
    model = CMTForSequenceClassification(tiny_config(audio_config={"do_stable_layer_norm": stable_layer_norm}))
    distributed.check_fsdp_wrap_classes(model, classes)  # accelerate would stop at the first class the model lacks
    other = "fsdp.yaml" if config_name == "fsdp_base.yaml" else "fsdp_base.yaml"
    with pytest.raises(ValueError, match=rf"names {_wrap_classes(other)[1]}, which this model does not have"):
        distributed.check_fsdp_wrap_classes(model, _wrap_classes(other))
    baseline = CMTForSequenceClassification(
        tiny_config(num_cross_layers=0, audio_config={"do_stable_layer_norm": stable_layer_norm})
    )
    with pytest.raises(ValueError, match="names CMTCrossModalLayer, which this model does not have.*RobertaLayer"):
        distributed.check_fsdp_wrap_classes(baseline, classes)


@pytest.mark.parametrize(
    "config_name,activation_checkpointing",
    [("fsdp_base.yaml", False), ("fsdp_base.yaml", True), ("fsdp.yaml", True)],
    ids=["base", "base-activation-checkpointing", "large-activation-checkpointing"],
)
def test_fsdp2_shards_and_trains_cmt_on_two_cpu_processes(
    config_name, activation_checkpointing, tokenizer_dir, tmp_path
):
    """accelerate's own FSDP2 preparation of CMT with a shipped configuration's wrap classes, run with gloo (the
    Trainer path needs GPUs): one unit per layer, activation checkpointing inside the units, the loss falls on both
    ranks, both gather the same parameters, and the gathered model reloads with `from_pretrained` to the sharded
    model's logits."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "tests/examples/fsdp_cpu_worker.py",
        str(CONFIGS / config_name), str(tmp_path), str(tokenizer_dir),
        *(["--activation_checkpointing"] if activation_checkpointing else []),
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600, cwd=REPO)
    _succeeded(completed)
    ranks = [read_json(tmp_path / f"rank{rank}.json") for rank in (0, 1)]
    audio_layer = "HubertEncoderLayerStableLayerNorm" if config_name == "fsdp.yaml" else "HubertEncoderLayer"
    for result in ranks:
        assert result["losses"][-1] < result["losses"][0], result["losses"]
        for layer in ("CMTCrossModalLayer", audio_layer, "RobertaLayer"):
            assert result["sharded_units"].count(layer) == 2, result["sharded_units"]  # the tiny preset: 2 of each
        assert result["checkpointed_units"] == (6 if activation_checkpointing else 0)
    assert ranks[0]["checksum"] == ranks[1]["checksum"]
    np.testing.assert_allclose(ranks[0]["logits"], ranks[1]["logits"], atol=1e-6)
    model = CMTForSequenceClassification.from_pretrained(tmp_path / "model").eval()
    fixed = torch.load(tmp_path / "fixed_batch.pt", weights_only=True)
    with torch.no_grad():
        logits = model(**{key: value for key, value in fixed.items() if key != "labels"}).logits
    np.testing.assert_allclose(logits.numpy(), ranks[0]["logits"], atol=1e-5)


def test_layerdrop_under_ddp_needs_find_unused_parameters(tiny_config):
    model = CMTForSequenceClassification(tiny_config(audio_config={"layerdrop": 0.1}))
    with pytest.raises(ValueError, match=r"layerdrop=0.1.*2 trainable layers.*--ddp_find_unused_parameters true"):
        distributed.check_no_unused_parameters(model, find_unused_parameters=False)
    distributed.check_no_unused_parameters(model, find_unused_parameters=True)
    model.freeze_towers()  # stage 1: the skipped layers have nothing to train
    distributed.check_no_unused_parameters(model, find_unused_parameters=False)
    distributed.check_no_unused_parameters(CMTForSequenceClassification(tiny_config()), find_unused_parameters=False)


# --- several machines --------------------------------------------------------------------------------------------


SLURM_SCRIPT = REPO / "examples" / "slurm" / "train_multi_node.sbatch"


def test_the_slurm_script_starts_one_accelerate_launch_per_machine(tmp_path):
    """The sbatch script run with a 3-node job's `SLURM_*` environment, with `srun` (one task per node, each with its
    own `SLURM_NODEID`), `scontrol` and `accelerate` stand-ins that record what they were called with."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "scontrol").write_text(
        '#!/bin/bash\n[ "$1 $2 $3" = "show hostnames gpu-[07-09]" ] && printf "gpu-07\\ngpu-08\\ngpu-09\\n"\n'
    )
    (stubs / "srun").write_text(
        '#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
        'for node in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$node "$@"; done\n'
    )
    (stubs / "accelerate").write_text(
        f'#!/bin/bash\n{sys.executable} -c "import json, os, sys; print(json.dumps([os.environ[\'SLURM_NODEID\'], *sys.argv[1:]]))" "$@"\n'
    )
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    environment = {
        "PATH": f"{stubs}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "gpu-[07-09]",
        "SLURM_NNODES": "3",
        "SLURM_JOB_ID": "4242",
    }
    script_arguments = ["examples/run_finetune.py", "--task", "iemocap", "--output_dir", "runs/with space"]
    completed = subprocess.run(
        ["bash", str(SLURM_SCRIPT), *script_arguments], capture_output=True, text=True, env=environment, cwd=REPO
    )
    assert completed.returncode == 0, completed.stderr
    from accelerate.commands.launch import launch_command_parser

    launches = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("[")]
    assert [node for node, *_ in launches] == ["0", "1", "2"]
    for node, command, *arguments in launches:
        assert command == "launch"
        parsed = launch_command_parser().parse_args(arguments)
        assert parsed.config_file == "examples/accelerate_configs/multi_node.yaml"
        assert (parsed.num_machines, parsed.num_processes, parsed.machine_rank) == (3, 24, int(node))
        assert (parsed.main_process_ip, parsed.main_process_port) == ("gpu-07", 29500)
        assert [parsed.training_script, *parsed.training_script_args] == script_arguments


def test_the_multi_node_config_describes_one_ddp_job_over_machines():
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(CONFIGS / "multi_node.yaml")
    assert config.distributed_type == "MULTI_GPU" and config.num_machines > 1
    assert config.num_processes == 8 * config.num_machines and config.rdzv_backend == "static"


# --- GPUs --------------------------------------------------------------------------------------------------------


def _gpu_processes() -> int:
    return min(2, torch.cuda.device_count())


GPU_CONFIGS = {
    "single_gpu_bf16": ["--config_file", "examples/accelerate_configs/single_gpu_bf16.yaml"],
    "multi_gpu_ddp": ["--config_file", "examples/accelerate_configs/multi_gpu_ddp.yaml"],
    "fsdp": ["--config_file", "examples/accelerate_configs/fsdp_base.yaml"],
    "fsdp_activation_checkpointing": [
        "--config_file", "examples/accelerate_configs/fsdp_base.yaml", "--fsdp_activation_checkpointing", "true",
    ],
    "deepspeed_zero2": ["--config_file", "examples/accelerate_configs/deepspeed_zero2.yaml"],
    "deepspeed_zero3": ["--config_file", "examples/accelerate_configs/deepspeed_zero3.yaml"],
}  # fmt: skip
REPLICATED = ("single_gpu_bf16", "multi_gpu_ddp", "deepspeed_zero2")  # every rank holds every parameter


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(GPU_CONFIGS))
def test_every_gpu_configuration_trains_and_saves_a_loadable_checkpoint(name, synthetic_cache, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if name.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    processes = 1 if name == "single_gpu_bf16" else _gpu_processes()
    launcher = [*GPU_CONFIGS[name], "--num_processes", str(processes)]
    arguments = [
        *synthetic(synthetic_cache, "--test_fold", "1"),
        *TINY,
        "--num_train_epochs",
        "6",
        "--logging_steps",
        "1",
    ]
    completed = _launch(launcher, arguments, tmp_path / name)
    _succeeded(completed)
    fold = read_json(tmp_path / name / "fold_1" / "results.json")
    assert fold["validation"]["best_checkpoint"]
    first, last = _losses_fell(fold["log_history"])
    assert last < first, (first, last)
    checksums = _rank_checksums(completed)
    assert sorted(rank for rank, _ in checksums) == [str(rank) for rank in range(processes)]
    if name in REPLICATED or name.startswith("fsdp"):  # FSDP gathers its shards for the checksum; ZeRO-3 cannot
        assert len({checksum for _, checksum in checksums}) == 1
    reloaded = _reloaded_test_logits(tmp_path / name / "fold_1", synthetic_cache, device="cuda")
    logits = np.asarray(fold["test_logits"])
    np.testing.assert_allclose(reloaded, logits, atol=5e-2)  # bf16 autocast in the run and here
    assert (reloaded.argmax(-1) == logits.argmax(-1)).mean() >= 0.95


@pytest.mark.gpu
def test_the_cmt_large_fsdp_config_trains_a_pre_ln_audio_tower(tiny_config, processor, synthetic_cache, tmp_path):
    """fsdp.yaml (CMT LARGE: hubert-large is pre-LN) on a tiny model with the same layer classes."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    checkpoint = tmp_path / "pre_ln"
    CMTForSequenceClassification(tiny_config(audio_config={"do_stable_layer_norm": True})).save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    launcher = ["--config_file", "examples/accelerate_configs/fsdp.yaml", "--num_processes", str(_gpu_processes())]
    tiny = [argument for argument in TINY if argument not in ("--preset", "tiny")]
    arguments = [
        *synthetic(synthetic_cache, "--test_fold", "1"), "--model_name_or_path", checkpoint, *tiny,
        "--num_train_epochs", "6", "--logging_steps", "1",
    ]  # fmt: skip
    completed = _launch(launcher, arguments, tmp_path / "large")
    _succeeded(completed)
    fold = read_json(tmp_path / "large" / "fold_1" / "results.json")
    first, last = _losses_fell(fold["log_history"])
    assert last < first, (first, last)
    reloaded = _reloaded_test_logits(tmp_path / "large" / "fold_1", synthetic_cache, device="cuda")
    np.testing.assert_allclose(reloaded, np.asarray(fold["test_logits"]), atol=5e-2)
