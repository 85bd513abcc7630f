"""A task kind defined here, outside ftray, and registered through the public API: the spec
accepts it, validation reports its errors at their lines, and `ftray train` trains it.
No ftray module knows this kind."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import Field, field_validator

from ftray.cli import main
from ftray.config import Spec, TaskConfig
from ftray.config.fields import Float, Int, resolve_path
from ftray.errors import InputError, Problem
from ftray.tasks import EvalCase, Row, Task, register_task, unregister_task
from ftray.tasks.jsonl import read_jsonl, require_data, sha256_of

pytestmark = pytest.mark.slow

WORDS = [
    "apple", "river", "stone", "cloud", "maple", "tiger", "candle", "harbor", "violet", "copper",
    "meadow", "falcon", "lantern", "pebble", "willow", "ember", "glacier", "orchid", "thunder",
    "saddle", "marble", "comet", "hollow", "juniper",
]  # fmt: skip


class EchoConfig(TaskConfig):
    """`task:` of the echo task: repeat the word after `say`."""

    kind: Literal["echo"]
    data: str
    repeat: Int = Field(default=2, ge=1, le=4)
    eval_fraction: Float = Field(default=0.25, gt=0, lt=1)

    _resolve = field_validator("data")(resolve_path)


class EchoTask(Task):
    """Answer `say W` with W repeated `repeat` times."""

    config_class = EchoConfig

    def __init__(self, config: EchoConfig, words: list[str], seed: int, sha: str) -> None:
        self.config = config
        self.dataset_sha256 = sha
        words = list(words)
        random.Random(seed).shuffle(words)
        n_eval = max(1, round(config.eval_fraction * len(words)))
        self.eval_words, self.train_words = words[:n_eval], words[n_eval:]
        self.max_new_tokens = 8 * config.repeat

    @classmethod
    def from_spec(cls, spec: Spec) -> EchoTask:
        path = require_data(spec)
        words, problems = [], []
        for number, row in read_jsonl(path):
            if not isinstance(row, dict) or not isinstance(row.get("word"), str):
                problems.append(Problem(str(path), number, "each row needs a 'word' string"))
            else:
                words.append(row["word"])
        if problems:
            raise InputError(problems)
        return cls(spec.task, words, spec.train.seed, sha256_of([path]))

    def answer(self, word: str) -> str:
        return " ".join([word] * self.config.repeat)

    def row(self, word: str) -> Row:
        return {
            "prompt": [{"role": "user", "content": f"say {word}"}],
            "completion": [{"role": "assistant", "content": self.answer(word)}],
        }

    def corpus(self) -> list[str]:
        return [f"say {w}" for w in WORDS] + [self.answer(w) for w in WORDS]

    def train_rows(self) -> list[Row]:
        return [self.row(w) for w in self.train_words * 4]

    def eval_rows(self) -> list[Row]:
        return [self.row(w) for w in self.eval_words]

    def eval_cases(self) -> list[EvalCase]:
        return [
            EvalCase([{"role": "user", "content": f"say {w}"}], "echo", self.answer(w))
            for w in self.eval_words
        ]

    def score(
        self, cases: list[EvalCase], responses: list[str]
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        starts = [
            r.split(" ")[0] == c.expected.split(" ")[0]
            for c, r in zip(cases, responses, strict=True)
        ]
        samples = [
            {"prompt": c.messages[-1]["content"], "response": r, "correct": ok}
            for c, r, ok in zip(cases, responses, starts, strict=True)
        ]
        return {"echo_accuracy": sum(starts) / len(starts) if starts else 0.0}, samples


SPEC = """\
name: echo-plugin
task:
  kind: echo
  data: words.jsonl
  repeat: 2
model:
  base: tiny
  max_seq_length: 64
lora: {r: 8, alpha: 16}
train: {epochs: 3, learning_rate: 1.0e-2, batch_size: 8, seed: 0}
search:
  objective: echo_accuracy
  mode: max
  space:
    lora.r: {choice: [4, 8]}
"""


@pytest.fixture
def echo_kind():
    register_task(EchoTask)
    try:
        yield
    finally:
        unregister_task("echo")


def write(tmp_path: Path, spec: str = SPEC) -> Path:
    (tmp_path / "words.jsonl").write_text("".join(json.dumps({"word": w}) + "\n" for w in WORDS))
    (tmp_path / "spec.yaml").write_text(spec)
    return tmp_path / "spec.yaml"


def test_the_spec_accepts_the_registered_kind(echo_kind: None, tmp_path: Path, capsys) -> None:
    assert main(["validate", str(write(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok:") and "task echo" in out and "1 search dimension" in out


def test_its_errors_are_reported_at_their_lines(echo_kind: None, tmp_path: Path, capsys) -> None:
    spec = write(
        tmp_path,
        SPEC.replace("repeat: 2", "repeat: 9").replace(
            "objective: echo_accuracy", "objective: trigger_score"
        ),
    )
    assert main(["validate", str(spec)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == [
        f"error: {spec}:5: task.repeat input should be less than or equal to 4 (got 9)"
    ]
    spec = write(tmp_path, SPEC.replace("objective: echo_accuracy", "objective: trigger_score"))
    assert main(["validate", str(spec)]) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert (
        error.startswith(f"error: {spec}:12: objective 'trigger_score'")
        and "echo_accuracy" in error
    )


def test_unknown_kinds_are_listed_with_it(echo_kind: None, tmp_path: Path, capsys) -> None:
    assert main(["validate", str(write(tmp_path, SPEC.replace("kind: echo", "kind: parrot")))]) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error.endswith("task.kind 'parrot' is not one of 'trigger', 'pipeline', 'chat', 'echo'")


def test_without_registration_the_kind_is_refused(tmp_path: Path, capsys) -> None:
    assert main(["validate", str(write(tmp_path))]) == 2
    assert "task.kind 'echo' is not one of 'trigger', 'pipeline', 'chat'" in capsys.readouterr().err


def test_ftray_train_trains_it(echo_kind: None, tmp_path: Path, capsys) -> None:
    spec = write(tmp_path)
    assert main(["train", str(spec), "--out", str(tmp_path / "out")]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(metrics) == {"epoch", "train_loss", "eval_loss", "echo_accuracy"}
    assert metrics["epoch"] == 3 and 0.0 <= metrics["echo_accuracy"] <= 1.0
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").exists()
    epochs = [
        json.loads(line) for line in (tmp_path / "out" / "epochs.jsonl").read_text().splitlines()
    ]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"], "the adapter learned something"
