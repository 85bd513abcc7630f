"""The spec: YAML loading with line numbers, `--set` overrides, and the frozen, validated
`Spec` every later layer reads (nothing past this package reads raw YAML)."""

from __future__ import annotations

from ftray.config.loader import load_spec, parse_override
from ftray.config.search import Condition, Distribution, Objective, SearchSpec, SelectRule
from ftray.config.spec import (
    DEFAULT_TARGET_MODULES,
    TINY_MODEL,
    LoraSpec,
    ModelSpec,
    Spec,
    SpecSource,
    flatten,
    spec_model,
)
from ftray.config.task import TaskConfig

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "TINY_MODEL",
    "Condition",
    "Distribution",
    "LoraSpec",
    "ModelSpec",
    "Objective",
    "SearchSpec",
    "SelectRule",
    "Spec",
    "SpecSource",
    "TaskConfig",
    "flatten",
    "load_spec",
    "parse_override",
    "spec_model",
]
