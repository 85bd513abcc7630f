"""The answer-length check for `ftray validate`: rows whose answer `model.max_seq_length`
cuts, checked as `ftray sweep` checks them before Ray starts, wherever the tokenizer is on
this machine (the `tiny` model, built here if need be; a local folder; the Hugging Face
cache), so validate does not say `ok` to data the sweep then refuses.

Tokenising needs transformers, which imports torch (and building the tiny model needs
torch), and validate imports neither: the check runs in a child process
(`python -m ftray.training.offline_lengths`), which records a check that passed. A check
recorded before is read here, without a child. Where the tokenizer is not on this machine
validate says in one line that the lengths were not checked.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ftray
from ftray.config.spec import TINY_MODEL, Spec
from ftray.errors import InputError, Problem
from ftray.log import QUIET, configure, get_logger
from ftray.models.sources import local_model_folder
from ftray.models.tiny import cache_root, tiny_model_built, tiny_model_key
from ftray.tasks import Task
from ftray.training.lengths import length_check_record, recorded_length_check

log = get_logger()
UNCHECKED = "answer lengths not checked"


def check_answer_lengths_offline(
    spec_path: Path, overrides: Sequence[str], spec: Spec, task: Task, max_length: int
) -> None:
    """The answer-length check at `max_length` tokens of the spec at `spec_path` (with its
    `--set` overrides; `spec` and `task` are what they load to): InputError at every row
    whose answer is cut away; a warning for answers cut in part, and one saying so when
    the check could not run."""
    folder = tokenizer_folder(spec, task)
    if folder is not None:
        done, warning = recorded_length_check(length_check_record(task, folder, max_length))
        if done:
            if warning:
                log.warning(warning)
            return
    elif spec.model.base != TINY_MODEL:
        log.warning(
            f"{UNCHECKED}: the tokenizer of {spec.model.base} is not available offline (not "
            "a local folder, not in the Hugging Face cache); the trials check them once "
            "they load it"
        )
        return
    found = checked_in_child(spec_path, overrides, max_length)
    if found.get("problems"):
        raise InputError(
            [Problem(file, line, message) for file, line, message in found["problems"]]
        )
    if found.get("warning"):
        log.warning(found["warning"])
    if found.get("unchecked"):
        log.warning(f"{UNCHECKED}: {found['unchecked']}")


def tokenizer_folder(spec: Spec, task: Task) -> Path | None:
    """The folder of the base's tokenizer on this machine: the tiny model's when it is built,
    a local folder, a Hugging Face cache snapshot; None otherwise."""
    if spec.model.base == TINY_MODEL:
        corpus = task.corpus()
        return cache_root() / tiny_model_key(corpus) if tiny_model_built(corpus) else None
    return local_model_folder(spec.model.base, spec.model.revision)


def checked_in_child(spec_path: Path, overrides: Sequence[str], max_length: int) -> dict[str, Any]:
    """What the check found, run by `main` in a child process that imports this same ftray:
    `problems` ([file, line, message] of every row cut away), `warning`, `unchecked`."""
    command = [sys.executable, "-m", __name__, str(spec_path), "--max-length", str(max_length)]
    for override in overrides:
        command += ["--set", override]
    package_root = str(Path(ftray.__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path}
    )
    lines = done.stdout.strip().splitlines()
    try:
        found = json.loads(lines[-1]) if done.returncode == 0 and lines else None
    except ValueError:
        found = None
    if not isinstance(found, dict):
        said = [line for line in done.stderr.splitlines() if line.strip()]
        cause = said[-1].strip() if said else f"the check exited {done.returncode}"
        return {"unchecked": f"the check failed: {cause}"}
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """The child: load the spec and its task, build the tiny model if it is the base, run
    the check; print what it found as one JSON object on the last stdout line."""
    from ftray.config import load_spec
    from ftray.tasks import load_task
    from ftray.training.trial import answer_lengths_locally, prepare_base

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("spec", type=Path)
    parser.add_argument("--max-length", type=int, required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    configure(QUIET)
    spec = load_spec(args.spec, args.overrides)
    task = load_task(spec)
    try:
        warning, unchecked = answer_lengths_locally(
            spec, task, prepare_base(spec, task), args.max_length
        )
    except InputError as exc:
        found: dict[str, Any] = {"problems": [[p.file, p.line, p.message] for p in exc.problems]}
    else:
        found = {"warning": warning, "unchecked": unchecked}
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
