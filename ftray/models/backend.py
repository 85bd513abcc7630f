"""Backends load a 4-bit base model with a LoRA adapter ready to train.

`peft` (transformers + bitsandbytes + peft) runs anywhere, CPU included; `unsloth` is the
fast path on a CUDA GPU. Both hand back a PEFT model that the same TRL trainer trains.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import re
import subprocess
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from ftray.config.spec import LoraSpec, ModelSpec
from ftray.log import get_logger


class Backend(Protocol):
    """Loads `base` in 4 bits (when asked) and wraps it with a LoRA adapter."""

    name: str

    def load(self, base: str, model: ModelSpec, lora: LoraSpec, seed: int) -> tuple[Any, Any]:
        """(peft model with only LoRA weights trainable, tokenizer with a chat template)."""
        ...

    def generation_mode(self, model: Any) -> AbstractContextManager[None]:
        """Inside the block `model` generates (inference mode); on leaving it is in training
        mode, gradient checkpointing as chosen at load, ready for the next training step."""
        ...


class BackendUnavailable(RuntimeError):
    """The backend named in the spec cannot run on this machine."""


FREE_MEMORY_WANTED = 0.9
"""Share of the memory a trial's part of a GPU that must be free before it loads a model."""


def gpu_share(gpus_asked: float) -> float:
    """The part of one device a trial holds: `resources_per_trial.gpu` below 1 (trials packed
    on a GPU), else the whole device (one or more whole GPUs, or none asked of Ray)."""
    return gpus_asked if 0 < gpus_asked < 1 else 1.0


def gpu_memory_info() -> Callable[[], tuple[int, int]] | None:
    """`torch.cuda.mem_get_info` (free, total bytes of the current device) when torch sees a
    CUDA device, else None."""
    import torch

    return torch.cuda.mem_get_info if torch.cuda.is_available() else None


def release_cached_gpu_memory() -> None:
    """Return memory this process still caches from an earlier trial (Ray reuses workers)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def wait_for_gpu_share(gpus_asked: float, **wait: Any) -> bool:
    """Before a trial loads its model on a GPU: wait (bounded) until its share of the device's
    memory is free, e.g. 22.5% of the GPU for `gpu: 0.25`, so trials packed on one GPU start
    together while a trial whose predecessor has not yet let go waits for it.

    True at once without CUDA; otherwise as `wait_for_free_gpu_memory` (`wait` is passed on).
    """
    mem_get_info = gpu_memory_info()
    if mem_get_info is None:
        return True
    release_cached_gpu_memory()
    wanted = FREE_MEMORY_WANTED * gpu_share(gpus_asked)
    return wait_for_free_gpu_memory(wanted, mem_get_info=mem_get_info, **wait)


def wait_for_free_gpu_memory(
    min_free_fraction: float = FREE_MEMORY_WANTED,
    timeout_s: float = 120,
    poll_s: float = 2.0,
    mem_get_info: Callable[[], tuple[int, int]] | None = None,
    sleep: Callable[[float], Any] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Poll `mem_get_info()` -> (free, total) until free/total >= `min_free_fraction`.

    True once the memory is free; False (with a warning on stderr) when `timeout_s` passes
    first, in which case the caller goes on and may run out of memory. `mem_get_info`
    defaults to `torch.cuda.mem_get_info` (device-wide, other processes included).
    """
    if mem_get_info is None:
        import torch

        mem_get_info = torch.cuda.mem_get_info
    deadline = clock() + timeout_s
    while True:
        free, total = mem_get_info()
        fraction = free / total if total else 0.0
        if fraction >= min_free_fraction:
            return True
        remaining = deadline - clock()
        if remaining <= 0:
            get_logger().warning(
                f"only {fraction:.0%} of GPU memory free after {timeout_s:g}s "
                f"(waited for {min_free_fraction:.0%}); loading anyway"
            )
            return False
        sleep(min(poll_s, remaining))


def cuda_available() -> bool:
    """Whether torch sees a CUDA device."""
    import torch

    return torch.cuda.is_available()


def unsloth_installed() -> bool:
    """Whether the unsloth package is importable (without importing it)."""
    return importlib.util.find_spec("unsloth") is not None


ALLOW_CPU_FALLBACK_ENV = "FTRAY_ALLOW_CPU_FALLBACK"
"""Set to 1 to let a trial that asked Ray for GPUs train on the CPU (logical GPUs in tests)."""
NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")


def nvidia_driver_version(version_file: Path = NVIDIA_DRIVER_FILE) -> str | None:
    """The loaded NVIDIA kernel driver's version (Linux), else what nvidia-smi reports, else None."""
    try:
        match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", version_file.read_text())
        if match:
            return match[1]
    except OSError:
        pass
    try:
        found = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = found.stdout.split()
    return lines[0] if found.returncode == 0 and lines else None


def missing_cuda_message(gpus_asked: float, gpu_ids: list[str], driver: str | None) -> str:
    """Why a trial that was given GPUs cannot use them, and what to do about it."""
    import torch

    built_for = torch.version.cuda or "no CUDA (a CPU-only build)"
    driver_text = f"NVIDIA driver {driver}" if driver else "no NVIDIA driver found"
    shown_ids = ",".join(gpu_ids) or "none"
    return (
        f"this trial asked for {gpus_asked:g} GPU(s) (resources_per_trial.gpu) and Ray gave it "
        f"GPU id(s) {shown_ids}, but torch sees no CUDA device: torch {torch.__version__} is "
        f"built for {built_for}, {driver_text}, CUDA_VISIBLE_DEVICES="
        f"{os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}. Use an NVIDIA driver that supports "
        "that CUDA version (CUDA 13.x needs driver >= 580) or an image whose torch matches the "
        f"driver; to train on the CPU anyway set {ALLOW_CPU_FALLBACK_ENV}=1 where ftray sweep runs"
    )


def require_cuda_for_gpu_trial(
    gpus_asked: float, gpu_ids: list[str], allow_cpu_fallback: bool
) -> None:
    """Raise BackendUnavailable when a trial was given GPUs but torch sees no CUDA device.

    Without this, `backend: auto` would quietly train on the CPU for hours (a driver too old
    for the image's CUDA build is the usual cause).
    """
    if gpus_asked <= 0 or allow_cpu_fallback or cuda_available():
        return
    raise BackendUnavailable(missing_cuda_message(gpus_asked, gpu_ids, nvidia_driver_version()))


def resolve_backend_name(requested: str) -> str:
    """`auto` picks unsloth when CUDA is visible and unsloth installed, else peft."""
    if requested != "auto":
        return requested
    return "unsloth" if cuda_available() and unsloth_installed() else "peft"


def select_backend(requested: str) -> Backend:
    """The backend to use for a spec's `model.backend`."""
    name = resolve_backend_name(requested)
    if name == "peft":
        from ftray.models.peft_backend import PeftBackend

        return PeftBackend()
    if name == "unsloth":
        if not cuda_available():
            raise BackendUnavailable(
                "backend 'unsloth' needs a CUDA GPU; use backend: peft (or auto) on this machine"
            )
        if not unsloth_installed():
            raise BackendUnavailable(
                "backend 'unsloth' is not installed; run pip install 'ftray[gpu]'"
            )
        from ftray.models.unsloth_backend import UnslothBackend

        return UnslothBackend()
    raise BackendUnavailable(f"unknown backend {name!r}")
