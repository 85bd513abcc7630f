"""Optuna's database storage, pickled without the database password.

Ray Tune pickles the searcher, and with it the study's storage, into the experiment folder
(`searcher-state-*.pkl`, `tuner.pkl`). This storage writes its URL there without the
password and, when Tune unpickles it on `--resume` in the driver, takes the password from
the spec's `storage.optuna_url` given again (or, with none, leaves it to the database
driver: libpq reads PGPASSWORD and ~/.pgpass).
"""

from __future__ import annotations

from typing import Any

from optuna.storages import RDBStorage
from sqlalchemy.engine import URL, make_url

_PASSWORDS: dict[str, str] = {}
"""Password-free URL -> password, for the storages this driver process opened."""


def without_password(url: str) -> tuple[str, str | None]:
    """(`url` without its password, the password or None)."""
    parsed = make_url(url)
    if parsed.password is None:
        return url, None
    bare = URL.create(
        parsed.drivername,
        parsed.username,
        None,
        parsed.host,
        parsed.port,
        parsed.database,
        parsed.query,
    )
    return bare.render_as_string(hide_password=False), str(parsed.password)


def remember_password(url: str) -> None:
    """Keep the password of `url` in this process, for storages unpickled later."""
    bare, password = without_password(url)
    if password is not None:
        _PASSWORDS[bare] = password


class PasswordFreeRDBStorage(RDBStorage):
    """An RDBStorage whose pickled state carries no database password."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        remember_password(url)
        super().__init__(url, **kwargs)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state["url"] = without_password(state["url"])[0]
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        url = state["url"]
        password = _PASSWORDS.get(url)
        if password is not None:
            url = make_url(url).set(password=password).render_as_string(hide_password=False)
        super().__setstate__({**state, "url": url})
