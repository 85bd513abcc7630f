"""A store is opened under a lock, again after a failure another process caused, and a store
that cannot be opened is one `error:` line naming it, exit 1 (tracking/opening.py). The
race itself, two processes at once: tests/integration/test_opening_race.py."""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
import threading
import time
from pathlib import Path

import mlflow
import pytest

from ftray.tracking import opening
from ftray.tracking.opening import StoreUnavailable, open_store
from tests.conftest import ROOT, SPECS, run_cli, sqlite_store

REFUSING = "postgresql://ftray:s3cret@127.0.0.1:1/mlflow"
"""A PostgreSQL store whose server refuses the connection (nothing listens on port 1)."""
SIMULATED = [
    *("--set", "model.backend=simulated"),
    *("--set", f"model.simulation={{curves: {ROOT / 'bench' / 'curves' / 'trigger_tiny.json'}}}"),
]


def one_error_line(result) -> str:
    """The run's only stderr line, which must be an `error:` line; exit 1, no traceback."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line != "HEAVY-IMPORT"]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_a_store_that_is_not_a_database_is_one_error_line(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    db.write_text("not a database\n" * 100)
    spec = SPECS / "trigger_tiny.yaml"
    result = run_cli("leaderboard", str(spec), "--tracking-uri", f"sqlite:///{db}", cwd=tmp_path)
    assert one_error_line(result) == (
        f"error: cannot open the MLflow store sqlite:///{db}: file is not a database"
    )
    assert "HEAVY-IMPORT" not in result.stderr


def test_a_server_that_refuses_the_connection_is_one_error_line_without_the_password(
    tmp_path: Path,
) -> None:
    board = run_cli(
        "leaderboard", str(SPECS / "trigger_tiny.yaml"), "--tracking-uri", REFUSING, cwd=tmp_path
    )
    line = one_error_line(board)
    assert line.startswith(
        "error: cannot open the MLflow store postgresql://ftray:***@127.0.0.1:1/mlflow: "
    ), line
    assert "Connection refused" in line and "s3cret" not in board.stderr
    promoted = run_cli(
        "promote", "trigger-tiny", "1", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": REFUSING}
    )
    assert one_error_line(promoted) == line


def test_a_sweep_refuses_a_store_it_cannot_use_before_ray_starts(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file, not a folder")
    uri = f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}"
    spec = SPECS / "trigger_tiny.yaml"
    result = run_cli("sweep", str(spec), *SIMULATED, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert one_error_line(result) == (
        f"error: cannot open the MLflow store {uri}: cannot make its folder {tmp_path / 'file'}: "
        "File exists"
    )
    refused = run_cli(
        "sweep", str(spec), *SIMULATED, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": REFUSING}
    )
    assert "Connection refused" in one_error_line(refused)
    # Neither started Ray: the conftest fails a test not marked slow that does.


def test_a_store_at_an_old_schema_says_to_upgrade_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = sqlite_store(tmp_path)
    with sqlite3.connect(tmp_path / "mlflow.db") as connection:  # a store of an older MLflow
        connection.execute("UPDATE alembic_version SET version_num = '0a8213491aaa'")
    monkeypatch.setattr(opening, "SETTLED_S", 0.5)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as raised:
        open_store(uri)
    assert time.monotonic() - started < 10
    message = str(raised.value)
    assert message.startswith(f"cannot open the MLflow store {uri}: Detected out-of-date")
    assert "mlflow db upgrade" in message and "\n" not in message


def test_a_new_store_is_made_under_a_lock_beside_it_and_waits_for_its_holder(
    tmp_path: Path,
) -> None:
    db = tmp_path / "new" / "mlflow.db"
    lock = tmp_path / "new" / "mlflow.db.lock"
    lock.parent.mkdir()
    holder = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another process opening the store
    threading.Timer(1.0, os.close, [holder]).start()
    started = time.monotonic()
    client = open_store(f"sqlite:///{db}")
    assert time.monotonic() - started >= 1.0
    assert client.search_experiments()[0].name == "Default"
    assert sorted(p.name for p in db.parent.iterdir()) == ["mlflow.db", "mlflow.db.lock"]


def test_a_lock_held_too_long_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "mlflow.db"
    holder = os.open(tmp_path / "mlflow.db.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    monkeypatch.setattr(opening, "OPEN_TIMEOUT_S", 0.3)
    try:
        with pytest.raises(StoreUnavailable, match="another process held its lock"):
            open_store(f"sqlite:///{db}")
    finally:
        os.close(holder)


def test_a_new_store_is_made_aside_and_linked_into_place_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = mlflow.MlflowClient
    opened = []

    def watched(uri: str):
        opened.append(uri)
        return real(uri)

    monkeypatch.setattr(mlflow, "MlflowClient", watched)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    open_store(uri)
    aside, there = opened
    assert aside.startswith(f"sqlite:///{tmp_path}/.mlflow.db.") and aside.endswith(".new")
    assert there == uri
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "mlflow.db.lock"]


def test_a_store_that_cannot_be_made_aside_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(uri: str):
        Path(uri.removeprefix("sqlite:///")).write_bytes(b"")  # as SQLite would
        raise RuntimeError("disk I/O error")

    monkeypatch.setattr(mlflow, "MlflowClient", broken)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(StoreUnavailable) as raised:
        open_store(uri)
    assert str(raised.value) == (
        f"cannot open the MLflow store {uri}: RuntimeError: disk I/O error"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db.lock"]


def test_a_file_another_process_just_made_is_opened_once_it_stays_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"")  # plain MLflow made the file and is still importing what it needs
    monkeypatch.setattr(opening, "EMPTY_QUIET_S", 1.0)
    started = time.monotonic()
    open_store(f"sqlite:///{db}").search_experiments()
    assert time.monotonic() - started >= 1.0


def test_an_opening_another_process_broke_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow 3.17's migration, raced by a process that takes no lock, fails like this."""
    real = mlflow.MlflowClient
    calls = []

    def raced_once(uri: str):
        calls.append(uri)
        if len(calls) == 1:
            raise AttributeError("dimension_attributes")
        return real(uri)

    monkeypatch.setattr(mlflow, "MlflowClient", raced_once)
    monkeypatch.setattr(opening, "QUIET_S", 0.3)
    uri = sqlite_store(tmp_path)
    open_store(uri).search_experiments()
    assert calls == [uri, uri]
    open_store(uri)  # opened already: MLflow keeps the store
    assert calls == [uri, uri, uri]


def test_a_failure_that_lasts_is_one_line_with_its_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(uri: str):
        raise AttributeError("dimension_attributes")

    monkeypatch.setattr(mlflow, "MlflowClient", broken)
    monkeypatch.setattr(opening, "OPEN_TIMEOUT_S", 2.0)
    monkeypatch.setattr(opening, "QUIET_S", 0.3)
    uri = sqlite_store(tmp_path)
    with pytest.raises(StoreUnavailable) as raised:
        open_store(uri)
    assert re.fullmatch(
        rf"cannot open the MLflow store {re.escape(uri)}: AttributeError: "
        r"dimension_attributes \(tried for [12] s\)",
        str(raised.value),
    ), raised.value


def test_a_tracking_server_opens_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mlflow, "MlflowClient", lambda uri: ("client of", uri))
    assert open_store("http://127.0.0.1:1") == ("client of", "http://127.0.0.1:1")
