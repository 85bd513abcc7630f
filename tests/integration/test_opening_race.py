"""Processes opening one new MLflow store at the same moment all get it: ftray's
`open_store` makes it under a lock (beside a SQLite database; PostgreSQL's advisory lock),
a SQLite store in a file of its own linked into place whole, and opens one that a process
taking no lock (plain MLflow) made once it stops changing (tracking/opening.py).

Each round gives two waiting processes, MLflow already imported, a new store's URI at
once. Before `open_store`, ftray opened a store as plain MLflow does: one of two such
processes failed in every round (24 of 24: its migration crashed on the other's tables),
ftray beside plain MLflow in 8 of 28, and one of two on PostgreSQL in 1 of 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.e2e.postgres import USER, fresh_database

pytestmark = pytest.mark.slow

ROUNDS = 8

OPENER = """
import json, sys
from mlflow import MlflowClient
from ftray.tracking.opening import open_store
print("ready", flush=True)
for line in sys.stdin:
    uri = line.strip()
    try:
        if sys.argv[1] == "ftray":
            open_store(uri).search_experiments()
        else:
            MlflowClient(uri).search_experiments()
        print(json.dumps({"ok": True}), flush=True)
    except Exception as exc:
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:600]}), flush=True)
"""


def race(uris: list[str], sides: tuple[str, str]) -> list[list[dict]]:
    """Each round's two outcomes: processes of `sides` ("ftray": open_store, "mlflow":
    MlflowClient) given the round's new store's URI at the same moment; the stderr of an
    ftray side must hold no traceback."""
    openers = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, side],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for side in sides
    ]
    outcomes = []
    try:
        for opener in openers:
            assert opener.stdout.readline().strip() == "ready", opener.stderr.read()
        for uri in uris:
            for opener in openers:
                opener.stdin.write(f"{uri}\n")
            for opener in openers:
                opener.stdin.flush()
            outcomes.append([json.loads(opener.stdout.readline()) for opener in openers])
    finally:
        for opener in openers:
            opener.stdin.close()
        logs = [opener.stderr.read() for opener in openers]
        for opener in openers:
            opener.wait(timeout=60)
    for side, log in zip(sides, logs, strict=True):
        if side == "ftray":
            assert "Traceback" not in log, log
    return outcomes


def new_sqlite_stores(folder: Path, rounds: int = ROUNDS) -> list[str]:
    return [f"sqlite:///{folder / f'round-{index}' / 'mlflow.db'}" for index in range(rounds)]


def test_two_ftray_processes_open_one_new_store_at_once(tmp_path: Path) -> None:
    outcomes = race(new_sqlite_stores(tmp_path, ROUNDS // 2), ("ftray", "ftray"))
    failed = [(i, o) for i, pair in enumerate(outcomes) for o in pair if not o["ok"]]
    assert not failed, f"{len(failed)} failure(s) in {len(outcomes)} rounds: {failed[:3]}"


def test_ftray_opens_a_new_store_that_plain_mlflow_opens_at_the_same_moment(
    tmp_path: Path,
) -> None:
    outcomes = race(new_sqlite_stores(tmp_path), ("ftray", "mlflow"))
    failed = [(i, pair[0]) for i, pair in enumerate(outcomes) if not pair[0]["ok"]]
    assert not failed, f"ftray failed in {len(failed)} of {len(outcomes)} rounds: {failed[:3]}"


def test_two_ftray_processes_open_one_new_postgresql_store_at_once() -> None:
    """The advisory lock: one process migrates, the other waits and finds the tables."""
    with fresh_database("ftray_open") as name:
        outcomes = race([f"postgresql://{USER}@127.0.0.1:5432/{name}"], ("ftray", "ftray"))
    assert all(o["ok"] for pair in outcomes for o in pair), outcomes
