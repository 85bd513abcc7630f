"""Every benchmark command the README, the docs and the Makefile name still exists as
written: its script answers `--help`, and every option the command uses is one the script
takes. A renamed script or option fails here, not in a reader's terminal."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

# `bench/x.py --a 1` in backticks, or on a line of a code block or the Makefile, with
# environment assignments or an interpreter before it.
COMMAND = re.compile(r"(?:^|[`\s])((?:\S*python\S*\s+)?bench/\w+\.py(?:[^`\n]*))")


def documents() -> list[Path]:
    found = [ROOT / "README.md", ROOT / "bench" / "README.md", ROOT / "Makefile"]
    return found + sorted((ROOT / "docs").rglob("*.md"))


def commands_in(text: str) -> list[tuple[str, list[str]]]:
    """(script, options) of each benchmark command in `text`; a command continued on the
    next line with a backslash is read whole."""
    text = re.sub(r"\\\n\s*", " ", text)
    found = []
    for match in COMMAND.finditer(text):
        words = match.group(1).split()
        at = next(i for i, word in enumerate(words) if word.startswith("bench/"))
        script, rest = words[at], " ".join(words[at + 1 :])
        rest = rest.replace("[", " ").replace("]", " ")  # `[--trials 8 ...]`: optional parts
        try:
            args = shlex.split(rest)
        except ValueError:  # an unbalanced quote in prose after the command
            args = rest.split()
        found.append((script, [a.split("=")[0] for a in args if a.startswith("--")]))
    return found


def all_commands() -> dict[str, set[str]]:
    """Each script named anywhere, with every option any command gives it."""
    options: dict[str, set[str]] = {}
    for path in documents():
        for script, flags in commands_in(path.read_text(encoding="utf-8")):
            options.setdefault(script, set()).update(flags)
    return options


def test_the_commands_are_found() -> None:
    commands = all_commands()
    # The table's figures: every script in bench/ that prints one is named somewhere.
    named = {Path(script).name for script in commands}
    scripts = {p.name for p in (ROOT / "bench").glob("*.py") if "__doc__" in p.read_text()}
    assert scripts and scripts <= named, scripts - named
    assert "--warm" in commands["bench/vs_handwritten.py"]


def test_commands_in_text_are_parsed_with_their_options() -> None:
    text = (
        "| x | `bench/asha_savings.py --seeds 0 1 --prune default:2 --set 'a=b c'` |\n"
        "    .venv/bin/python bench/sweep_overhead.py [--trials 8 --epochs 6] \\\n"
        "        --warm\n"
        "MALLOC_MMAP_THRESHOLD_=131072 .venv/bin/python bench/memory.py\n"
    )
    assert commands_in(text) == [
        ("bench/asha_savings.py", ["--seeds", "--prune", "--set"]),
        ("bench/sweep_overhead.py", ["--trials", "--epochs", "--warm"]),
        ("bench/memory.py", []),
    ]


@pytest.mark.parametrize("script", sorted(all_commands()))
def test_each_named_command_answers_help_and_takes_its_options(script: str) -> None:
    path = ROOT / script
    assert path.is_file(), f"{script} is named in the docs but does not exist"
    result = subprocess.run(
        [sys.executable, str(path), "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    taken = set(re.findall(r"--[\w-]+", result.stdout))
    missing = all_commands()[script] - taken - {"--help"}
    assert not missing, f"{script} is documented with {sorted(missing)}, which it does not take"
