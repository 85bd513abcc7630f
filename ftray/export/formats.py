"""The adapter and merged-safetensors exports.

`adapter` copies the PEFT adapter with its tokenizer and chat template; `merged` loads the
base in 16 or 32 bits (never 4-bit: merging into quantised weights loses the adapter's
precision), merges the adapter and saves safetensors that plain transformers loads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ftray.export.source import ExportSource
from ftray.models.peft_backend import is_pickle_file, require_safetensors_adapter

DTYPES = ("auto", "float32", "bfloat16", "float16")
TOKENIZER_MODEL = "tokenizer.model"
"""A SentencePiece model: llama.cpp's converter reads it; tokenizer.json alone is not enough."""
_ADAPTER_SKIP = {"samples.jsonl", "metrics.json", "README.md"}


def _pickles(folder: str, names: list[str]) -> set[str]:
    """What a copy leaves behind: pickle-based files (an export holds safetensors only)."""
    return {name for name in names if is_pickle_file(Path(folder, name))}


def write_adapter(source: ExportSource, out: Path) -> None:
    """The PEFT adapter, tokenizer and chat template in `out`; a bundled base in `out/base`.

    `adapter_config.json` names the base the way a user loads it: the Hub id for a Hub base,
    `base` (the folder beside it) for the bundled `tiny` base.
    """
    require_safetensors_adapter(source.adapter_dir)
    for item in source.adapter_dir.iterdir():
        if item.name in _ADAPTER_SKIP or is_pickle_file(item):
            continue
        if item.is_dir():
            shutil.copytree(item, out / item.name, ignore=_pickles)
        else:
            shutil.copy2(item, out / item.name)
    bundled = Path(source.base).is_dir()
    if bundled:
        shutil.copytree(source.base, out / "base", ignore=_pickles)
    config_file = out / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = "base" if bundled else source.base
    if not bundled and source.base_revision:
        config["revision"] = source.base_revision
    config_file.write_text(json.dumps(config, indent=2) + "\n")


def _torch_dtype(name: str, base_config: Any) -> Any:
    import torch

    if name == "auto":
        declared = getattr(base_config, "dtype", None) or getattr(base_config, "torch_dtype", None)
        if isinstance(declared, str):
            declared = getattr(torch, declared, None)
        # A 4-bit or unknown declaration merges in float32: never below 16 bits.
        if declared in (torch.float16, torch.bfloat16, torch.float32):
            return declared
        return torch.float32
    return getattr(torch, name)


def load_merged(source: ExportSource, dtype: str = "auto") -> tuple[Any, Any]:
    """(the base in `dtype` with the adapter merged into its weights, the adapter's tokenizer)."""
    from transformers import AutoConfig

    from ftray.models.peft_backend import (
        base_source_kwargs,
        load_adapter,
        load_base_model,
        load_tokenizer,
    )

    try:
        base_config = AutoConfig.from_pretrained(
            source.base, **base_source_kwargs(source.base, source.base_revision)
        )
    except OSError:
        base_config = None  # load_base_model says what is missing
    model = load_base_model(
        source.base, source.base_revision, dtype=_torch_dtype(dtype, base_config)
    )
    merged = load_adapter(model, source.adapter_dir).merge_and_unload()
    merged.eval()
    return merged, load_tokenizer(str(source.adapter_dir))


def _tokenizer_model(source: ExportSource) -> Path | None:
    """The base's SentencePiece model file, when it has one."""
    for folder in (source.adapter_dir, Path(source.base)):
        if (folder / TOKENIZER_MODEL).is_file():
            return folder / TOKENIZER_MODEL
    if Path(source.base).is_dir():
        return None
    from huggingface_hub import hf_hub_download

    try:
        return Path(
            hf_hub_download(
                source.base,
                TOKENIZER_MODEL,
                revision=source.base_revision,
                local_files_only=True,
            )
        )
    except Exception:  # the base has none, or it is not cached: tokenizer.json is enough
        return None


def spell_out_tokenizer_config(tokenizer: Any, out: Path) -> None:
    """Write into `tokenizer_config.json` what transformers 5 leaves implicit and llama.cpp's
    converter reads from there: which added tokens are special (`added_tokens_decoder`; a
    chat token not marked so would be split into characters) and whether a BOS or EOS is
    added (absent, llama.cpp adds a BOS to every SentencePiece prompt)."""
    config_file = out / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    probe = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.setdefault("add_bos_token", bool(probe) and bos is not None and probe[0] == bos)
    config.setdefault("add_eos_token", bool(probe) and eos is not None and probe[-1] == eos)
    if "added_tokens_decoder" not in config:
        config["added_tokens_decoder"] = {
            str(token_id): {
                "content": token.content,
                "lstrip": token.lstrip,
                "normalized": token.normalized,
                "rstrip": token.rstrip,
                "single_word": token.single_word,
                "special": token.special,
            }
            for token_id, token in sorted(tokenizer.added_tokens_decoder.items())
        }
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def write_merged(source: ExportSource, out: Path, dtype: str = "auto") -> dict[str, str]:
    """Merged safetensors, tokenizer (with chat template) and generation config in `out`;
    returns what the manifest records about it."""
    model, tokenizer = load_merged(source, dtype)
    generation = model.generation_config
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    generation.do_sample = False  # ftray measured greedy answers
    for name in ("temperature", "top_p", "top_k"):
        setattr(generation, name, None)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    spell_out_tokenizer_config(tokenizer, out)
    sentencepiece = _tokenizer_model(source)
    if sentencepiece is not None:
        shutil.copy2(sentencepiece, out / TOKENIZER_MODEL)
    return {"dtype": str(model.dtype).removeprefix("torch.")}
