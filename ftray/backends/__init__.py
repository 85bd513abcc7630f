"""Backends load a 4-bit base model with a LoRA adapter ready to train.

`peft` (transformers + bitsandbytes + peft) runs anywhere, CPU included; `unsloth` is the
fast path on a CUDA GPU. Both hand back a PEFT model that the same TRL trainer trains.
"""

from __future__ import annotations

import importlib.util
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
