"""What counts as a secret, and how it is masked before anything is logged or recorded.

A key *looks secret* when its last dotted part names a token, password, secret, API or
access key, private key, credential or auth string; its value is shown as `***`. A URL's
password (`postgresql://user:password@host/db`) is masked wherever the URL is shown. The
values of secret-looking environment variables (`HF_TOKEN`, `MLFLOW_TRACKING_PASSWORD`,
`AWS_SECRET_ACCESS_KEY`, ...) are masked in every line ftray logs. ftray takes no secret in
a spec: tokens and passwords come from the environment (README "Security").
"""

from __future__ import annotations

import os
import re
from typing import Any

MASK = "***"
_SECRET_KEY = re.compile(
    r"(token(?!s|iz)|passw(or)?d|secret|api[_-]?key|access[_-]?key|private[_-]?key|credential|auth(?!or))",
    re.IGNORECASE,
)
_URL_PASSWORD = re.compile(r"(?<=://)([^:/@\s]+):[^@/\s]+@")
_SHORTEST_MASKED_ENV_VALUE = 6
"""Shorter values (`1`, `true`) are settings, not secrets, and would mask ordinary words."""


def looks_secret(key: str) -> bool:
    """Whether the last part of the dotted `key` names a secret."""
    return bool(_SECRET_KEY.search(str(key).rsplit(".", 1)[-1]))


def mask_url_passwords(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***`."""
    return _URL_PASSWORD.sub(rf"\1:{MASK}@", text)


def redact(value: Any) -> Any:
    """`value` (nested dicts, lists, strings) with secret-looking keys' values as `***` and
    URL passwords masked."""
    if isinstance(value, dict):
        return {k: MASK if looks_secret(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return mask_url_passwords(value)
    return value


def mask_override(text: str) -> str:
    """A `--set key=value` as it may be shown: the value masked when the key looks secret."""
    key, sep, value = text.partition("=")
    if sep and looks_secret(key.strip()):
        return f"{key}={MASK}"
    return mask_url_passwords(text)


def secret_env_values(environ: dict[str, str] | None = None) -> list[str]:
    """The values of environment variables whose names look secret, longest first."""
    environ = os.environ if environ is None else environ
    values = {
        v for k, v in environ.items() if looks_secret(k) and len(v) >= _SHORTEST_MASKED_ENV_VALUE
    }
    return sorted(values, key=len, reverse=True)


def mask_secrets(text: str) -> str:
    """`text` with URL passwords and the values of secret-looking environment variables
    masked: the last guard on every line ftray logs."""
    for value in secret_env_values():
        text = text.replace(value, MASK)
    return mask_url_passwords(text)
