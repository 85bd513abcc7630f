"""Reading the user's text files (spec, data, schemas, tools): UTF-8 only, and every way a
path can fail (missing, a folder, a symlink loop, unreadable, a byte that is not UTF-8)
said in words, at the file and, where there is one, the line."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

from ftray.errors import InputError, Problem


def path_problem(path: Path, folder_ok: bool = False) -> str | None:
    """Why `path` cannot be read as a file (or as a folder, with `folder_ok`); None when it can."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "not found"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symlink loop (a link that leads back to itself); point it at a real file"
        return f"cannot be opened ({exc.strerror})"
    if stat.S_ISDIR(mode) and not folder_ok:
        return "is a folder, not a file"
    if not stat.S_ISDIR(mode) and not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return None


def utf8_problem(path: Path, data: bytes, first_line: int = 1) -> Problem | None:
    """A problem at the first byte of `data` that is not UTF-8 (None when all of it is)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + data.count(b"\n", 0, exc.start)
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        return Problem(
            str(path),
            line,
            f"byte 0x{data[exc.start]:02x} at column {column} is not UTF-8; "
            "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
        )
    return None


def read_text(path: Path, what: str = "file") -> str:
    """The UTF-8 text of `path` (a leading byte-order mark dropped); InputError otherwise."""
    reason = path_problem(path)
    if reason is not None:
        raise InputError.at(path, None, f"{what} {reason}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError.at(path, None, f"{what} cannot be read ({exc.strerror})") from None
    problem = utf8_problem(path, data)
    if problem is not None:
        raise InputError([problem])
    return data.decode("utf-8").removeprefix("\ufeff")


def resolved(path: Path) -> Path:
    """`path` made absolute with symlinks resolved; a symlink loop stays unresolved (so the
    check that reads it can say so) instead of raising."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: Python < 3.13 on a symlink loop
        return Path(os.path.abspath(path))


def sha256_of_file(path: Path) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
