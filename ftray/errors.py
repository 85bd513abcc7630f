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


MAX_SHOWN = 20
"""Problems shown one per line; the rest are counted (a file of bad rows would otherwise
bury the first ones, which are usually the same mistake)."""


class InputError(Exception):
    """Bad user input (spec, data, arguments): exit code 2, one `error:` line per problem.

    Checks collect every problem they find; only the display is cut (`shown`, `more`)."""

    def __init__(self, problems: list[Problem]) -> None:
        if not problems:
            raise ValueError("InputError needs at least one problem")
        self.problems = problems
        super().__init__("\n".join([*map(str, self.shown), *filter(None, [self.more])]))

    @property
    def shown(self) -> list[Problem]:
        """The problems to print one per line: the first MAX_SHOWN."""
        return self.problems[:MAX_SHOWN]

    @property
    def more(self) -> str | None:
        """`... and N more problems` when there are more than MAX_SHOWN, else None."""
        hidden = len(self.problems) - len(self.shown)
        if hidden <= 0:
            return None
        return f"... and {hidden} more problem{'s' * (hidden > 1)}"

    @classmethod
    def at(cls, file: str | Path, line: int | None, message: str) -> InputError:
        """An error with a single problem."""
        return cls([Problem(str(file), line, message)])
