"""Push an exported folder to a Hugging Face Hub model repository.

The token comes from `HF_TOKEN` and the Hub from `HF_ENDPOINT` (default: huggingface.co). The
token is handed to `huggingface_hub` and nowhere else: it is never logged, printed, or put in an
error message (anything we quote from a failure has it replaced by `***`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from ftray.errors import InputError
from ftray.export.errors import ExportFailed
from ftray.log import get_logger
from ftray.models.sources import hub_endpoint

DEFAULT_COMMIT_MESSAGE = "Upload model exported by ftray"

_ONLINE_LOCK = threading.Lock()


def push_to_hub(
    folder: Path,
    repo_id: str,
    *,
    private: bool = True,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
) -> str:
    """Create `repo_id` (a model repo; kept as it is if it exists) and upload `folder` to it.

    Returns the URL of the commit (or of the repo, if the Hub names no commit). Raises
    `InputError` when `HF_TOKEN` is unset, the folder is missing or empty, or the repo id is
    malformed; `ExportFailed` when the Hub refuses the push or cannot be reached. The push goes
    ahead even when `HF_HUB_OFFLINE` is set: see `_hub_online`.
    """
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise InputError.at(
            "HF_TOKEN",
            None,
            "not set: set HF_TOKEN to a Hub token with write access to push to the Hub",
        )
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError.at(folder, None, "not a directory: nothing to push")
    files = _files_to_push(folder)
    if not files:
        raise InputError.at(folder, None, "no files to push")
    endpoint = hub_endpoint()

    # Imported here so that commands which never push do not pay for huggingface_hub.
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError

    get_logger().info(_scrub(f"pushing {len(files)} files to {repo_id} at {endpoint}", token))
    api = HfApi(endpoint=endpoint, token=token)
    try:
        with _hub_online():
            repo_url = api.create_repo(repo_id, exist_ok=True, private=private, repo_type="model")
            commit = api.upload_folder(
                folder_path=folder,
                repo_id=repo_id,
                repo_type="model",
                commit_message=commit_message,
            )
    except HFValidationError as exc:
        raise InputError.at("repo_id", None, _scrub(f"{repo_id!r}: {exc}", token)) from None
    # `from None`: the original exception (kept out of tracebacks) is never scrubbed.
    except _hub_errors() as exc:
        raise ExportFailed(
            _scrub(
                f"pushing {folder} to {repo_id} at {endpoint} failed: {type(exc).__name__}: {exc}",
                token,
            )
        ) from None
    return str(getattr(commit, "commit_url", None) or repo_url)


def _hub_errors() -> tuple[type[Exception], ...]:
    """What a failed push raises: Hub HTTP errors (`HfHubHTTPError` is an `OSError`), transport
    errors of the HTTP client (httpx in huggingface_hub 1.x, requests before), and `ValueError`
    (a model card the Hub rejects, a malformed Hub answer)."""
    errors: list[type[Exception]] = [OSError, ValueError]
    for module, name in (("httpx", "HTTPError"), ("requests", "RequestException")):
        with contextlib.suppress(ImportError):
            errors.append(getattr(importlib.import_module(module), name))
    return tuple(errors)


def _files_to_push(folder: Path) -> list[Path]:
    """The files `upload_folder` will send: everything but `.git/` and `.cache/huggingface/`."""
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if ".git" in relative.parts or "/.cache/huggingface/" in f"/{relative.as_posix()}":
            continue
        if path.is_file():
            files.append(path)
    return files


def _scrub(text: str, token: str) -> str:
    """`text` with every occurrence of the token replaced by `***`."""
    return text.replace(token, "***") if token else text


@contextlib.contextmanager
def _hub_online() -> Iterator[None]:
    """Let huggingface_hub reach the network for the push, even under `HF_HUB_OFFLINE=1`.

    huggingface_hub reads `HF_HUB_OFFLINE` once, at import, into
    `huggingface_hub.constants.HF_HUB_OFFLINE`; every request of its shared HTTP client then
    goes through `hf_request_event_hook`, which calls `constants.is_offline_mode()` (it reads
    that global at call time) and raises `OfflineModeIsEnabled`. Changing the environment
    variable after import therefore changes nothing. (That is huggingface_hub 1.x, checked with
    1.33; 0.x decided offline-ness when it built its cached requests session.) ftray's Makefile and test suite set
    HF_HUB_OFFLINE=1 so that training never downloads anything, but a push is an explicit
    request to talk to the Hub, so we turn the flag off for the duration of the push and put it
    back afterwards. This is the narrowest switch available: the alternative,
    `huggingface_hub.set_client_factory` with a client lacking the offline hook, also replaces
    the process-wide client (and drops the hook's request IDs) and would need restoring just the
    same. The flag is process-wide, so the lock makes concurrent pushes take turns (and restore
    the flag correctly); a Hub download running in another thread during a push would not be
    blocked, which ftray never does (a push runs alone, from the CLI).

    Only the push goes online: huggingface_hub also fetches, once per process and when online,
    a registry of AI-agent harnesses for its User-Agent (`GET {ENDPOINT}/api/agent-harnesses`,
    at the endpoint read at import, not necessarily the one we push to). Under HF_HUB_OFFLINE we
    resolve it first, while still offline (local cache or empty, no request), so the user's "no
    network" still holds for everything but the push itself.
    """
    from huggingface_hub import constants

    with _ONLINE_LOCK:
        saved = constants.HF_HUB_OFFLINE
        if saved:
            with contextlib.suppress(Exception):  # best effort, as in huggingface_hub itself
                from huggingface_hub.utils import detect_agent

                detect_agent()
        constants.HF_HUB_OFFLINE = False
        try:
            yield
        finally:
            constants.HF_HUB_OFFLINE = saved
