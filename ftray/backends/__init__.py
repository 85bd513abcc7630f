"""Backends load a 4-bit base model with a LoRA adapter ready to train.

`peft` (transformers + bitsandbytes + peft) runs anywhere, CPU included; `unsloth` is the
fast path on a CUDA GPU. Both hand back a PEFT model that the same TRL trainer trains.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

from ftray.spec import LoraSpec, ModelSpec


class Backend(Protocol):
    """Loads `base` in 4 bits (when asked) and wraps it with a LoRA adapter."""

    name: str

    def load(self, base: str, model: ModelSpec, lora: LoraSpec, seed: int) -> tuple[Any, Any]:
        """(peft model with only LoRA weights trainable, tokenizer with a chat template)."""
        ...


class BackendUnavailable(RuntimeError):
    """The backend named in the spec cannot run on this machine."""


def wait_for_free_gpu_memory(
    min_free_fraction: float = 0.9,
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
            print(
                f"[ftray] warning: only {fraction:.0%} of GPU memory free after {timeout_s:g}s "
                f"(waited for {min_free_fraction:.0%}); loading anyway",
                file=sys.stderr,
                flush=True,
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


def resolve_backend_name(requested: str) -> str:
    """`auto` picks unsloth when CUDA is visible and unsloth installed, else peft."""
    if requested != "auto":
        return requested
    return "unsloth" if cuda_available() and unsloth_installed() else "peft"


def select_backend(requested: str) -> Backend:
    """The backend to use for a spec's `model.backend`."""
    name = resolve_backend_name(requested)
    if name == "peft":
        from ftray.backends.peft import PeftBackend

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
        from ftray.backends.unsloth import UnslothBackend

        return UnslothBackend()
    raise BackendUnavailable(f"unknown backend {name!r}")
