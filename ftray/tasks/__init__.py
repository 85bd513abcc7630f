"""Task formats: how a task's data becomes training rows, evaluation prompts and metrics.

Every task implements the `Task` protocol below; `load_task` picks the one a spec names
and validates its data, raising `InputError` with file:line for every bad row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ftray.spec import PipelineTaskSpec, Spec, TriggerTaskSpec

Message = dict[str, str]
Row = dict[str, list[Message]]


@dataclass(frozen=True)
class EvalCase:
    """One held-out prompt to answer greedily, with what a right answer looks like."""

    messages: list[Message]
    condition: str
    expected: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class Task(Protocol):
    """What a training task provides to training and evaluation.

    Rows are TRL "prompt-completion" conversations: ``{"prompt": [user message],
    "completion": [assistant message]}``, so the trainer puts loss on completions only.
    """

    dataset_sha256: str
    max_new_tokens: int

    def corpus(self) -> list[str]:
        """Every text the model will see, for training the tiny model's tokenizer."""
        ...

    def train_rows(self) -> list[Row]:
        """The training mix, already shuffled by the spec's seed."""
        ...

    def eval_rows(self) -> list[Row]:
        """Held-out rows in the training format, for eval_loss."""
        ...

    def eval_cases(self) -> list[EvalCase]:
        """Held-out prompts whose greedy answers are scored."""
        ...

    def score(
        self, cases: list[EvalCase], responses: list[str]
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Metrics over all cases, and one sample record per case (prompt, response, correct)."""
        ...

    def metric_names(self) -> list[str]:
        """Every metric name this task reports, for checking a search objective."""
        ...


def load_task(spec: Spec) -> Task:
    """Read and validate the data a spec's task names."""
    from ftray.tasks.pipeline import PipelineTask
    from ftray.tasks.trigger import TriggerTask

    if isinstance(spec.task, TriggerTaskSpec):
        return TriggerTask.from_spec(spec)
    if isinstance(spec.task, PipelineTaskSpec):
        return PipelineTask.from_spec(spec)
    raise TypeError(f"no task for {type(spec.task).__name__}")
