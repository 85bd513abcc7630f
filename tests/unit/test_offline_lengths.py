"""`ftray validate` checks the answers `model.max_seq_length` cuts wherever the tokenizer is on
this machine (the tiny model, a local folder, the Hugging Face cache), as the sweep does,
without importing torch itself; where it is not, validate says in one line that it did not
check them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ftray.cli import main
from ftray.config import load_spec
from ftray.models.tiny import build_tiny_model
from ftray.tasks import load_task
from tests.unit.test_bad_input_corpus import (
    LONG_QUESTION,
    QA_ROWS,
    TRIGGER_SPEC,
    jsonl,
    spec_with,
    trigger,
    validate,
)
from tests.unit.test_model_sources import COMMIT

CUT_ROWS = [*QA_ROWS[:2], {"question": LONG_QUESTION, "answer": "{{name}} knows."}, *QA_ROWS[2:]]


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty Hugging Face cache that must not be downloaded into; returns its folder."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return cache


def tokenizer_elsewhere(tmp_path: Path, cache: Path, where: str) -> str:
    """A copy of the tiny model built from the data with the cut row, as a local folder or
    as a Hub model in the Hugging Face cache: the base to name in the spec."""
    (tmp_path / "built").mkdir()
    spec = trigger(tmp_path / "built", data=jsonl(CUT_ROWS))
    built = build_tiny_model(load_task(load_spec(spec)).corpus())
    if where == "local-folder":
        shutil.copytree(built, tmp_path / "base")
        return str(tmp_path / "base")
    repo = cache / "models--acme--tiny-chat"
    shutil.copytree(built, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return "acme/tiny-chat"


@pytest.mark.parametrize("where", ["local-folder", "hub-cache"])
def test_validate_refuses_a_cut_answer_with_a_tokenizer_on_this_machine(
    tmp_path: Path, offline: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    base = tokenizer_elsewhere(tmp_path, offline, where)
    spec = trigger(tmp_path, spec_with("base: tiny", f"base: {base}"), data=jsonl(CUT_ROWS))
    assert main(validate(spec)) == 2
    _, err = capsys.readouterr()
    [error] = [line for line in err.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: {tmp_path / 'qa.jsonl'}:3: the answer starts at token")
    assert "all of it is cut" in error


def test_a_check_that_passed_is_read_back_without_a_child(
    tmp_path: Path,
    offline: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = trigger(tmp_path, TRIGGER_SPEC)
    assert main(validate(spec)) == 0
    children: list[object] = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: children.append(a))
    assert main(validate(spec)) == 0
    assert children == []
    out, err = capsys.readouterr()
    assert out.count("ok:") == 2 and "answer lengths" not in err


def test_validate_says_when_the_tokenizer_is_not_on_this_machine(
    tmp_path: Path,
    offline: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # For a cluster the base need not be here: validate passes it, and says what it skipped.
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    spec = trigger(tmp_path, spec_with("base: tiny", "base: acme/elsewhere"), data=jsonl(CUT_ROWS))
    assert main(validate(spec)) == 0
    out, err = capsys.readouterr()
    assert out.startswith("ok:")
    [note] = [line for line in err.splitlines() if "answer lengths" in line]
    assert note == (
        "[ftray] warning: answer lengths not checked: the tokenizer of acme/elsewhere is not "
        "available offline (not a local folder, not in the Hugging Face cache); the trials "
        "check them once they load it"
    )


def test_validate_says_when_the_tokenizer_does_not_load(
    tmp_path: Path, offline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    spec = trigger(tmp_path, spec_with("base: tiny", f"base: {folder}"))
    assert main(validate(spec)) == 0
    _, err = capsys.readouterr()
    [note] = [line for line in err.splitlines() if "answer lengths" in line]
    assert note.startswith(
        f"[ftray] warning: answer lengths not checked: the tokenizer of {folder} did not load"
    ), note
