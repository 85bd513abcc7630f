"""Rows of a data path in the forms users have them: JSONL, a JSON array, a Parquet file, or a
folder written by `datasets`' `save_to_disk` (a `Dataset`, or a `DatasetDict` whose splits
the task keeps).

Each row comes with a number for messages: its line in JSONL, else its position (from 1) in
the array, the Parquet file or its split. Arrow (Parquet, `datasets`) stores a list of
objects as one struct type, so an object gets every key any of them has, `null` where it had
none: those nulls are dropped, as the row was written without them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftray.config.files import path_problem
from ftray.errors import InputError, Problem
from ftray.tasks.jsonl import read_jsonl

SPLIT_NAMES = {
    "train": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "eval": "validation",
    "test": "test",
}
"""A `DatasetDict`'s split names, as the task's splits."""
DATASET_MARKERS = ("dataset_dict.json", "dataset_info.json")


@dataclass(frozen=True)
class DataRows:
    """The rows of a data path, where each came from, and the files they were read from."""

    rows: list[tuple[int, Any]]
    """(line or position, row)."""
    splits: list[str | None]
    """Per row: the split the data put it in (a `DatasetDict`'s), or None."""
    files: list[Path]
    where: list[str]
    """Per row: the file (or folder/split) a message about it names."""


def is_dataset_folder(path: Path) -> bool:
    return path.is_dir() and any((path / marker).exists() for marker in DATASET_MARKERS)


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def read_rows(path: Path) -> DataRows:
    """The rows of `path`: JSONL, a JSON array (a file whose first character is `[`), a
    `.parquet` file, or a `save_to_disk` folder. InputError at the file for what cannot be
    read."""
    if path.is_dir():
        return _read_dataset_folder(path)
    if path.suffix.lower() == ".parquet":
        rows = [(n, _without_nulls(r)) for n, r in enumerate(_parquet_rows(path), start=1)]
        return DataRows(rows, [None] * len(rows), [path], [str(path)] * len(rows))
    if _starts_with_bracket(path):
        rows = _json_array_rows(path)
        return DataRows(rows, [None] * len(rows), [path], [str(path)] * len(rows))
    rows = read_jsonl(path)
    return DataRows(rows, [None] * len(rows), [path], [str(path)] * len(rows))


def _starts_with_bracket(path: Path) -> bool:
    if path_problem(path) is not None:
        return False
    with path.open("rb") as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def _json_array_rows(path: Path) -> list[tuple[int, Any]]:
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise InputError.at(path, None, f"not UTF-8 ({exc.reason}); save it as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InputError.at(
            path, exc.lineno, f"not valid JSON ({exc.msg} at column {exc.colno})"
        ) from None
    if not isinstance(document, list) or not document:
        raise InputError.at(path, 1, "a JSON array of rows must hold at least one row")
    return list(enumerate(document, start=1))


def _parquet_rows(path: Path) -> list[Any]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow's errors (ArrowInvalid, OSError) say what is wrong
        raise InputError.at(path, None, f"cannot be read as Parquet ({exc})") from None
    if not rows:
        raise InputError.at(path, None, "the Parquet file has no rows")
    return rows


def _read_dataset_folder(path: Path) -> DataRows:
    if not is_dataset_folder(path):
        raise InputError.at(
            path,
            None,
            "is a folder but not one written by datasets' save_to_disk (no dataset_dict.json "
            "or dataset_info.json); name a JSONL, JSON or Parquet file, or such a folder",
        )
    from datasets import DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(path))
    except Exception as exc:  # datasets' own errors name what is missing
        raise InputError.at(path, None, f"cannot be loaded with datasets ({exc})") from None
    parts = loaded.items() if isinstance(loaded, DatasetDict) else [(None, loaded)]
    rows: list[tuple[int, Any]] = []
    splits: list[str | None] = []
    where: list[str] = []
    problems: list[Problem] = []
    for name, dataset in parts:
        split = None
        if name is not None:
            split = SPLIT_NAMES.get(name.lower())
            if split is None:
                problems.append(
                    Problem(
                        str(path),
                        None,
                        f"split '{name}' is not one the task knows; name the splits "
                        f"{', '.join(sorted(set(SPLIT_NAMES)))}",
                    )
                )
                continue
        for number, row in enumerate(dataset.to_list(), start=1):
            rows.append((number, _without_nulls(row)))
            splits.append(split)
            where.append(f"{path}/{name}" if name is not None else str(path))
    if problems:
        raise InputError(problems)
    if not rows:
        raise InputError.at(path, None, "the dataset has no rows")
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return DataRows(rows, splits, files, where)
