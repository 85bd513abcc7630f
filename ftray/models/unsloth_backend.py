"""Unsloth's FastLanguageModel: the fast 4-bit LoRA path on a CUDA GPU.

Unsloth patches transformers, trl and peft when imported, so it is imported here, lazily,
inside `UnslothBackend.load`, before anything in that call imports trl/transformers/peft.
Without a GPU, Unsloth 2026.10 does not raise at import: it falls back to the CPU unless
`UNSLOTH_DISABLE_CPU_FALLBACK=1`; ftray never selects this backend without CUDA. Its
argument mapping, import order, mode switching and compile-cache location are checked
against a fake `unsloth` module (tests/unit/test_unsloth_backend.py); this path has not yet
been run on a GPU by this project's tests.

Three things a sweep needs that a single run does not:

- Unsloth writes generated modules to `$UNSLOTH_COMPILE_LOCATION`, by default the relative
  folder `unsloth_compiled_cache`, i.e. inside every Ray trial's working directory. We point
  it (unless the user already did) at one absolute per-node folder: `$FTRAY_UNSLOTH_CACHE`,
  else `/tmp/ftray-unsloth-cache/<uid>`.
- A trial that starts on a GPU the previous trial has not yet released runs out of memory,
  so the trial first waits (bounded) for its share of the device's memory to be free
  (`backend.wait_for_gpu_share`, called before `load`).
- Evaluation generates after every epoch. Unsloth's fast `generate` turns gradient
  checkpointing off and turns it back on only when the model was in training mode when
  `generate` was called; a plain `model.eval()` before it would leave checkpointing off for
  every later epoch. `generation_mode` switches with Unsloth's own
  `FastLanguageModel.for_inference` / `for_training` instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ftray.config.spec import LoraSpec, ModelSpec

COMPILE_CACHE_ENV = "UNSLOTH_COMPILE_LOCATION"
"""Read by unsloth_zoo.compiler at import time; relative values resolve against the cwd."""
FTRAY_CACHE_ENV = "FTRAY_UNSLOTH_CACHE"
DEFAULT_CACHE_ROOT = Path("/tmp/ftray-unsloth-cache")


def _user_id() -> str:
    getuid = getattr(os, "getuid", None)
    return str(getuid()) if getuid is not None else os.environ.get("USERNAME", "user")


def compile_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The absolute per-node folder for Unsloth's compiled modules (not created here)."""
    env = os.environ if environ is None else environ
    configured = env.get(FTRAY_CACHE_ENV, "").strip()
    if configured:
        path = Path(configured).expanduser()
        if not path.is_absolute():
            raise ValueError(
                f"{FTRAY_CACHE_ENV}={configured!r} must be an absolute path: a relative one "
                "would resolve inside each trial's working directory"
            )
        return path
    return DEFAULT_CACHE_ROOT / _user_id()


def prepare_compile_cache() -> Path:
    """Set $UNSLOTH_COMPILE_LOCATION (unless already set) and create that folder.

    Must run before `import unsloth`: unsloth_zoo reads the variable at import time.
    """
    os.environ.setdefault(COMPILE_CACHE_ENV, str(compile_cache_dir()))
    location = Path(os.environ[COMPILE_CACHE_ENV])
    location.mkdir(parents=True, exist_ok=True)
    return location


class UnslothBackend:
    """FastLanguageModel.from_pretrained + get_peft_model."""

    name = "unsloth"

    def load(self, base: str, model: ModelSpec, lora: LoraSpec, seed: int) -> tuple[Any, Any]:
        """Load the base through Unsloth (4-bit when asked) and attach LoRA."""
        prepare_compile_cache()
        try:
            import unsloth  # noqa: F401  (must precede trl/transformers/peft)
            from unsloth import FastLanguageModel
        except ImportError as exc:
            raise RuntimeError(
                f"unsloth is not importable ({exc}); run pip install 'ftray[gpu]'"
            ) from exc

        base_model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=base,
            max_seq_length=model.max_seq_length,
            load_in_4bit=model.load_in_4bit,
            revision=model.revision,
            dtype=None,  # Unsloth picks bfloat16 where supported, else float16
        )
        peft_model = FastLanguageModel.get_peft_model(
            base_model,
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            bias="none",
            use_gradient_checkpointing="unsloth",
            random_state=seed,
        )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return peft_model, tokenizer

    @contextmanager
    def generation_mode(self, model: Any) -> Iterator[None]:
        """`FastLanguageModel.for_inference` for generation, `for_training` after it, which
        restores the gradient-checkpointing mode chosen in `get_peft_model`. Unconditionally:
        the Trainer has already switched the model to eval mode for its eval loss when the
        epoch's evaluation generates."""
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
        try:
            yield
        finally:
            FastLanguageModel.for_training(model)
