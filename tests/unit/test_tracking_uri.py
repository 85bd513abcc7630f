"""A local MLflow store's path in a tracking URI, made absolute against a folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftray.config.tracking_uri import absolute_store_uri, local_store_path

BASE = Path("/specs/folder")


@pytest.mark.parametrize(
    ("uri", "path", "absolute"),
    [
        ("sqlite:///mlflow.db", "mlflow.db", "sqlite:////specs/folder/mlflow.db"),
        ("sqlite:///../db/m.db", "../db/m.db", "sqlite:////specs/db/m.db"),
        ("sqlite:////abs/m.db", "/abs/m.db", "sqlite:////abs/m.db"),
        ("sqlite:///m.db?timeout=30", "m.db", "sqlite:////specs/folder/m.db?timeout=30"),
        ("sqlite:///my%20runs.db", "my runs.db", "sqlite:////specs/folder/my runs.db"),
        ("file:./mlruns", "mlruns", "file:///specs/folder/mlruns"),
        ("file:///abs/mlruns", "/abs/mlruns", "file:///abs/mlruns"),
        ("mlruns", "mlruns", "/specs/folder/mlruns"),
        ("/abs/mlruns", "/abs/mlruns", "/abs/mlruns"),
    ],
)
def test_a_local_store_is_made_absolute_against_the_folder(
    uri: str, path: str, absolute: str
) -> None:
    assert local_store_path(uri) == Path(path)
    assert absolute_store_uri(uri, BASE) == absolute


@pytest.mark.parametrize(
    "uri",
    [
        "http://mlflow.internal:5000",
        "https://mlflow.example.com",
        "postgresql://ftray@db/mlflow",
        "mysql+pymysql://u@h/db",
        "databricks",
        "databricks://profile",
        "databricks-uc",
        "sqlite://",
        "sqlite:///:memory:",
        "file://otherhost/mlruns",
    ],
)
def test_servers_and_other_databases_are_left_as_they_are(uri: str) -> None:
    assert local_store_path(uri) is None
    assert absolute_store_uri(uri, BASE) == uri
