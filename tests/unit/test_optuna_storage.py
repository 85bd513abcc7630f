"""Optuna's database storage: opened by several drivers at once on a new database."""

from __future__ import annotations

import multiprocessing
import time

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from ftray.sweep import optuna_storage
from ftray.sweep.optuna_storage import open_beside_other_drivers

TAKEN = IntegrityError("CREATE TABLE alembic_version", {}, Exception("duplicate key ... exists"))
EXISTS = ProgrammingError(
    "CREATE TABLE studies", {}, Exception('relation "studies" already exists')
)
REFUSED = OperationalError("connect", {}, Exception("password authentication failed"))


class Opening:
    """Fails with the given errors, one per call, then opens."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)


@pytest.fixture
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optuna_storage, "RETRY_PAUSE_S", 0.0)


def test_a_table_or_row_another_process_created_first_is_tried_again(no_pause: None) -> None:
    opening = Opening(TAKEN, EXISTS)
    open_beside_other_drivers(opening)
    assert opening.calls == 3


def test_any_other_error_is_raised_at_once(no_pause: None) -> None:
    opening = Opening(REFUSED)
    with pytest.raises(OperationalError, match="password authentication failed"):
        open_beside_other_drivers(opening)
    assert opening.calls == 1


def test_the_tries_are_bounded(no_pause: None) -> None:
    opening = Opening(*[TAKEN] * optuna_storage.OPEN_TRIES)
    with pytest.raises(IntegrityError):
        open_beside_other_drivers(opening)
    assert opening.calls == optuna_storage.OPEN_TRIES


def _open_at(url: str, at: float, results: multiprocessing.Queue) -> None:
    time.sleep(max(0.0, at - time.time()))
    try:
        optuna_storage.PasswordFreeRDBStorage(url)
        results.put("opened")
    except Exception as exc:  # reported to the test, which shows it
        results.put(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")


def test_drivers_starting_together_on_a_new_postgres_database_all_open_it() -> None:
    """Three processes open the storage at the same instant: without the retry, all but one
    failed creating Optuna's tables, in each of 5 rounds."""
    from tests.e2e.postgres import USER, fresh_database

    with fresh_database() as name:
        url = f"postgresql://{USER}@127.0.0.1:5432/{name}"
        fork = multiprocessing.get_context("fork")  # optuna is imported already: they start fast
        results = fork.Queue()
        at = time.time() + 1.0
        processes = [fork.Process(target=_open_at, args=(url, at, results)) for _ in range(3)]
        for process in processes:
            process.start()
        try:
            said = [results.get(timeout=60) for _ in processes]
        finally:
            for process in processes:
                process.join(30)
        assert said == ["opened"] * 3, said
        assert optuna_storage.PasswordFreeRDBStorage(url).get_all_studies() == []
