"""A 4-bit base quantized once per machine.

Loading a base with `load_in_4bit` reads its full-precision checkpoint and quantizes every
linear layer to NF4 on the way in. The peft backend saves what bitsandbytes made under
`$FTRAY_CACHE_DIR/quantized/<key>/` (else `~/.cache/ftray/quantized/`) the first time, and
later loads of the same base (every other trial of a sweep on this machine, `ftray train`
again, the registered version's test-split scoring, a served model whose base is not bundled)
read the saved NF4 weights instead: about a quarter of the bytes, nothing to quantize. The
weights are the same bytes either way, so training and answers are unchanged.

The key covers the base's files (name, size, modification time; a Hub id through the
commit its local snapshot holds), the quantization settings and dtype, and the versions of
torch, transformers and bitsandbytes. The cache keeps one copy per base folder: saving a
new one (the base's files or a library changed) removes the copies made from the same folder
before. Nothing here is required: a base that is not on this machine, a cache that cannot be
written or an entry that cannot be read costs only the quantization, with a warning for the
last two.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from ftray.log import get_logger
from ftray.models.tiny import ftray_cache

log = get_logger()

FORMAT = 1  # bump when what is saved, or how it is read, changes
LIBRARIES = ("torch", "transformers", "bitsandbytes")
SOURCE_FILE = "ftray-source.json"
"""In each copy: the base folder it was made from, so that a newer copy replaces it."""


def quantized_cache_root() -> Path:
    """Where quantized bases live: $FTRAY_CACHE_DIR/quantized, else ~/.cache/ftray/quantized."""
    return ftray_cache() / "quantized"


def local_base_folder(base: str, revision: str | None) -> Path | None:
    """The folder on this machine that holds `base`'s files: the folder itself, or a Hub id's
    snapshot in the local Hugging Face cache at `revision`; None when it is not there."""
    if Path(base).is_dir():
        return Path(base)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(base, revision=revision, local_files_only=True))
    except Exception:  # not cached: the load downloads it or says what is wrong
        return None


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def quantized_key(folder: Path, settings: dict[str, Any]) -> str:
    """A hash of what the quantized weights depend on: the base folder's files (name, size,
    modification time: hashing a 15 GB checkpoint would cost more than quantizing it), the
    quantization `settings`, and the libraries' versions."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts)
    payload = {
        "format": FORMAT,
        "settings": settings,
        "libraries": {name: _version(name) for name in LIBRARIES},
        "files": [
            [str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns] for p in files
        ],
    }
    encoded = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(encoded).hexdigest()[:24]


def quantization_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The parts of `from_pretrained`'s arguments the quantized weights depend on."""
    config = kwargs["quantization_config"]
    return {"quantization": config.to_dict(), "dtype": str(kwargs.get("dtype"))}


def cache_entry(
    base: str, revision: str | None, kwargs: dict[str, Any]
) -> tuple[Path, Path] | None:
    """The folder holding `base` on this machine and the cache folder for it loaded with
    `kwargs`; None when the base is not on this machine (nothing to key it by) or its files
    cannot be read."""
    folder = local_base_folder(base, revision)
    if folder is None:
        return None
    try:
        return folder, quantized_cache_root() / quantized_key(folder, quantization_settings(kwargs))
    except OSError:
        return None


def load_cached(entry: Path, base: str, kwargs: dict[str, Any]) -> Any | None:
    """The quantized base saved in `entry`, named `base` as a fresh load would be; None when
    there is none or it cannot be read (the caller quantizes again)."""
    if not (entry / "config.json").is_file():
        return None
    from ftray.models.peft_backend import load_safetensors_model

    settings = {k: v for k, v in kwargs.items() if k not in ("quantization_config", "revision")}
    try:
        model = load_safetensors_model(str(entry), **settings)
    except Exception as exc:  # a damaged entry must not stop a trial
        log.warning(
            "the quantized copy of %s in %s could not be read (%s); quantizing again",
            base,
            entry,
            exc,
        )
        shutil.rmtree(entry, ignore_errors=True)  # so that the new copy replaces it
        return None
    # Adapters saved from this model name the base the user gave, not the cache folder.
    model.config.name_or_path = base
    model.name_or_path = base
    return model


def _save_quietly(model: Any, folder: Path) -> None:
    """`model.save_pretrained(folder)` without transformers' progress bar."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(folder, safe_serialization=True)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _source(entry: Path) -> str | None:
    """The base folder a cached copy was made from; None for a copy that does not say."""
    try:
        return json.loads((entry / SOURCE_FILE).read_text())["base_folder"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove_older_copies(entry: Path, source: str) -> None:
    """Remove the cached copies other than `entry` made from the base folder `source`: made
    from older files, or by other library versions, no load of this machine reads them."""
    for other in entry.parent.iterdir():
        if other.name.startswith("."):  # another load's copy, still being written
            continue
        if other != entry and other.is_dir() and _source(other) == source:
            log.debug("removing %s, an older quantized copy of %s", other, source)
            shutil.rmtree(other, ignore_errors=True)


def save_quantized(model: Any, entry: Path, folder: Path | None = None) -> None:
    """Save `model`'s quantized weights and config as `entry`, written beside it and renamed
    into place so that a concurrent trial never reads a half-written one. With the base
    `folder` it was loaded from, the copies made from that folder before are removed."""
    staging: Path | None = None
    source = str(folder.resolve()) if folder is not None else None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=entry.parent))
        _save_quietly(model, staging)
        if source is not None:
            (staging / SOURCE_FILE).write_text(json.dumps({"base_folder": source}))
        try:
            staging.rename(entry)
        except OSError:
            if not (entry / "config.json").is_file():
                raise  # not a concurrent trial's identical copy
        if source is not None:
            remove_older_copies(entry, source)
    except Exception as exc:  # a full disk or a read-only cache costs the next load only
        log.warning(
            "could not keep the quantized base in %s (%s); the next load quantizes it again",
            entry,
            exc,
        )
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def load_4bit_base(
    base: str,
    revision: str | None,
    kwargs: dict[str, Any],
    load: Callable[[], Any] | None = None,
) -> Any:
    """`base` loaded with `kwargs` (which quantize it to 4 bits): from the cache when this
    machine quantized it before, else quantized now by `load` (default: `from_pretrained`
    with `kwargs`) and saved there."""
    from ftray.models.peft_backend import load_safetensors_model

    cached = cache_entry(base, revision, kwargs)
    if cached is not None:
        model = load_cached(cached[1], base, kwargs)
        if model is not None:
            return model
    model = load() if load is not None else load_safetensors_model(base, **kwargs)
    if cached is not None:
        save_quantized(model, cached[1], cached[0])
    return model
