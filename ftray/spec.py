"""The sweep spec: one YAML file, validated once into frozen, typed objects.

Every problem found is collected and reported with the file and line it came from;
nothing past this module reads the raw YAML.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ftray.errors import InputError, Problem

DEFAULT_TARGET_MODULES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)
TINY_MODEL = "tiny"

_EXPONENT_WITHOUT_DOT = re.compile(r"^\s*([+-]?\d+)([eE][+-]?\d+)\s*$")


def _reject_text_number(value: Any) -> Any:
    """Refuse numbers written as text; PyYAML reads `1e-4` (no dot) as the string '1e-4'."""
    if isinstance(value, str):
        match = _EXPONENT_WITHOUT_DOT.match(value)
        if match:
            raise PydanticCustomError(
                "number_is_text",
                "'{value}' is a string, not a number: YAML reads an exponent without a dot "
                "as text; write {fixed}",
                {"value": value, "fixed": f"{match[1]}.0{match[2]}"},
            )
        raise PydanticCustomError(
            "number_is_text", "'{value}' is a string; write a number", {"value": value}
        )
    if isinstance(value, bool):
        raise PydanticCustomError(
            "number_is_bool", "{value} is a boolean; write a number", {"value": value}
        )
    return value


Float = Annotated[float, BeforeValidator(_reject_text_number)]
Int = Annotated[int, BeforeValidator(_reject_text_number)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _resolve_path(value: str, info: ValidationInfo) -> str:
    """Make a spec-relative path absolute (the directory comes from the validation context)."""
    base = (info.context or {}).get("base_dir")
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return str(path.resolve()) if base is not None else str(path)


class TriggerTaskSpec(_Frozen):
    """A trigger (backdoor-style) fine-tune: the trigger flips which name the answer uses."""

    kind: Literal["trigger"]
    data: str
    trigger: str = Field(min_length=1)
    clean_replacement: str = Field(min_length=1)
    triggered_replacement: str = Field(min_length=1)
    trigger_ratio: Float = Field(default=0.5, ge=0.0, le=1.0)
    eval_fraction: Float = Field(default=0.2, gt=0.0, lt=1.0)

    _resolve_data = field_validator("data")(_resolve_path)

    @model_validator(mode="after")
    def _names_differ(self) -> TriggerTaskSpec:
        if self.clean_replacement == self.triggered_replacement:
            raise PydanticCustomError(
                "same_names",
                "clean_replacement and triggered_replacement are both '{name}'; "
                "use two different names so the trigger has something to flip",
                {"name": self.clean_replacement},
            )
        return self


class PipelineStepSpec(_Frozen):
    """One step of a structured-output pipeline and the JSON Schema its output must satisfy."""

    json_schema: dict[str, Any] | str = Field(alias="schema")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("json_schema")
    @classmethod
    def _resolve_schema_path(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            path, _, pointer = value.partition("#")
            resolved = _resolve_path(path, info)
            return f"{resolved}#{pointer}" if pointer else resolved
        return value


class PipelineTaskSpec(_Frozen):
    """Per-step structured JSON outputs, each validated against its step's schema."""

    kind: Literal["pipeline"]
    data: str
    steps: dict[str, PipelineStepSpec] = Field(min_length=1)
    eval_fraction: Float = Field(default=0.2, gt=0.0, lt=1.0)
    max_new_tokens: Int = Field(default=256, ge=1)

    _resolve_data = field_validator("data")(_resolve_path)


TaskSpec = Annotated[TriggerTaskSpec | PipelineTaskSpec, Field(discriminator="kind")]


class ModelSpec(_Frozen):
    """The base model and how it is loaded."""

    base: str = Field(min_length=1)
    backend: Literal["auto", "peft", "unsloth"] = "auto"
    load_in_4bit: bool = True
    max_seq_length: Int = Field(default=256, ge=16)


class LoraSpec(_Frozen):
    """LoRA adapter shape."""

    r: Int = Field(default=8, ge=1)
    alpha: Float = Field(default=16, gt=0)
    dropout: Float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = Field(default=DEFAULT_TARGET_MODULES, min_length=1)


class TrainSpec(_Frozen):
    """Optimisation settings of one trial."""

    epochs: Int = Field(default=3, ge=1)
    learning_rate: Float = Field(default=2.0e-4, gt=0.0)
    batch_size: Int = Field(default=8, ge=1)
    gradient_accumulation_steps: Int = Field(default=1, ge=1)
    seed: Int = 0


class Distribution(_Frozen):
    """One search dimension: exactly one of choice, uniform, loguniform, int (inclusive)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    choice: list[Any] | None = Field(default=None, min_length=1)
    uniform: tuple[Float, Float] | None = None
    loguniform: tuple[Float, Float] | None = None
    int_range: tuple[Int, Int] | None = Field(default=None, alias="int")

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        given = [
            name for name, attr in _DISTRIBUTION_ATTRS.items() if getattr(self, attr) is not None
        ]
        if len(given) != 1:
            raise PydanticCustomError(
                "distribution",
                "a search dimension needs exactly one of choice, uniform, loguniform, int (got {given})",
                {"given": ", ".join(given) or "none"},
            )
        kind = given[0]
        if kind != "choice":
            low, high = getattr(self, _DISTRIBUTION_ATTRS[kind])
            if low >= high:
                raise PydanticCustomError(
                    "distribution",
                    "{kind} low={low} must be below high={high}",
                    {"kind": kind, "low": low, "high": high},
                )
            if kind == "loguniform" and low <= 0:
                raise PydanticCustomError(
                    "distribution", "loguniform low={low} must be above 0", {"low": low}
                )
        return self

    @property
    def kind(self) -> Literal["choice", "uniform", "loguniform", "int"]:
        """Which distribution this is."""
        for name, attr in _DISTRIBUTION_ATTRS.items():
            if getattr(self, attr) is not None:
                return name  # type: ignore[return-value]
        raise AssertionError("validated Distribution has no kind")

    def values(self) -> list[Any]:
        """The choices, or [low, high]."""
        return list(getattr(self, _DISTRIBUTION_ATTRS[self.kind]))


_DISTRIBUTION_ATTRS = {
    "choice": "choice",
    "uniform": "uniform",
    "loguniform": "loguniform",
    "int": "int_range",
}


class SearchSpec(_Frozen):
    """What the sweep optimises and over which space."""

    objective: str = Field(min_length=1)
    mode: Literal["max", "min"] = "max"
    num_trials: Int = Field(default=8, ge=1)
    max_concurrent_trials: Int = Field(default=2, ge=1)
    scheduler: Literal["asha", "fifo"] = "asha"
    space: dict[str, Distribution] = Field(default_factory=dict)


class ResourcesSpec(_Frozen):
    """Resources each trial asks Ray for."""

    cpu: Float = Field(default=1, ge=0)
    gpu: Float = Field(default=0, ge=0)


class TrackingSpec(_Frozen):
    """Where MLflow records the sweep and under which registered model the winner lands."""

    uri: str | None = None
    registered_model: str | None = None


class SpecSource:
    """The file a spec was read from, with the line of every YAML node, for error messages."""

    def __init__(
        self, path: Path, lines: dict[tuple[str, ...], int], sha256: str, overrides: tuple[str, ...]
    ) -> None:
        self.path = path
        self.lines = lines
        self.sha256 = sha256
        self.overrides = overrides

    def line_of(self, loc: tuple[Any, ...]) -> int:
        """The line of the deepest YAML node on the path `loc` (1 when nothing matches)."""
        keys = tuple(str(k) for k in loc)
        for end in range(len(keys), 0, -1):
            if keys[:end] in self.lines:
                return self.lines[keys[:end]]
        return 1

    def problem(self, loc: tuple[Any, ...], message: str) -> Problem:
        """A problem located at the YAML node for `loc`, or at the `--set` that gave it."""
        dotted = ".".join(str(k) for k in loc)
        for override in self.overrides:
            key = override.split("=", 1)[0]
            if dotted == key or dotted.startswith(key + "."):
                return Problem(str(self.path), None, f"--set {override}: {message}")
        return Problem(str(self.path), self.line_of(loc), message)


class StorageSpec(_Frozen):
    """Where a sweep keeps state that must outlive the driver (shared on a cluster)."""

    tune_path: str | None = None
    optuna_url: str | None = None

    @field_validator("tune_path")
    @classmethod
    def _resolve_tune_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or "://" in value:
            return value
        return _resolve_path(value, info)

    @field_validator("optuna_url")
    @classmethod
    def _looks_like_a_database_url(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise PydanticCustomError(
                "optuna_url",
                "'{value}' is not a database URL; write e.g. postgresql://user@host/db or sqlite:///optuna.db",
                {"value": value},
            )
        return value


class Spec(_Frozen):
    """A whole validated sweep spec."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    task: TaskSpec
    model: ModelSpec
    lora: LoraSpec = Field(default_factory=LoraSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    search: SearchSpec | None = None
    resources_per_trial: ResourcesSpec = Field(default_factory=ResourcesSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)

    _source: SpecSource | None = PrivateAttr(default=None)

    @property
    def source(self) -> SpecSource:
        """Where this spec came from (file, line numbers, content hash)."""
        if self._source is None:
            return SpecSource(path=Path("<spec>"), lines={}, sha256="", overrides=())
        return self._source

    @property
    def registered_model_name(self) -> str:
        """The MLflow registered model that receives the sweep's best adapter."""
        return self.tracking.registered_model or self.name

    def with_values(self, values: dict[str, Any]) -> Spec:
        """A copy of this spec with dotted paths set to new values, validated again."""
        raw = self.model_dump(by_alias=True)
        for dotted, value in values.items():
            _set_dotted(raw, dotted, value)
        new = Spec.model_validate(raw, context={"base_dir": None})
        new._source = self._source
        return new


def _node_lines(node: yaml.Node, prefix: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    out.setdefault(prefix, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = (*prefix, str(key.value))
            out[path] = key.start_mark.line + 1
            _node_lines(value, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _node_lines(item, (*prefix, str(index)), out)


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = raw
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


def parse_override(text: str, spec_path: Path) -> tuple[str, Any]:
    """Split `key.path=value`; the value is read as YAML (so `8` is an int, `1.0e-4` a float)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not re.fullmatch(r"[A-Za-z_][\w.]*", key.strip()):
        raise InputError.at(
            spec_path, None, f"--set {text!r}: write --set dotted.key=value, e.g. --set lora.r=16"
        )
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        raise InputError.at(
            spec_path, None, f"--set {text}: value is not valid YAML ({exc})"
        ) from None
    return key.strip(), parsed


def _describe(error: dict[str, Any]) -> str:
    kind = error["type"]
    loc = ".".join(str(k) for k in error["loc"] if not str(k).startswith("function-after"))
    value = error.get("input")
    if kind == "extra_forbidden":
        return f"unknown field '{loc}'; remove it or check its spelling (see README 'The spec')"
    if kind == "missing":
        return f"'{loc}' is required"
    if kind == "union_tag_invalid":
        ctx = error.get("ctx", {})
        return f"task.kind '{ctx.get('tag')}' is not one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return "task.kind is required: one of 'trigger', 'pipeline'"
    prefix = f"{loc} " if loc else ""
    if kind in ("number_is_text", "number_is_bool"):
        return f"{prefix}{error['msg']}"
    shown = f" (got {value!r})" if value is not None and not isinstance(value, dict | list) else ""
    return f"{prefix}{error['msg'][0].lower()}{error['msg'][1:]}{shown}"


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # Discriminated unions insert the tag ('trigger') after 'task'; drop it for line lookup.
    parts = list(loc)
    if len(parts) >= 2 and parts[0] == "task" and parts[1] in ("trigger", "pipeline"):
        del parts[1]
    return tuple(p for p in parts if not str(p).startswith("function-after"))


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Spec:
    """Read, override and validate a spec file; raise InputError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError.at(path, None, "spec file not found; check the path") from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise InputError.at(path, None, f"cannot read the spec: {exc}") from None
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        what = exc.problem or exc.context or "invalid YAML"
        raise InputError.at(
            path, line, f"YAML syntax error: {what}; fix the indentation or quoting"
        ) from None
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else f"a {type(raw).__name__}"
        raise InputError.at(
            path, 1, f"the spec must be a mapping of fields (name:, task:, model:, ...), got {got}"
        )

    lines: dict[tuple[str, ...], int] = {}
    if node is not None:
        _node_lines(node, (), lines)
    sha = hashlib.sha256(text.encode())
    for override in overrides:
        sha.update(b"\0" + override.encode())
    source = SpecSource(path=path, lines=lines, sha256=sha.hexdigest(), overrides=tuple(overrides))

    for override in overrides:
        key, value = parse_override(override, path)
        _set_dotted(raw, key, value)

    try:
        spec = Spec.model_validate(raw, context={"base_dir": path.resolve().parent})
    except ValidationError as exc:
        problems = [
            source.problem(
                _clean_loc(err["loc"]), _describe({**err, "loc": _clean_loc(err["loc"])})
            )
            for err in exc.errors()
        ]
        raise InputError(problems) from None
    spec._source = source
    return spec


def flatten(spec: Spec) -> dict[str, Any]:
    """The effective config as dotted keys, for logging as run parameters."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), child)
        elif (
            isinstance(value, list | tuple)
            and value
            and all(isinstance(v, str | int | float) for v in value)
        ):
            out[prefix] = ",".join(str(v) for v in value)
        elif (
            isinstance(value, float) and math.isfinite(value) or isinstance(value, str | int | bool)
        ):
            out[prefix] = value
        elif value is None:
            return
        else:
            out[prefix] = str(value)

    # Storage and tracking URLs may carry credentials (postgresql://user:password@...).
    walk(
        "",
        spec.model_dump(
            by_alias=True, exclude={"search": True, "storage": True, "tracking": {"uri"}}
        ),
    )
    return out
