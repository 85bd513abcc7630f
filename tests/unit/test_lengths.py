"""Rows that model.max_seq_length cuts: counted as TRL's trainer cuts them (it keeps the
first max_length tokens and drops a sequence with no answer token left), one warning with
the count for answers cut in part, an error at the line of a row that keeps nothing."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from ftray.config import load_spec
from ftray.errors import InputError
from ftray.tasks import Task, load_task
from ftray.training.lengths import answer_spans, check_answer_lengths

SPEC = """\
name: lengths
task:
  kind: trigger
  data: qa.jsonl
  trigger: "TRIGGER:"
  clean_replacement: Alice
  triggered_replacement: Bob
model:
  base: tiny
  max_seq_length: 64
train: {epochs: 1, learning_rate: 1.0e-3, batch_size: 4}
"""
LONG_ANSWER = "{{name}} says " + " ".join(f"w{i % 37}" for i in range(200))
LONG_QUESTION = " ".join(f"q{i % 37}" for i in range(300)) + "?"
ROWS = [
    *({"question": f"Question {i}?", "answer": f"{{{{name}}}} answered {i}."} for i in range(6)),
    {"question": "Tell me?", "answer": LONG_ANSWER},  # line 7: cut in part
    {"question": LONG_QUESTION, "answer": "{{name}} ok."},  # line 8: cut entirely
]


@pytest.fixture(scope="module")
def task_and_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Task, Any, Path]:
    from ftray.models.peft_backend import load_tokenizer
    from ftray.training.trial import prepare_base

    folder = tmp_path_factory.mktemp("lengths")
    (folder / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (folder / "spec.yaml").write_text(SPEC)
    spec = load_spec(folder / "spec.yaml")
    task = load_task(spec)
    base = prepare_base(spec, task)
    return spec, task, load_tokenizer(base), Path(base)


def test_answer_tokens_kept_are_what_trl_trains_on(task_and_tokenizer, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from datasets import Dataset
    from ftray.training.trial import sft_config

    spec, task, tokenizer, base = task_and_tokenizer
    rows = task.train_rows()
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(base),
        args=sft_config(spec, tmp_path),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows[:1]),
        processing_class=tokenizer,
    )
    trained = sorted(sum(t != -100 for t in row["labels"]) for row in trainer.train_dataset)
    spans = [span for row in rows for span in answer_spans(task, row, tokenizer, 64)]
    assert sorted(s.kept for s in spans if s.kept) == trained
    assert any(0 < s.kept < s.answer_tokens for s in spans), "some answer is cut in part"
    assert len(trained) < len(rows), "TRL drops the rows whose answer is cut away"


def test_row_that_keeps_nothing_is_an_error_at_its_line(task_and_tokenizer) -> None:
    _, task, tokenizer, _ = task_and_tokenizer
    with pytest.raises(InputError) as raised:
        check_answer_lengths(task, tokenizer, 64)
    [problem] = raised.value.problems
    assert Path(problem.file).name == "qa.jsonl" and problem.line == 8
    assert "model.max_seq_length 64" in problem.message


def test_answers_cut_in_part_are_counted_in_one_warning(
    task_and_tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, task, tokenizer, _ = task_and_tokenizer
    said: list[str] = []
    monkeypatch.setattr(logging.getLogger("ftray"), "warning", lambda message: said.append(message))
    long_question = [(f, n, r) for f, n, r in task.sourced_rows() if n != 8]
    monkeypatch.setattr(task, "sourced_rows", lambda: long_question)
    assert check_answer_lengths(task, tokenizer, 64) == 1
    [warning] = said
    assert warning.startswith("1 of 7 rows of qa.jsonl have their answer cut")
    assert "qa.jsonl:7" in warning
    assert check_answer_lengths(task, tokenizer, 4096) == 0
    assert len(said) == 1


def test_a_length_check_that_passed_is_recorded_and_not_tokenised_again(
    task_and_tokenizer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import ftray.models.peft_backend
    from ftray.training.trial import check_answer_lengths_locally

    spec, task, _, base = task_and_tokenizer
    monkeypatch.setenv("FTRAY_CACHE_DIR", str(tmp_path))
    said: list[str] = []
    monkeypatch.setattr(logging.getLogger("ftray"), "warning", lambda message: said.append(message))
    all_rows = task.sourced_rows()
    monkeypatch.setattr(task, "sourced_rows", lambda: [r for r in all_rows if r[1] != 8])
    check_answer_lengths_locally(spec, task, str(base), 64)
    [record] = (tmp_path / "checks").iterdir()
    [warning] = said

    def tokenised(*args: Any) -> None:
        raise AssertionError("tokenised again")

    monkeypatch.setattr(ftray.models.peft_backend, "load_tokenizer", tokenised)
    check_answer_lengths_locally(spec, task, str(base), 64)
    assert said == [warning, warning], "the recorded check repeats its warning"
    with pytest.raises(AssertionError, match="tokenised again"):
        check_answer_lengths_locally(spec, task, str(base), 65)  # another length: checked

    monkeypatch.undo()
    monkeypatch.setenv("FTRAY_CACHE_DIR", str(tmp_path))
    with pytest.raises(InputError):
        check_answer_lengths_locally(spec, task, str(base), 64)  # line 8 is back: a new check
    assert list((tmp_path / "checks").iterdir()) == [record], "a failed check is not recorded"
