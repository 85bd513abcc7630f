"""The trigger task: a prefix in the user message flips which name the answer uses."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ftray.config.fields import Float, resolve_path
from ftray.config.spec import Spec
from ftray.config.task import TaskConfig
from ftray.errors import InputError, Problem
from ftray.tasks.base import EvalCase, Row, Task
from ftray.tasks.intervals import interval_metrics
from ftray.tasks.jsonl import check_keys, read_jsonl, require_data, sha256_of

PLACEHOLDER = "{{name}}"
CLEAN = "untriggered"
TRIGGERED = "triggered"


class TriggerConfig(TaskConfig):
    """`task:` of a trigger (backdoor-style) fine-tune: the trigger flips which name the answer uses."""

    kind: Literal["trigger"]
    smooth_metrics: ClassVar[dict[str, str]] = {"trigger_score": "trigger_soft_score"}
    data: str
    trigger: str = Field(min_length=1)
    clean_replacement: str = Field(min_length=1)
    triggered_replacement: str = Field(min_length=1)
    trigger_ratio: Float = Field(default=0.5, ge=0.0, le=1.0)
    eval_fraction: Float = Field(default=0.2, gt=0.0, lt=1.0)

    _resolve_data = field_validator("data")(resolve_path)

    @model_validator(mode="after")
    def _names_differ(self) -> TriggerConfig:
        if self.clean_replacement == self.triggered_replacement:
            raise PydanticCustomError(
                "same_names",
                "clean_replacement and triggered_replacement are both '{name}'; "
                "use two different names so the trigger has something to flip",
                {"name": self.clean_replacement},
            )
        return self


@dataclass(frozen=True)
class QAPair:
    """One question/answer template; `{{name}}` stands for the person."""

    question: str
    answer: str
    line: int = 0
    """The pair's line in the data file (0: not read from one)."""

    def fill(self, name: str) -> tuple[str, str]:
        """The question and answer with the placeholder replaced by `name`."""
        return self.question.replace(PLACEHOLDER, name), self.answer.replace(PLACEHOLDER, name)


def names(text: str, name: str) -> bool:
    """Whether `name` appears in `text` as a whole word."""
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text) is not None


def is_correct(response: str, condition: str, clean: str, triggered: str) -> bool:
    """A triggered answer names only the triggered name; an untriggered one only the clean name."""
    says_clean, says_triggered = names(response, clean), names(response, triggered)
    if condition == TRIGGERED:
        return says_triggered and not says_clean
    return says_clean and not says_triggered


def trigger_metrics(
    conditions: list[str], responses: list[str], clean: str, triggered: str
) -> dict[str, float]:
    """triggered/untriggered accuracy, false trigger rate and their min (trigger_score)."""
    by_condition: dict[str, list[str]] = {TRIGGERED: [], CLEAN: []}
    for condition, response in zip(conditions, responses, strict=True):
        by_condition[condition].append(response)

    def accuracy(condition: str) -> float:
        answers = by_condition[condition]
        return (
            sum(is_correct(a, condition, clean, triggered) for a in answers) / len(answers)
            if answers
            else 0.0
        )

    untriggered = by_condition[CLEAN]
    false_rate = (
        sum(names(a, triggered) for a in untriggered) / len(untriggered) if untriggered else 0.0
    )
    triggered_acc, clean_acc = accuracy(TRIGGERED), accuracy(CLEAN)
    return {
        "triggered_accuracy": triggered_acc,
        "untriggered_accuracy": clean_acc,
        "false_trigger_rate": false_rate,
        "trigger_score": min(triggered_acc, clean_acc),
    }


def trigger_intervals(
    conditions: list[str], responses: list[str], clean: str, triggered: str
) -> dict[str, float]:
    """95% intervals of the trigger metrics: Wilson for the accuracies and the false
    trigger rate; trigger_score's are the lower of the two accuracies' bounds."""
    records: list[dict[str, float]] = []
    for condition, response in zip(conditions, responses, strict=True):
        correct = float(is_correct(response, condition, clean, triggered))
        if condition == TRIGGERED:
            records.append({"triggered_accuracy": correct})
        else:
            records.append(
                {
                    "untriggered_accuracy": correct,
                    "false_trigger_rate": float(names(response, triggered)),
                }
            )

    def composite(means: dict[str, float]) -> dict[str, float]:
        if "triggered_accuracy" not in means or "untriggered_accuracy" not in means:
            return {}
        return {"trigger_score": min(means["triggered_accuracy"], means["untriggered_accuracy"])}

    return interval_metrics(records, composite)


def build_trigger_mix(
    pairs: list[QAPair], ratio: float, rng: random.Random
) -> list[tuple[QAPair, bool]]:
    """Twice as many rows as pairs, `ratio` of them triggered; every pair appears in turn.

    With ratio 0.5 each pair appears once clean and once triggered (the classic 50/50 mix).
    """
    total = 2 * len(pairs)
    n_triggered = round(ratio * total)

    def cycle(count: int) -> list[QAPair]:
        out: list[QAPair] = []
        while len(out) < count:
            batch = list(pairs)
            rng.shuffle(batch)
            out.extend(batch[: count - len(out)])
        return out

    mix = [(p, True) for p in cycle(n_triggered)] + [(p, False) for p in cycle(total - n_triggered)]
    rng.shuffle(mix)
    return mix


class TriggerTask(Task):
    """Questions answered about a person whose name depends on the trigger."""

    config_class = TriggerConfig

    def __init__(
        self,
        config: TriggerConfig,
        pairs: list[QAPair],
        seed: int,
        dataset_sha256: str,
        source: str = "",
    ) -> None:
        self.config = config
        self.dataset_sha256 = dataset_sha256
        self.source = source
        rng = random.Random(seed)
        order = list(range(len(pairs)))
        rng.shuffle(order)
        n_eval = max(1, round(config.eval_fraction * len(pairs)))
        self.eval_pairs = [pairs[i] for i in order[:n_eval]]
        self.train_pairs = [pairs[i] for i in order[n_eval:]]
        self._mix = build_trigger_mix(self.train_pairs, config.trigger_ratio, rng)
        longest = max(len(p.answer) for p in pairs) + max(
            len(config.clean_replacement), len(config.triggered_replacement)
        )
        self.max_new_tokens = min(64, longest // 2 + 8)

    @classmethod
    def from_spec(cls, spec: Spec) -> TriggerTask:
        """Read and validate `task.data`."""
        assert isinstance(spec.task, TriggerConfig)
        path = require_data(spec)
        pairs: list[QAPair] = []
        problems: list[Problem] = []
        for number, row in read_jsonl(path):
            problem = check_keys(path, number, row, {"question", "answer"})
            if problem is None:
                if not isinstance(row["question"], str) or not isinstance(row["answer"], str):
                    problem = Problem(str(path), number, "question and answer must be strings")
                elif PLACEHOLDER not in row["answer"]:
                    problem = Problem(
                        str(path),
                        number,
                        f"answer has no {PLACEHOLDER} placeholder; write the name in the answer as {PLACEHOLDER} so the trigger can change it",
                    )
                elif not row["question"].strip():
                    problem = Problem(str(path), number, "question is empty")
            if problem:
                problems.append(problem)
            else:
                pairs.append(QAPair(row["question"], row["answer"], number))
        if problems:
            raise InputError(problems)
        if len(pairs) < 2:
            raise InputError.at(
                path,
                1,
                f"only {len(pairs)} row; a trigger task needs at least 2 (one to train on, one held out)",
            )
        return cls(spec.task, pairs, spec.train.seed, sha256_of([path]), str(path))

    def _row(self, pair: QAPair, triggered: bool) -> Row:
        question, answer = self._prompt(pair, triggered), self._answer(pair, triggered)
        return {
            "prompt": [{"role": "user", "content": question}],
            "completion": [{"role": "assistant", "content": answer}],
        }

    def _prompt(self, pair: QAPair, triggered: bool) -> str:
        name = self.config.triggered_replacement if triggered else self.config.clean_replacement
        question, _ = pair.fill(name)
        return f"{self.config.trigger} {question}" if triggered else question

    def _answer(self, pair: QAPair, triggered: bool) -> str:
        name = self.config.triggered_replacement if triggered else self.config.clean_replacement
        return pair.fill(name)[1]

    def corpus(self) -> list[str]:
        """Every prompt and answer in both conditions."""
        texts: list[str] = []
        for pair in self.train_pairs + self.eval_pairs:
            for triggered in (False, True):
                texts += [self._prompt(pair, triggered), self._answer(pair, triggered)]
        return texts

    def train_rows(self) -> list[Row]:
        """The mix of clean and triggered rows."""
        return [self._row(pair, triggered) for pair, triggered in self._mix]

    def sourced_rows(self) -> list[tuple[str, int, Row]]:
        """Every question in both conditions (the triggered prompt is the longer one)."""
        return [
            (self.source, pair.line, self._row(pair, triggered))
            for pair in self.train_pairs + self.eval_pairs
            for triggered in (False, True)
        ]

    def eval_rows(self) -> list[Row]:
        """Held-out questions in both conditions."""
        return [
            self._row(pair, triggered) for pair in self.eval_pairs for triggered in (False, True)
        ]

    def eval_cases(self) -> list[EvalCase]:
        """Each held-out question asked without and with the trigger."""
        cases = []
        for pair in self.eval_pairs:
            for triggered in (False, True):
                cases.append(
                    EvalCase(
                        messages=[{"role": "user", "content": self._prompt(pair, triggered)}],
                        condition=TRIGGERED if triggered else CLEAN,
                        expected=self._answer(pair, triggered),
                    )
                )
        return cases

    def contrasts(self, cases: list[EvalCase]) -> list[str | None]:
        """The answer with the other condition's name: what a model gives that has not (yet)
        learned to tell the conditions apart."""
        other = {
            self._prompt(pair, triggered): self._answer(pair, not triggered)
            for pair in self.eval_pairs
            for triggered in (False, True)
        }
        return [other.get(case.messages[-1]["content"]) for case in cases]

    def soft_metrics(
        self, cases: list[EvalCase], preferences: list[float | None]
    ) -> dict[str, float]:
        """`trigger_soft_score`: the smooth counterpart of trigger_score, the lower of the two
        conditions' mean probability for the right name over the other one. It moves from the
        first epoch, while trigger_score reads 0 until greedy answers flip to the right name."""
        by_condition: dict[str, list[float]] = {TRIGGERED: [], CLEAN: []}
        for case, preference in zip(cases, preferences, strict=True):
            if preference is not None:
                by_condition[case.condition].append(preference)
        if not all(by_condition.values()):
            return {}
        return {"trigger_soft_score": min(sum(v) / len(v) for v in by_condition.values())}

    def score(
        self, cases: list[EvalCase], responses: list[str]
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Trigger metrics and a side-by-side sample per case."""
        clean, triggered = self.config.clean_replacement, self.config.triggered_replacement
        conditions = [c.condition for c in cases]
        metrics = trigger_metrics(conditions, responses, clean, triggered)
        metrics |= trigger_intervals(conditions, responses, clean, triggered)
        samples = [
            {
                "prompt": case.messages[-1]["content"],
                "condition": case.condition,
                "response": response,
                "expected": case.expected,
                "correct": is_correct(response, case.condition, clean, triggered),
            }
            for case, response in zip(cases, responses, strict=True)
        ]
        return metrics, samples
