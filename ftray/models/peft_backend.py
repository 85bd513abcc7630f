"""transformers + bitsandbytes NF4 + peft LoRA: the backend that runs everywhere."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ftray.config.spec import LoraSpec, ModelSpec

BNB_CPU_KERNEL_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_CPU_KERNEL_NOTICE = "Failed to load CPU gemm_4bit_forward"


def not_cpu_kernel_notice(record: logging.LogRecord) -> bool:
    """A logging filter: False for bitsandbytes' notice that the optional `kernels` package
    (a faster 4-bit CPU matmul) is missing."""
    return not str(record.msg).startswith(BNB_CPU_KERNEL_NOTICE)


def quiet_cpu_kernel_notice() -> None:
    """Drop bitsandbytes' warning, logged when it is imported on a CPU with AVX512-BF16, that
    the optional `kernels` package is not installed: bitsandbytes then uses its own CPU
    kernels, so there is nothing to fix. Only that message of that logger is dropped."""
    logging.getLogger(BNB_CPU_KERNEL_LOGGER).addFilter(not_cpu_kernel_notice)


def compute_dtype() -> Any:
    """bfloat16 on a GPU that supports it, float32 otherwise (CPU)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(base: str) -> Any:
    """The base's tokenizer, with a pad token (eos when it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ValueError(
            f"the tokenizer of {base} has no chat template; pick an instruct/chat model"
        )
    return tokenizer


def lora_config(lora: LoraSpec) -> Any:
    """peft LoraConfig mapped from the spec."""
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def base_model_kwargs(load_in_4bit: bool) -> dict[str, Any]:
    """`from_pretrained` arguments for the base: compute dtype, and NF4 when 4-bit."""
    from transformers import BitsAndBytesConfig

    dtype = compute_dtype()
    kwargs: dict[str, Any] = {"dtype": dtype}
    if load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        )
    return kwargs


class BaseModelMissing(RuntimeError):
    """The base model a registered adapter needs is not on this machine."""


class NotSafetensors(RuntimeError):
    """An adapter folder holds its weights in a pickle-based format, which ftray never loads."""


ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
"""Files whose loading means unpickling: ftray never reads them, and never passes them on."""


def is_pickle_file(path: Path) -> bool:
    """Whether `path` is named like a pickle-based weights or state file."""
    return path.suffix.lower() in PICKLE_SUFFIXES


def require_safetensors_adapter(adapter_dir: str | Path) -> None:
    """Refuse (`NotSafetensors`) an adapter folder without `adapter_model.safetensors`."""
    folder = Path(adapter_dir)
    if not (folder / ADAPTER_WEIGHTS).is_file():
        found = (
            sorted(p.name for p in folder.iterdir() if is_pickle_file(p)) if folder.is_dir() else []
        )
        raise NotSafetensors(
            f"the adapter in {folder} has no {ADAPTER_WEIGHTS}"
            + (f" (it has {', '.join(found)}, a pickle format ftray never loads)" if found else "")
            + "; ftray reads and writes adapters as safetensors only"
        )


def load_adapter(base_model: Any, adapter_dir: str | Path) -> Any:
    """`base_model` with the LoRA adapter in `adapter_dir`, read from its safetensors file:
    peft would fall back to unpickling `adapter_model.bin`, so a folder without
    `adapter_model.safetensors` is refused first."""
    from peft import PeftModel

    require_safetensors_adapter(adapter_dir)
    return PeftModel.from_pretrained(base_model, str(adapter_dir))


def base_source_kwargs(base: str, revision: str | None) -> dict[str, Any]:
    """Where `from_pretrained` finds a registered adapter's base: a local folder as it is, a
    Hugging Face id in the local cache only, at `revision`."""
    if Path(base).is_dir():
        return {}
    return {"revision": revision, "local_files_only": True}


def load_safetensors_model(base: str, **kwargs: Any) -> Any:
    """`AutoModelForCausalLM.from_pretrained` from safetensors weights only: a base that
    has nothing but a pickled `pytorch_model.bin` is refused (`NotSafetensors`)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(base, **kwargs, use_safetensors=True)
    except OSError as exc:
        if "safetensors" not in str(exc):
            raise
        raise NotSafetensors(
            f"the base model {base} has no safetensors weights ({exc}); ftray loads no "
            "pickled weights (pytorch_model.bin): pick a revision with safetensors or convert it"
        ) from None


def load_base_model(base: str, revision: str | None, **kwargs: Any) -> Any:
    """The base model from a local folder, or a Hugging Face id from the local cache only at
    `revision`, so a registered adapter always meets the base it was trained on, or a clear
    error (`BaseModelMissing`)."""
    try:
        return load_safetensors_model(base, **kwargs, **base_source_kwargs(base, revision))
    except OSError as exc:
        raise BaseModelMissing(
            f"the base model {base} (revision {revision or 'any'}) is not in this machine's "
            f"Hugging Face cache ({exc.__class__.__name__}); download it first: "
            f"hf download {base}" + (f" --revision {revision}" if revision else "")
        ) from exc


def load_for_inference(
    base: str,
    adapter_dir: str,
    load_in_4bit: bool,
    revision: str | None = None,
    keep_quantized: bool = True,
) -> tuple[Any, Any]:
    """(base with the adapter, in eval mode; the adapter's tokenizer) for generation.

    `base` is a local folder or a Hugging Face id (see `load_base_model`). A 4-bit base is
    read from the cache of quantized bases when this machine quantized it before (the
    sweep's trials did, where the registered version is scored), and kept there otherwise;
    `keep_quantized=False` for a base in a folder that will not be seen again (a served
    model's bundled copy, downloaded afresh each time), which would only add copies.
    """
    quiet_cpu_kernel_notice()
    import torch

    kwargs = base_model_kwargs(load_in_4bit)
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    if load_in_4bit and keep_quantized:
        from ftray.models.quantized import load_4bit_base

        base_model = load_4bit_base(
            base, revision, kwargs, lambda: load_base_model(base, revision, **kwargs)
        )
    else:
        base_model = load_base_model(base, revision, **kwargs)
    model = load_adapter(base_model, adapter_dir)
    model.eval()
    return model, load_tokenizer(adapter_dir)


def resolved_revision(base: str, requested: str | None) -> str:
    """What pins the base a trial trained on: the commit of a Hub id in the local cache,
    `local` for a folder, `unresolved` when the cache does not have it."""
    if Path(base).is_dir():
        return "local"
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(base, revision=requested, local_files_only=True)
    except Exception:  # not cached (yet): nothing to pin
        return requested or "unresolved"
    return Path(folder).name


class PeftBackend:
    """4-bit NF4 base through bitsandbytes, LoRA through peft."""

    name = "peft"

    def load(self, base: str, model: ModelSpec, lora: LoraSpec, seed: int) -> tuple[Any, Any]:
        """Load the base (4-bit when `model.load_in_4bit`, quantized once per machine: see
        `ftray.models.quantized`) and attach a fresh LoRA adapter."""
        import torch
        from peft import get_peft_model

        kwargs = base_model_kwargs(model.load_in_4bit)
        if model.revision is not None:
            kwargs["revision"] = model.revision
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": torch.cuda.current_device()}
        if model.load_in_4bit:
            from ftray.models.quantized import load_4bit_base

            base_model = load_4bit_base(base, model.revision, kwargs)
        else:
            base_model = load_safetensors_model(base, **kwargs)
        base_model.config.use_cache = False
        torch.manual_seed(seed)
        peft_model = get_peft_model(base_model, lora_config(lora))
        return peft_model, load_tokenizer(base)

    @contextmanager
    def generation_mode(self, model: Any) -> Iterator[None]:
        """`model.eval()` for generation, `model.train()` after it."""
        model.eval()
        try:
            yield
        finally:
            model.train()
