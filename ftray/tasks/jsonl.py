"""Reading JSONL data files with a precise error for every bad line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ftray.config.spec import Spec
from ftray.errors import InputError, Problem

MAX_PROBLEMS = 20


def require_data(spec: Spec) -> Path:
    """`task.data` as a path; a missing one is reported at the spec line that names it."""
    path = Path(spec.task.data)
    if not path.exists():
        raise InputError(
            [
                spec.source.problem(
                    ("task", "data"),
                    f"task.data {path} not found; fix the path (relative paths are relative to the spec file)",
                )
            ]
        )
    return path


def read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line; InputError for a missing, empty or broken file."""
    if not path.exists():
        raise InputError.at(
            path,
            None,
            "data file not found; check task.data in the spec (paths are relative to the spec file)",
        )
    if path.is_dir():
        raise InputError.at(path, None, "expected a JSONL file, found a folder")
    rows: list[tuple[int, Any]] = []
    problems: list[Problem] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                problems.append(
                    Problem(
                        str(path),
                        number,
                        f"not valid JSON ({exc.msg} at column {exc.colno}); each line must be one JSON object",
                    )
                )
    if problems:
        raise InputError(problems[:MAX_PROBLEMS])
    if not rows:
        raise InputError.at(path, 1, "the data file is empty; add one JSON object per line")
    return rows


def check_keys(
    path: Path, number: int, row: Any, required: set[str], optional: set[str] = frozenset()
) -> Problem | None:
    """A problem if `row` is not an object with exactly the required (and allowed optional) keys."""
    if not isinstance(row, dict):
        return Problem(
            str(path), number, f"each line must be a JSON object, got {type(row).__name__}"
        )
    missing = sorted(required - row.keys())
    extra = sorted(row.keys() - required - optional)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(repr(k) for k in missing)}")
        if extra:
            parts.append(f"unexpected {', '.join(repr(k) for k in extra)}")
        want = ", ".join(repr(k) for k in sorted(required))
        return Problem(str(path), number, f"{'; '.join(parts)}: each row needs the keys {want}")
    return None


def sha256_of(paths: list[Path]) -> str:
    """Content hash of the data files, in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()
