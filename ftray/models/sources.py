"""Where a spec's base model comes from: `tiny`, a local folder, or a Hugging Face id, found
in the local Hugging Face cache or (when the Hub may be reached) downloaded by the trial.

Checked before anything loads, without torch: a base that is none of these is bad input,
with the nearest cached names, instead of a traceback from the Hub client mid-trial. Where
the Hub may be reached, an uncached base is asked for there (one request, at most
HUB_TIMEOUT seconds): a name the Hub does not know or a revision it lacks is bad input too;
no answer leaves it a warning. (The Hub shows a gated model's card to anyone, so a gated
model this machine's token may not download still fails at the trial's download.)
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

from ftray.config.spec import TINY_MODEL, Spec
from ftray.errors import InputError, Problem
from ftray.log import get_logger

HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
"""`name` or `owner/name`, as the Hub spells repository ids."""
TRUTHY = ("1", "true", "yes", "on")
DEFAULT_HUB_ENDPOINT = "https://huggingface.co"
HUB_TIMEOUT = 10.0
"""Seconds `validate`, `train` and `sweep` wait for the Hub's answer about an uncached base."""


def hub_offline() -> bool:
    """Whether the Hugging Face libraries are told not to reach the Hub (HF_HUB_OFFLINE or
    TRANSFORMERS_OFFLINE), so a base must already be in the local cache."""
    return any(
        os.environ.get(name, "").strip().lower() in TRUTHY
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_endpoint() -> str:
    """The Hub's URL: HF_ENDPOINT as it is now (huggingface_hub reads it once, at import),
    else huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_HUB_ENDPOINT).rstrip("/")


def hub_cache_dir() -> Path:
    """The local Hugging Face hub cache: HF_HUB_CACHE, else $HF_HOME/hub, else
    ~/.cache/huggingface/hub (huggingface_hub's own order)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
    )
    return Path(home).expanduser() / "hub"


def cached_models(cache: Path | None = None) -> list[str]:
    """Ids of the models in the local Hugging Face cache that have a downloaded snapshot."""
    root = cache or hub_cache_dir()
    try:
        folders = sorted(p for p in root.iterdir() if p.name.startswith("models--"))
    except OSError:
        return []
    return [
        folder.name.removeprefix("models--").replace("--", "/")
        for folder in folders
        if any((folder / "snapshots").glob("*/config.json"))
    ]


def cached_snapshot(base: str, revision: str | None, cache: Path | None = None) -> Path | None:
    """The folder of the cache's snapshot of `base` (at `revision`: a commit, or a branch or
    tag it recorded; without one, the snapshot `main` points at, else any) that has its
    config.json; None when there is none."""
    folder = (cache or hub_cache_dir()) / f"models--{base.replace('/', '--')}"
    snapshots = folder / "snapshots"
    ref = folder / "refs" / (revision or "main")
    commit = ref.read_text().strip() if ref.is_file() else revision
    if commit and (snapshots / commit / "config.json").is_file():
        return snapshots / commit
    if revision is not None:
        return None
    found = sorted(snapshots.glob("*/config.json"))
    return found[0].parent if found else None


def is_cached(base: str, revision: str | None, cache: Path | None = None) -> bool:
    """Whether the cache has a snapshot of `base` (at `revision`) with its config.json."""
    return cached_snapshot(base, revision, cache) is not None


def local_model_folder(base: str, revision: str | None) -> Path | None:
    """Where the files of the base `base` are on this machine without a download: a local
    folder, or its snapshot in the Hugging Face cache; None when neither (or for `tiny`,
    which is built from the task's data: `ftray.models.tiny`)."""
    if base == TINY_MODEL:
        return None
    path = Path(base).expanduser()
    if path.is_dir():
        return path
    return cached_snapshot(base, revision) if HUB_ID.match(base) else None


def nearest_cached(base: str, cache: Path | None = None) -> list[str]:
    """The cached model ids closest to `base` (at most three), by whole id or by name."""
    cached = cached_models(cache)
    by_name = {model.rsplit("/", 1)[-1].lower(): model for model in cached}
    close = difflib.get_close_matches(base, cached, n=3, cutoff=0.6)
    close += [
        by_name[name]
        for name in difflib.get_close_matches(
            base.rsplit("/", 1)[-1].lower(), by_name, n=3, cutoff=0.6
        )
    ]
    return list(dict.fromkeys(close))[:3]


def base_model_problem(spec: Spec, local: bool = True) -> tuple[Problem | None, Problem | None]:
    """(error, warning) about `model.base`: an error when it is neither `tiny`, a local
    folder, nor a Hub id this machine can load (in the cache, or downloadable: the Hub is
    not switched off); a warning when it is not cached but may still be downloaded, or when
    the model is loaded elsewhere (`local` False: trials run on a Ray cluster)."""
    base, revision = spec.model.base, spec.model.revision
    if base == TINY_MODEL:
        return None, None
    path = Path(base).expanduser()
    if path.is_dir():
        return None, None
    where = ("model", "base")
    if path.exists() or not HUB_ID.match(base):
        return (
            spec.source.problem(
                where,
                f"model.base {base!r} is neither 'tiny', a model folder, nor a Hugging Face id "
                "(owner/name); fix the path or the id",
            ),
            None,
        )
    if is_cached(base, revision):
        return None, None
    at = f" at revision {revision}" if revision else ""
    near = nearest_cached(base)
    hint = f"; nearest cached: {', '.join(near)}" if near else ""
    if difflib.get_close_matches(base.lower(), [TINY_MODEL], cutoff=0.7):
        hint = f"; did you mean '{TINY_MODEL}'?{hint}"
    fetch = f"hf download {base}" + (f" --revision {revision}" if revision else "")
    if hub_offline() and local:
        return (
            spec.source.problem(
                where,
                f"model.base {base!r}{at} is not 'tiny', not a local folder and not in the "
                f"Hugging Face cache ({hub_cache_dir()}), and HF_HUB_OFFLINE is set{hint}; "
                f"fix the name or download it first: {fetch}",
            ),
            None,
        )
    if not hub_offline():
        refused = hub_refusal(base, revision)
        if refused is not None:
            return spec.source.problem(where, f"model.base {base!r}{at} {refused}{hint}"), None
    later = "each trial's node" if not local else "the Hub when it loads"
    return None, spec.source.problem(
        where,
        f"model.base {base!r}{at} is not in this machine's Hugging Face cache; it is "
        f"fetched from {later}{hint}",
    )


def check_base_model(spec: Spec, local: bool = True) -> None:
    """Raise InputError for a base model this machine cannot load; log the warning if any."""
    error, warning = base_model_problem(spec, local)
    if error is not None:
        raise InputError([error])
    if warning is not None:
        get_logger().warning(str(warning))


def hub_refusal(base: str, revision: str | None) -> str | None:
    """Why the Hugging Face Hub will not give `base` (at `revision`) to this machine: it does
    not know the name (or the model is private to others) or lacks the revision; None when
    the Hub has it, or cannot be asked (no network, a proxy, no answer
    within HUB_TIMEOUT seconds: the trial's own download then says what went wrong)."""
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import (
            GatedRepoError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        return None
    token = "HF_TOKEN is set" if os.environ.get("HF_TOKEN") else "no HF_TOKEN is set"
    try:
        HfApi(endpoint=hub_endpoint()).model_info(base, revision=revision, timeout=HUB_TIMEOUT)
    except GatedRepoError:
        return (
            f"is gated on the Hugging Face Hub and this machine's token may not read it "
            f"({token}): accept its terms on its page and set HF_TOKEN to that account's token"
        )
    except RepositoryNotFoundError:
        return (
            f"is not on the Hugging Face Hub, or is private to an account this machine's "
            f"token is not ({token}); fix the id"
        )
    except RevisionNotFoundError:
        return "names a revision the Hugging Face Hub does not have; fix model.revision"
    except Exception:  # the Hub cannot be asked here; the trial's download will say why
        return None
    return None
