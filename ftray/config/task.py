"""The base of every task's config section (`task:`); each task kind's own fields live in
its module under `ftray/tasks/`, and the spec accepts whichever kinds are registered."""

from __future__ import annotations

from typing import Any, ClassVar

from ftray.config.fields import Frozen


class TaskConfig(Frozen):
    """`task:` of a spec. Subclasses declare `kind: Literal["<their kind>"]` and their fields."""

    kind: str
    smooth_metrics: ClassVar[dict[str, str]] = {}
    """Behaviour metric -> its smooth counterpart (maximised, in [0, 1]) that the task reports
    each epoch too: what ASHA stops trials on by default when the objective is that metric."""

    @classmethod
    def kind_name(cls) -> str:
        """The value of `kind` this config class accepts."""
        annotation: Any = cls.model_fields["kind"].annotation
        values = getattr(annotation, "__args__", ())
        if len(values) != 1 or not isinstance(values[0], str):
            raise TypeError(f"{cls.__name__}.kind must be annotated Literal['<kind>']")
        return values[0]

    def step_names(self) -> tuple[str, ...]:
        """The steps `ftray sweep --each-step` sweeps one at a time (none: the task has no
        steps). A task with steps has an `only_step` field that restricts it to one."""
        return ()
