"""Task kinds, chosen by `task.kind` from one registry.

Each kind is a module with its config model (a `TaskConfig` subclass) and its `Task`
subclass; the spec's `task:` section accepts exactly the registered kinds, and its error
messages list them. Adding a kind means one module and one line in `BUILTIN_TASKS` (or a
`register_task` call from your own code).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ftray.config.task import TaskConfig
from ftray.tasks.base import EvalCase, Message, Row, Task

if TYPE_CHECKING:
    from ftray.config.spec import Spec

BUILTIN_TASKS = (
    "ftray.tasks.trigger:TriggerTask",
    "ftray.tasks.pipeline:PipelineTask",
    "ftray.tasks.chat:ChatTask",
)

_registry: dict[str, type[Task]] = {}
_builtins_loaded = False


def register_task(task: type[Task]) -> type[Task]:
    """Make `task` a kind the spec accepts (keyed by its config's `kind`); returns it."""
    _load_builtins()
    _registry[task.config_class.kind_name()] = task
    return task


def unregister_task(kind: str) -> None:
    """Forget the task kind `kind` (the spec no longer accepts it)."""
    _load_builtins()
    _registry.pop(kind, None)


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for path in BUILTIN_TASKS:
        module, _, name = path.partition(":")
        task = getattr(importlib.import_module(module), name)
        _registry[task.config_class.kind_name()] = task


def registered_tasks() -> dict[str, type[Task]]:
    """kind -> Task class, built-in kinds first."""
    _load_builtins()
    return dict(_registry)


def task_configs() -> list[type[TaskConfig]]:
    """The config class of every registered kind."""
    return [task.config_class for task in registered_tasks().values()]


def load_task(spec: Spec) -> Task:
    """Read and validate the data a spec's task names."""
    return registered_tasks()[spec.task.kind].from_spec(spec)


__all__ = [
    "BUILTIN_TASKS",
    "EvalCase",
    "Message",
    "Row",
    "Task",
    "load_task",
    "register_task",
    "registered_tasks",
    "task_configs",
    "unregister_task",
]
