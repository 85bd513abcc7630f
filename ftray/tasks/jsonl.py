"""Reading JSONL data files with a precise error for every bad line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ftray.config.files import path_problem, utf8_problem
from ftray.config.spec import Spec
from ftray.errors import InputError, Problem


def require_data(
    spec: Spec, folder_ok: bool = False, path: str | None = None, field: str = "task.data"
) -> Path:
    """The data path a spec names (`task.data`, or `path` given at the dotted `field`); a
    missing, looping or wrong kind of path is reported at the spec line that names it."""
    data = Path(spec.task.data if path is None else path)
    reason = path_problem(data, folder_ok=folder_ok)
    if reason == "not found":
        reason = "not found; fix the path (relative paths are relative to the spec file)"
    elif reason == "is a folder, not a file":
        reason = f"is a folder; a {spec.task.kind} task reads one JSONL file: name it"
    if reason is not None:
        loc = tuple(field.split("."))
        raise InputError([spec.source.problem(loc, f"{field} {data} {reason}")])
    return data


class _RepeatedKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _RepeatedKey(key)
        out[key] = value
    return out


def read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line; InputError for a missing, empty
    or broken file, a line that is not UTF-8 or not JSON, or an object with a key twice."""
    reason = path_problem(path)
    if reason == "not found":
        reason = (
            "data file not found; check task.data in the spec (paths are relative to the spec file)"
        )
    elif reason == "is a folder, not a file":
        reason = "expected a JSONL file, found a folder"
    if reason is not None:
        raise InputError.at(path, None, reason)
    rows: list[tuple[int, Any]] = []
    problems: list[Problem] = []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        not_utf8 = utf8_problem(path, raw, number)
        if not_utf8 is not None:
            problems.append(not_utf8)
            continue
        line = raw.decode("utf-8")
        if number == 1:
            line = line.removeprefix("\ufeff")
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line, object_pairs_hook=_unique_keys)))
        except json.JSONDecodeError as exc:
            problems.append(
                Problem(
                    str(path),
                    number,
                    f"not valid JSON ({exc.msg} at column {exc.colno}); each line must be one JSON object",
                )
            )
        except _RepeatedKey as exc:
            problems.append(
                Problem(
                    str(path),
                    number,
                    f"key '{exc}' appears twice in one object; JSON would keep only the last: "
                    "remove one",
                )
            )
    if problems:
        raise InputError(problems)
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
        may = ", ".join(repr(k) for k in sorted(optional))
        also = f" and may have {may}" if may else ""
        return Problem(
            str(path), number, f"{'; '.join(parts)}: each row needs the keys {want}{also}"
        )
    return None


def sha256_of(paths: list[Path]) -> str:
    """Content hash of the data files, in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()
