"""Optuna's database storage, pickled without the database password.

Ray Tune pickles the searcher, and with it the study's storage, into the experiment folder
(`searcher-state-*.pkl`, `tuner.pkl`). This storage writes its URL there without the
password and, when Tune unpickles it on `--resume` in the driver, takes the password from
the spec's `storage.optuna_url` given again (or, with none, leaves it to the database
driver: libpq reads PGPASSWORD and ~/.pgpass).

Several drivers may share one database (a team's sweeps on one cluster, each its own
study). Optuna creates its tables on first use, checking for each first; drivers that start
together on a new database race between the check and the `CREATE`, and all but one fail.
Opening the storage is therefore tried again when it fails because another process created
a table or row first: the next try finds them and goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

from optuna.storages import RDBStorage
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError

_PASSWORDS: dict[str, str] = {}
"""Password-free URL -> password, for the storages this driver process opened."""

OPEN_TRIES = 5
"""How many times opening a storage is tried while other processes create its tables."""
RETRY_PAUSE_S = 0.5
"""The pause before the second try; each later try waits that much longer."""


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


def created_by_another(exc: DBAPIError) -> bool:
    """Whether opening a storage failed because another process created a table, type or row
    of Optuna's schema first (a unique key taken, a relation that already exists)."""
    return isinstance(exc, IntegrityError) or "already exists" in str(exc)


def open_beside_other_drivers(open_storage: Callable[[], None]) -> None:
    """`open_storage()`, tried again (OPEN_TRIES in all) while it fails because another
    process is creating the same database's tables; any other error is raised at once."""
    for attempt in range(1, OPEN_TRIES + 1):
        try:
            open_storage()
            return
        except DBAPIError as exc:
            if attempt == OPEN_TRIES or not created_by_another(exc):
                raise
        time.sleep(RETRY_PAUSE_S * attempt)


class PasswordFreeRDBStorage(RDBStorage):
    """An RDBStorage whose pickled state carries no database password."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        remember_password(url)
        open_beside_other_drivers(partial(super().__init__, url, **kwargs))

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state["url"] = without_password(state["url"])[0]
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        url = state["url"]
        password = _PASSWORDS.get(url)
        if password is not None:
            url = make_url(url).set(password=password).render_as_string(hide_password=False)
        open_beside_other_drivers(partial(super().__setstate__, {**state, "url": url}))
