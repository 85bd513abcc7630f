"""A fresh database on the local PostgreSQL server (127.0.0.1:5432), dropped afterwards;
tests skip when no server answers."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

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
