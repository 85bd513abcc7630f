"""Unsloth's FastLanguageModel: the fast 4-bit LoRA path on a CUDA GPU.

Unsloth patches transformers, trl and peft when imported and raises without a GPU, so it
is imported here, lazily, and this module must be loaded before those libraries are used
in the trial process. Not yet exercised on a GPU by this project's tests.
"""

from __future__ import annotations

from typing import Any

from ftray.spec import LoraSpec, ModelSpec


class UnslothBackend:
    """FastLanguageModel.from_pretrained + get_peft_model."""

    name = "unsloth"

    def load(self, base: str, model: ModelSpec, lora: LoraSpec, seed: int) -> tuple[Any, Any]:
        """Load the base through Unsloth (4-bit when asked) and attach LoRA."""
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
            dtype=None,
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
