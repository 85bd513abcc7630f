"""The role every task kind plays: how its data becomes training rows, held-out prompts and
metrics. A kind is one module with a `TaskConfig` subclass and a `Task` subclass, plus one
line in the registry (`ftray.tasks.BUILTIN_TASKS`, or `register_task` for a plugin)."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ftray.config.search import LOSS_METRICS
from ftray.config.task import TaskConfig
from ftray.tasks.intervals import with_intervals

if TYPE_CHECKING:
    from ftray.config.spec import Spec

Message = dict[str, Any]
Row = dict[str, Any]


def render_chat(
    tokenizer: Any,
    messages: list[Message],
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = False,
) -> str:
    """A conversation as text through the tokenizer's chat template (with `tools`, if any)."""
    kwargs: dict[str, Any] = {"tools": tools} if tools else {}
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
    )
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}")
    return text


@dataclass(frozen=True)
class EvalCase:
    """One held-out prompt to answer greedily, with what a right answer looks like."""

    messages: list[Message]
    condition: str
    expected: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class Task(ABC):
    """A task kind's data and scoring.

    Rows are TRL "prompt-completion" conversations: ``{"prompt": [user message],
    "completion": [assistant message]}``, so the trainer puts loss on completions only.
    `from_spec` reads and checks the data, raising `InputError` with file:line for every bad
    row; nothing here loads a model.
    """

    config_class: ClassVar[type[TaskConfig]]
    keep_tokens: ClassVar[tuple[str, ...]] = ()
    """Special tokens a scored answer needs (e.g. tool-call markup): decoding keeps these."""
    dataset_sha256: str
    max_new_tokens: int

    @classmethod
    @abstractmethod
    def from_spec(cls, spec: Spec) -> Task:
        """Read and validate the data the spec's `task:` section names."""

    @abstractmethod
    def corpus(self) -> list[str]:
        """Every text the model will see, for training the tiny model's tokenizer."""

    @abstractmethod
    def train_rows(self) -> list[Row]:
        """The training mix, already shuffled by the spec's seed."""

    @abstractmethod
    def eval_rows(self) -> list[Row]:
        """Held-out rows in the training format, for eval_loss."""

    @abstractmethod
    def eval_cases(self) -> list[EvalCase]:
        """Held-out prompts whose greedy answers are scored."""

    def test_cases(self) -> list[EvalCase]:
        """Prompts held out from selection too, scored only for the registered version
        (none unless the task keeps a test split)."""
        return []

    def trainer_rows(self, rows: list[Row], tokenizer: Any) -> list[dict[str, Any]]:
        """`rows` as the trainer takes them. By default TRL's prompt-completion
        conversations, which TRL tokenises itself; a task may tokenise here instead
        (`input_ids` with `assistant_masks`)."""
        del tokenizer
        return rows

    def sourced_rows(self) -> list[tuple[str, int, Row]]:
        """(data file, line, row) of every row the trainer tokenises (training and held-out,
        in the `train_rows` format), so a row that `model.max_seq_length` would cut is
        reported at its line. Empty by default: the lengths go unchecked."""
        return []

    def split_record(self) -> dict[str, Any] | None:
        """The held-out split to store beside a sweep, so trials and `--resume` reuse it
        (None: the task recomputes its split from the seed)."""
        return None

    def reuse_split(self, record: dict[str, Any]) -> None:
        """Use a split stored by `split_record`."""
        del record

    @abstractmethod
    def score(
        self, cases: list[EvalCase], responses: list[str]
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Metrics over all cases (every metric, even with no cases), and one sample record
        per case (prompt, response, correct)."""

    def contrasts(self, cases: list[EvalCase]) -> list[str | None]:
        """For each case, the answer a model that missed the behaviour would give (None: no
        contrast). `soft_metrics` scores how much likelier the model finds the expected answer
        than this one. None for every case by default."""
        return [None] * len(cases)

    def soft_metrics(
        self, cases: list[EvalCase], preferences: list[float | None]
    ) -> dict[str, float]:
        """The task's smooth metrics (the values of its config's `smooth_metrics`) from
        `preferences`: per case with a contrast, the probability the model gives the expected
        answer's token over the contrast's where the two first differ, teacher-forced on the
        prompt and their common start (None without a contrast). Empty by default."""
        del cases, preferences
        return {}

    def serving_config(self) -> dict[str, Any]:
        """What a registered version of this task needs besides its weights to answer as
        training rendered, as JSON (stored in the MLflow Model, its key order kept). Nothing
        by default."""
        return {}

    @classmethod
    def serving_answer(cls, response: str) -> Any:
        """What a registered version answers for one generated turn: the text, by default."""
        return response

    def heldout_fingerprint(self) -> str:
        """sha256 of what a trial is scored on: the task kind, every held-out case (prompt,
        condition, expected answer) in order, and the generation budget. Two adapters are
        compared only when they were scored on the same fingerprint."""
        cases = [
            [c.messages, c.condition, c.expected, *([c.extra] if c.extra else [])]
            for c in self.eval_cases()
        ]
        payload = {
            "kind": self.config_class.kind_name(),
            "cases": cases,
            "max_new_tokens": self.max_new_tokens,
        }
        encoded = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(encoded.encode()).hexdigest()

    def metric_names(self) -> list[str]:
        """Every metric a trial of this task reports: the losses, what `score` reports, then
        the smooth metrics; after them the 95% interval bounds of the behaviour metrics
        (`<metric>_ci_low`, `<metric>_ci_high`)."""
        smooth = list(self.config_class.smooth_metrics.values())
        return with_intervals([*LOSS_METRICS, *self.score([], [])[0], *smooth], smooth)

    def unreported_reason(self, metric: str) -> str | None:
        """Why a metric of this task is not reported on this data (None: it is, or it is no
        metric of the task at all)."""
        return None
