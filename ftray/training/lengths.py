"""Rows that `model.max_seq_length` cuts: the trainer keeps the first `max_seq_length`
tokens of every sequence and silently drops a sequence with no answer token left, so a
row whose answer is cut away entirely trains nothing. Checked where the tokenizer is: by
`ftray train` and every trial, by `ftray sweep` before Ray starts and by `ftray validate`
when it is on this machine (`training.trial.answer_lengths_locally`,
`training.offline_lengths`)."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftray.errors import InputError, Problem
from ftray.log import get_logger
from ftray.tasks.base import Row, Task


@dataclass(frozen=True)
class AnswerSpan:
    """One training sequence: how long it is, where its first answer token is, and how many
    answer tokens it has and keeps within `max_length`."""

    length: int
    first_answer: int
    answer_tokens: int
    kept: int


def _token_ids(
    tokenizer: Any, messages: list[Any], tools: Any, generation_prompt: bool
) -> list[int]:
    kwargs = {"tools": tools} if tools else {}
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=generation_prompt, **kwargs
    )
    return list(encoded["input_ids"])


def _completion_mask(tokenizer: Any, row: Row) -> list[int]:
    """TRL's completion mask of a prompt-completion conversation: the completion starts
    where the tokenised prompt (with the generation prompt) and the whole row diverge."""
    tools = row.get("tools")
    prompt = _token_ids(tokenizer, row["prompt"], tools, True)
    whole = _token_ids(tokenizer, row["prompt"] + row["completion"], tools, False)
    common = 0
    for token, other in zip(prompt, whole, strict=False):
        if token != other:
            break
        common += 1
    return [0] * common + [1] * (len(whole) - common)


def answer_spans(task: Task, row: Row, tokenizer: Any, max_length: int) -> list[AnswerSpan]:
    """The sequences the trainer makes of `row`, each with its answer tokens kept by truncation
    to `max_length` tokens (TRL keeps the start)."""
    spans = []
    for sequence in task.trainer_rows([row], tokenizer):
        mask = sequence.get("assistant_masks") or sequence.get("completion_mask")
        if mask is None and "prompt" in sequence and "completion" in sequence:
            mask = _completion_mask(tokenizer, sequence)
        if not mask:
            continue
        first = mask.index(1) if 1 in mask else len(mask)
        spans.append(AnswerSpan(len(mask), first, sum(mask), sum(mask[:max_length])))
    return spans


# The files of a tokenizer folder that decide how text is tokenised and templated.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


def answer_length_findings(task: Task, tokenizer: Any, max_length: int) -> tuple[int, str | None]:
    """The number of data rows whose answer `max_length` cuts in part, and the warning that
    says so (None when no row is cut); InputError at every row where nothing of an answer
    survives."""
    cut: dict[tuple[str, int], None] = {}
    lost: list[Problem] = []
    lost_rows: set[tuple[str, int]] = set()
    for file, line, row in task.sourced_rows():
        for span in answer_spans(task, row, tokenizer, max_length):
            if span.answer_tokens and span.kept == 0 and (file, line) not in lost_rows:
                lost_rows.add((file, line))
                lost.append(
                    Problem(
                        file,
                        line,
                        f"the answer starts at token {span.first_answer + 1} of {span.length}, past "
                        f"model.max_seq_length {max_length}: all of it is cut and the row trains "
                        "nothing; shorten the prompt or raise model.max_seq_length",
                    )
                )
            elif span.kept < span.answer_tokens:
                cut[(file, line)] = None
    if lost:
        raise InputError(lost)
    if not cut:
        return 0, None
    total = len({(file, line) for file, line, _ in task.sourced_rows()})
    (file, line), *_ = cut
    return len(cut), (
        f"{len(cut)} of {total} rows of {Path(file).name} have their answer cut by "
        f"model.max_seq_length {max_length} (the first at {file}:{line}); the cut tokens "
        "are not trained: raise model.max_seq_length or shorten those rows"
    )


def check_answer_lengths(task: Task, tokenizer: Any, max_length: int) -> int:
    """The number of data rows whose answer `max_length` cuts in part (logged as one
    warning); InputError at every row where nothing of an answer survives."""
    cut, warning = answer_length_findings(task, tokenizer, max_length)
    if warning:
        get_logger().warning(warning)
    return cut


def length_check_key(task: Task, tokenizer_folder: Path, max_length: int) -> str:
    """A hash of everything the answer-length check's outcome depends on: the code that
    renders and checks rows, the task's settings and rows (with their files and lines, which
    its messages name), the tokenizer's files and the length."""
    digest = hashlib.sha256()
    for source in (inspect.getsourcefile(answer_spans), inspect.getsourcefile(type(task))):
        digest.update(Path(source or "").read_bytes() if source else b"")
    config = getattr(task, "config", None)
    payload = {
        "kind": f"{type(task).__module__}.{type(task).__qualname__}",
        "config": repr(config),
        "rows": task.sourced_rows(),
        "max_length": max_length,
    }
    digest.update(json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str).encode())
    for name in TOKENIZER_FILES:
        file = tokenizer_folder / name
        digest.update(b"\0" + name.encode() + b"\0")
        if file.is_file():
            digest.update(file.read_bytes())
    return digest.hexdigest()[:24]


def length_check_record(task: Task, tokenizer_folder: Path, max_length: int) -> Path:
    """Where a check that passed is recorded, under the cache's `checks/`, named by everything
    its outcome depends on (`length_check_key`)."""
    from ftray.models.tiny import checks_cache_root

    key = length_check_key(task, tokenizer_folder, max_length)
    return checks_cache_root() / f"answer-lengths-{key}.json"


def recorded_length_check(record: Path) -> tuple[bool, str | None]:
    """(whether the check at `record` passed before, the warning it gave then)."""
    try:
        warning = json.loads(record.read_text(encoding="utf-8"))["warning"]
    except (OSError, ValueError, KeyError, TypeError):
        return False, None
    return True, warning if isinstance(warning, str) else None


def record_length_check(record: Path, warning: str | None) -> None:
    """Record a check that passed (and its warning), so the same data, tokenizer and length
    are not tokenised again; written whole or not at all (processes check side by side)."""
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        staging = record.with_name(f".{record.name}.{os.getpid()}")
        staging.write_text(json.dumps({"warning": warning}), encoding="utf-8")
        staging.replace(record)
    except OSError:
        pass  # a cache that cannot be written only costs the check next time
