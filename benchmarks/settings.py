"""How a benchmark run is configured (`Settings`: smoke or full size, device, dtype, rounds, folders) and the device
runtime it measures on (`Runtime`: device, autocast dtype, synchronisation)."""

import contextlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch


RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_CACHE_DIR = Path(os.environ.get("CMT_BENCHMARK_CACHE", Path.home() / ".cache" / "cmt" / "benchmarks"))
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Runtime:
    """The device and compute dtype: fp32 weights, with autocast to `dtype` when it is not fp32 (bf16 on GPUs)."""

    def __init__(self, device: str = "cpu", dtype: str = "fp32"):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}.")
        self.device = torch.device(device)
        self.dtype = DTYPES[dtype]
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was given but torch sees no CUDA device.")

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def sync(self):
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value.to(self.device) for key, value in batch.items()}


@dataclass
class Settings:
    """How a run is configured: `smoke` shrinks every benchmark to tiny models and inputs (seconds, not minutes)."""

    smoke: bool = False
    device: str = "cpu"
    dtype: str = "fp32"
    repeats: int = 3
    threads: int | None = None
    output_dir: Path = RESULTS_DIR
    cache_dir: Path = DEFAULT_CACHE_DIR

    def pick(self, full, smoke, cuda=None):
        """`full` in a real run, `smoke` in a smoke run; `cuda` (when given) instead of `full` in a real run on a GPU,
        where CPU-sized batches would leave most of the device idle."""
        if self.smoke:
            return smoke
        return cuda if cuda is not None and self.device == "cuda" else full

    @property
    def runtime(self) -> Runtime:
        return Runtime(self.device, self.dtype)

    @property
    def preset(self) -> str:
        """Base-size towers (hubert-base + roberta-base shapes, random weights) with 4 cross-modal layers."""
        return self.pick("cmt-4", "tiny")

    def describe(self) -> dict[str, Any]:
        values = asdict(self)
        return {key: str(value) if isinstance(value, Path) else value for key, value in values.items()}
