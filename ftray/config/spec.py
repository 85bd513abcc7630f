"""The validated spec: one frozen object per YAML section, and `Spec` holding them all.

The `task:` section is whichever task kinds are registered (`ftray.tasks.register_task`):
`spec_model()` builds the `Spec` class whose `task` field is the union of their configs.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    Field,
    PrivateAttr,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ftray.config.fields import Float, Frozen, Int, resolve_path
from ftray.config.search import Objective, SearchSpec
from ftray.config.task import TaskConfig
from ftray.config.tracking_uri import absolute_store_uri
from ftray.errors import Problem
from ftray.redaction import mask_override

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


SIMULATED = "simulated"


class SimulationSpec(Frozen):
    """`model.simulation:` of a simulated trial (`model.backend: simulated`): no model is
    loaded or trained; each epoch waits `epoch_seconds` and reports the metrics that
    learning curves recorded from real trials give the trial's configuration (see
    `ftray.training.simulated`)."""

    curves: str = Field(min_length=1)
    """A file of recorded learning curves (bench/record_curves.py writes them)."""
    epoch_seconds: Float = Field(default=1.0, ge=0.0)

    _resolve_curves = field_validator("curves")(resolve_path)


class ModelSpec(Frozen):
    """The base model and how it is loaded."""

    base: str = Field(min_length=1)
    revision: str | None = Field(default=None, min_length=1)
    """A Hub base's branch, tag or commit; default: what the cache or Hub has, pinned at training."""
    backend: Literal["auto", "peft", "unsloth", "simulated"] = "auto"
    load_in_4bit: bool = True
    max_seq_length: Int = Field(default=256, ge=16)
    simulation: SimulationSpec | None = None

    @model_validator(mode="after")
    def _simulation_with_its_backend(self) -> ModelSpec:
        if self.backend == SIMULATED and self.simulation is None:
            raise PydanticCustomError(
                "simulation_missing",
                "model.backend: simulated needs model.simulation: {curves: FILE, "
                "epoch_seconds: S}, the learning curves its trials report",
            )
        if self.backend != SIMULATED and self.simulation is not None:
            raise PydanticCustomError(
                "simulation_unused",
                "model.simulation is read only with model.backend: simulated (now '{backend}')",
                {"backend": self.backend},
            )
        return self

    @property
    def simulated(self) -> bool:
        """Whether trials are simulated (no model loaded, no training)."""
        return self.backend == SIMULATED


class LoraSpec(Frozen):
    """LoRA adapter shape."""

    r: Int = Field(default=8, ge=1)
    alpha: Float = Field(default=16, gt=0)
    dropout: Float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = Field(default=DEFAULT_TARGET_MODULES, min_length=1)


class TrainSpec(Frozen):
    """Optimisation settings of one trial."""

    epochs: Int = Field(default=3, ge=1)
    learning_rate: Float = Field(default=2.0e-4, gt=0.0)
    batch_size: Int = Field(default=8, ge=1)
    gradient_accumulation_steps: Int = Field(default=1, ge=1)
    seed: Int = 0
    run_seed: Int | None = None
    """The seed of training's own randomness (LoRA's initialisation, the order of the rows);
    unset, `seed`. The held-out split and the data's mix stay on `seed`: the confirmation
    trials of `search.confirm` train with new run seeds on the same held-out prompts."""

    @property
    def training_seed(self) -> int:
        return self.seed if self.run_seed is None else self.run_seed


class ResourcesSpec(Frozen):
    """Resources each trial asks Ray for."""

    cpu: Float = Field(default=1, ge=0)
    gpu: Float = Field(default=0, ge=0)
    price_per_hour: Float | None = Field(default=None, ge=0)
    """What one trial's resources cost for an hour (any currency): trials and sweeps then
    record their `cost` beside their GPU-hours (CPU-hours for CPU trials)."""


class TrackingSpec(Frozen):
    """Where MLflow records the sweep and under which registered model the winner lands."""

    uri: str | None = None
    registered_model: str | None = None
    # `register` in the spec (the attribute name is taken by pydantic's ABC base).
    register_best: bool | None = Field(default=None, alias="register")
    """Whether the sweep registers its best trial; default yes, except for simulated trials,
    which have no adapter to register (false: a dry run that records the trials only)."""

    @field_validator("uri")
    @classmethod
    def _local_store_beside_the_spec(cls, value: str | None, info: ValidationInfo) -> str | None:
        base = (info.context or {}).get("base_dir")
        if value is None or base is None:
            return value
        return absolute_store_uri(value, Path(base))


class StorageSpec(Frozen):
    """Where a sweep keeps state that must outlive the driver (shared on a cluster)."""

    tune_path: str | None = None
    optuna_url: str | None = None

    @field_validator("tune_path")
    @classmethod
    def _resolve_tune_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or "://" in value:
            return value
        return resolve_path(value, info)

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

    def sets(self, loc: tuple[Any, ...]) -> bool:
        """Whether the file or a `--set` gives the field at `loc` (not left to its default)."""
        dotted = ".".join(str(k) for k in loc)
        given = tuple(str(k) for k in loc) in self.lines
        return given or any(o.split("=", 1)[0] == dotted for o in self.overrides)

    def problem(self, loc: tuple[Any, ...], message: str) -> Problem:
        """A problem located at the YAML node for `loc`, or at the `--set` that gave it."""
        dotted = ".".join(str(k) for k in loc)
        for override in reversed(self.overrides):  # the last --set of a field is the one used
            key = override.split("=", 1)[0]
            if dotted == key or dotted.startswith(key + "."):
                return Problem(str(self.path), None, f"--set {mask_override(override)}: {message}")
        return Problem(str(self.path), self.line_of(loc), message)


class Spec(Frozen):
    """A whole validated sweep spec. Build one with `load_spec` (or `spec_model()`): this
    base class types `task` as the abstract TaskConfig."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    task: TaskConfig
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

    def attach_source(self, source: SpecSource | None) -> Spec:
        """Record where this spec was read from; returns the spec."""
        self._source = source
        return self

    @property
    def stopping(self) -> Objective:
        """The metric (and mode) ASHA stops this spec's trials on (see `SearchSpec.stopping`)."""
        assert self.search is not None, "a spec without search: stops no trial"
        return self.search.stopping(self.task.smooth_metrics)

    @model_validator(mode="after")
    def _simulated_trials_register_nothing(self) -> Spec:
        if self.model.simulated and self.tracking.register_best:
            raise PydanticCustomError(
                "simulated_register",
                "a simulated sweep has no adapter to register: leave tracking.register unset "
                "or set it to false",
            )
        return self

    @model_validator(mode="after")
    def _budget_the_trials_can_meter(self) -> Spec:
        budget = self.search.budget if self.search is not None else None
        if budget is None:
            return self
        resources = self.resources_per_trial
        if budget.kind == "cost" and resources.price_per_hour is None:
            raise PydanticCustomError(
                "budget",
                "search.budget.cost needs resources_per_trial.price_per_hour (what one trial's "
                "resources cost for an hour)",
            )
        if budget.kind == "gpu_hours" and resources.gpu == 0:
            raise PydanticCustomError(
                "budget",
                "search.budget.gpu_hours meters GPUs, and these trials ask for none: give "
                "cpu_hours, or resources_per_trial.gpu",
            )
        if budget.kind == "cpu_hours" and resources.gpu > 0:
            raise PydanticCustomError(
                "budget",
                "search.budget.cpu_hours meters CPU trials, and these ask for GPUs: give gpu_hours",
            )
        return self

    @property
    def registers(self) -> bool:
        """Whether the sweep registers its best trial (`tracking.register`, see there)."""
        if self.tracking.register_best is not None:
            return self.tracking.register_best
        return not self.model.simulated

    @property
    def registered_model_name(self) -> str:
        """The MLflow registered model that receives the sweep's best adapter."""
        return self.tracking.registered_model or self.name

    def with_values(self, values: dict[str, Any]) -> Spec:
        """A copy of this spec with dotted paths set to new values, validated again."""
        # Only the fields the spec gave: a default stays a default (search_warnings asks).
        raw = self.model_dump(by_alias=True, exclude_unset=True)
        for dotted, value in values.items():
            set_dotted(raw, dotted, value)
        new = type(self).model_validate(raw, context={"base_dir": None})
        return new.attach_source(self._source)


@cache
def _spec_model_for(configs: tuple[type[TaskConfig], ...]) -> type[Spec]:
    if len(configs) == 1:
        task_type: Any = configs[0]
    else:
        task_type = Annotated[Union[configs], Field(discriminator="kind")]  # noqa: UP007
    return create_model(
        "Spec",
        __base__=Spec,
        __module__=__name__,
        __doc__=Spec.__doc__,
        task=(task_type, ...),
    )


def spec_model() -> type[Spec]:
    """The Spec class whose `task` accepts every registered task kind."""
    from ftray.tasks import task_configs

    return _spec_model_for(tuple(task_configs()))


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `raw[a][b][c] = value` for `dotted` = "a.b.c", creating mappings on the way."""
    keys = dotted.split(".")
    node = raw
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


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
