"""A fresh database on the local PostgreSQL server (127.0.0.1:5432), dropped afterwards
(tests skip when no server answers), and an `mlflow server` on such a database."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

USER = os.environ.get("PGUSER", "postgres")


@contextlib.contextmanager
def fresh_database(prefix: str = "ftray_test") -> Iterator[str]:
    """The name of a new, empty database; dropped (connections and all) on exit."""
    import psycopg

    name = f"{prefix}_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(
            host="127.0.0.1", port=5432, dbname="postgres", user=USER, autocommit=True
        )
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server on 127.0.0.1:5432 ({exc})")
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        yield name
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextlib.contextmanager
def mlflow_server(
    work: Path, backend_uri: str, timeout: float = 120, env: dict[str, str] | None = None
) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 with `backend_uri` and artifacts proxied into
    work/artifacts; its URI once /health answers. Stopped (its process group) on exit."""
    import requests

    from tests.e2e.ray_helpers import VENV_BIN, free_port, wait_for

    port = free_port()
    process = subprocess.Popen(
        [
            f"{VENV_BIN}/mlflow",
            "server",
            *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
            *("--backend-store-uri", backend_uri),
            *("--serve-artifacts", "--artifacts-destination", (work / "artifacts").as_uri()),
        ],
        cwd=work,
        env={**os.environ, **(env or {})},
        stdout=(work / "server.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def healthy() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok
            except requests.RequestException:
                return False

        wait_for(healthy, timeout, "mlflow server")
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(60)
