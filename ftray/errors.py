"""Input errors that point at a file and line, so the CLI can print them without a traceback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the user's input, located as precisely as we can."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.message}"


class InputError(Exception):
    """Bad user input (spec, data, arguments): exit code 2, one `error:` line per problem."""

    def __init__(self, problems: list[Problem]) -> None:
        if not problems:
            raise ValueError("InputError needs at least one problem")
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    @classmethod
    def at(cls, file: str | Path, line: int | None, message: str) -> InputError:
        """An error with a single problem."""
        return cls([Problem(str(file), line, message)])
