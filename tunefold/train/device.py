"""The device policy, in one place: where a stage trains or generates, in which dtype, with which attention.

CUDA when torch can use it: bf16 (fp16 on GPUs without bf16), activation checkpointing for training, the
fastest attention installed. Else the CPU in fp32. A GPU the installed torch cannot use (a CPU build on a GPU
machine) is a loud error, never a silent CPU run: `device: cpu` says so explicitly.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunefold.errors import InputError

if TYPE_CHECKING:
    from tunefold.config import Params

ATTENTION = ("auto", "sdpa", "flash_attention_2", "eager")


@dataclass(frozen=True)
class DevicePlan:
    device: str  # "cuda" or "cpu"
    dtype: str  # "bfloat16", "float16" or "float32"
    attn_implementation: str  # what transformers is asked for: "sdpa", "flash_attention_2" or "eager"
    gradient_checkpointing: bool
    qlora: bool

    @property
    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)

    def trainer_args(self) -> dict[str, Any]:
        return {
            "use_cpu": self.device == "cpu",
            "bf16": self.dtype == "bfloat16",
            "fp16": self.dtype == "float16",
            "activation_checkpointing": self.gradient_checkpointing,
        }

    def describe(self) -> dict[str, Any]:
        """What a stage's metrics record about where it ran."""
        return {
            "device": self.device,
            "dtype": self.dtype,
            "attention": self.attn_implementation,
            "qlora": self.qlora,
            "gpu": gpu_name() if self.device == "cuda" else None,
        }


def visible_gpus(dev: Path = Path("/dev")) -> list[str]:
    """NVIDIA devices the machine exposes to this process, whatever torch can do with them."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return []
    return sorted(p.name for p in dev.glob("nvidia[0-9]*"))


def plan_device(
    device: str = "auto", qlora: bool = False, attention: str = "auto", dev: Path = Path("/dev")
) -> DevicePlan:
    """Resolve `train.device` / `train.attn_implementation` (and `train.qlora`) into a plan, or say why not."""
    import torch

    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise InputError(
            f"train.device is 'cuda' but torch {torch.__version__} cannot use a CUDA device "
            f"({_why_no_cuda(dev)}); use 'cpu' to run on the CPU"
        )
    if device == "auto" and not cuda and (gpus := visible_gpus(dev)):
        raise InputError(
            f"this machine has GPUs ({', '.join(gpus)}) but torch {torch.__version__} cannot use them "
            f"({_why_no_cuda(dev)}); install the CUDA build (`make install-gpu`), or set train.device: cpu to run "
            "on the CPU anyway"
        )
    on_gpu = cuda and device != "cpu"
    if qlora and not on_gpu:
        raise InputError("train.qlora needs a CUDA device (bitsandbytes 4-bit); set train.qlora: false on CPU")
    if not on_gpu:
        return DevicePlan("cpu", "float32", _attention(attention, on_gpu=False), False, False)
    dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return DevicePlan("cuda", dtype, _attention(attention, on_gpu=True), True, qlora)


def train_processes(params: Params) -> int:
    """Data-parallel ranks a training stage runs as: `train.processes`, auto = one per GPU torch can use."""
    import torch

    train = params.train
    if train is None:
        return 1
    on_gpu = plan_device(train.device, train.qlora, train.attn_implementation).device == "cuda"
    gpus = torch.cuda.device_count() if on_gpu else 0
    if train.processes == "auto":
        return max(1, gpus)
    if on_gpu and train.processes > gpus:
        raise InputError(f"train.processes is {train.processes} but torch sees {gpus} GPU(s); use auto")
    return train.processes


def _attention(asked: str, on_gpu: bool) -> str:
    flash = importlib.util.find_spec("flash_attn") is not None
    if asked == "auto":
        return "flash_attention_2" if on_gpu and flash else "sdpa"
    if asked == "flash_attention_2" and not (on_gpu and flash):
        why = "it runs on CUDA only" if not on_gpu else "the flash-attn package is not installed"
        raise InputError(f"train.attn_implementation is flash_attention_2 but {why}; use auto or sdpa")
    return asked


def _why_no_cuda(dev: Path) -> str:
    import torch

    if torch.version.cuda is None:
        return "it is a CPU-only build"
    if not visible_gpus(dev):
        return "no NVIDIA device is visible"
    return f"built for CUDA {torch.version.cuda}; the driver may be older"


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def peak_memory_gb() -> float | None:
    """Peak GPU memory this process allocated (torch's allocator), None on the CPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 3)
