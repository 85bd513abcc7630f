"""The pipeline task: each step of a multi-step annotation pipeline answers with JSON
that must satisfy that step's JSON Schema."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jsonschema.validators import validator_for
from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from ftray.config.fields import Float, Frozen, Int, resolve_path
from ftray.config.files import path_problem, utf8_problem
from ftray.config.spec import Spec
from ftray.config.task import TaskConfig
from ftray.errors import InputError, Problem
from ftray.tasks.base import EvalCase, Row, Task
from ftray.tasks.intervals import interval_metrics
from ftray.tasks.jsonl import check_keys, read_jsonl, require_data, sha256_of
from ftray.tasks.schemas import check_json_schema, schema_violation

_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL)
SCORES = ("json_valid", "schema_valid", "field_accuracy")


def _resolve_optional_path(value: str | None, info: ValidationInfo) -> str | None:
    return None if value is None else resolve_path(value, info)


class PipelineStepConfig(Frozen):
    """One step of a structured-output pipeline, the JSON Schema its output must satisfy,
    and optionally its own data file."""

    json_schema: dict[str, Any] | str = Field(alias="schema")
    data: str | None = None
    """A JSONL file of this step's rows (they may omit `step`); with it, task.data need not
    hold the step."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    _resolve_data = field_validator("data")(_resolve_optional_path)

    @field_validator("json_schema")
    @classmethod
    def _resolve_schema_path(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            path, _, pointer = value.partition("#")
            resolved = resolve_path(path, info)
            return f"{resolved}#{pointer}" if pointer else resolved
        return value


class PipelineConfig(TaskConfig):
    """`task:` of a pipeline: per-step structured JSON outputs, each checked against its schema."""

    kind: Literal["pipeline"]
    data: str | None = None
    """A JSONL file or a folder of per-step files; optional when every step has its own data."""
    steps: dict[str, PipelineStepConfig] = Field(min_length=1)
    only_step: str | None = None
    """Train and score this one step alone (what `ftray sweep --each-step` sets per step)."""
    eval_fraction: Float = Field(default=0.2, gt=0.0, lt=1.0)
    max_new_tokens: Int = Field(default=256, ge=1)

    _resolve_data = field_validator("data")(_resolve_optional_path)

    def step_names(self) -> tuple[str, ...]:
        """Every step of the pipeline, in spec order."""
        return tuple(self.steps)


@dataclass(frozen=True)
class StepExample:
    """One instruction (with its Alpaca `input`, if any) and the JSON object a step should
    produce for it."""

    step: str
    instruction: str
    output: dict[str, Any]
    file: str = ""
    line: int = 0
    """Where the example was read (empty and 0: not read from a file)."""
    input: str = ""
    """The text the instruction is about, when the row gives it apart (Alpaca `input`)."""

    @property
    def prompt(self) -> str:
        """The user message: the instruction, then a blank line and the input when there is one."""
        return f"{self.instruction}\n\n{self.input}" if self.input.strip() else self.instruction


def parse_json_output(text: str) -> tuple[bool, Any]:
    """(parsed, value) for a model response; a surrounding ```json fence is allowed."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced[1].strip()
    try:
        return True, json.loads(stripped)
    except (json.JSONDecodeError, ValueError):
        return False, None


def field_accuracy(expected: dict[str, Any], actual: Any) -> float:
    """Share of the expected top-level fields that the output reproduces exactly."""
    if not expected:
        return 1.0
    if not isinstance(actual, dict):
        return 0.0
    return sum(k in actual and actual[k] == v for k, v in expected.items()) / len(expected)


def score_step_output(text: str, expected: dict[str, Any], validator: Any) -> dict[str, float]:
    """json_valid, schema_valid and field_accuracy of one response."""
    parsed, value = parse_json_output(text)
    return {
        "json_valid": float(parsed),
        "schema_valid": float(parsed and validator.is_valid(value)),
        "field_accuracy": field_accuracy(expected, value) if parsed else 0.0,
    }


def _json_pointer(document: Any, pointer: str) -> Any:
    node = document
    for part in pointer.strip("/").split("/") if pointer.strip("/") else []:
        key = part.replace("~1", "/").replace("~0", "~")
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node


def load_schema(value: dict[str, Any] | str) -> dict[str, Any]:
    """An inline schema, a JSON file, or `file.json#/pointer` into one; ValueError says what failed."""
    if isinstance(value, dict):
        schema = value
    else:
        path, _, pointer = value.partition("#")
        reason = path_problem(Path(path))
        if reason is not None:
            raise ValueError(f"schema file {path} {reason}")
        data = Path(path).read_bytes()
        not_utf8 = utf8_problem(Path(path), data)
        if not_utf8 is not None:
            raise ValueError(f"schema file {not_utf8}")
        try:
            document = json.loads(data.decode("utf-8").removeprefix("\ufeff"))
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"schema file {path} is not valid JSON ({exc.msg}, line {exc.lineno})"
            ) from None
        try:
            schema = _json_pointer(document, pointer)
        except (KeyError, IndexError, ValueError, TypeError):
            raise ValueError(f"pointer '#{pointer}' finds nothing in {path}") from None
    check_json_schema(schema)
    return schema


def step_named_by(file: Path, steps: Iterable[str]) -> str | None:
    """The step a data file's name gives its rows: `<step>.jsonl` or `<step>_train.jsonl`."""
    names = set(steps)
    if file.stem in names:
        return file.stem
    if file.stem.endswith("_train") and file.stem.removesuffix("_train") in names:
        return file.stem.removesuffix("_train")
    return None


def _data_files(spec: Spec, path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    files = sorted(path.glob("*.jsonl"))
    if not files:
        raise InputError(
            [
                spec.source.problem(
                    ("task", "data"),
                    f"task.data folder {path} holds no *.jsonl files; add one file per step, "
                    "e.g. characters.jsonl",
                )
            ]
        )
    problems = []
    for file in files:
        reason = path_problem(file)
        if reason is not None:
            problems.append(
                spec.source.problem(
                    ("task", "data"), f"task.data folder {path}: {file.name} {reason}"
                )
            )
    if problems:
        raise InputError(problems)
    return files


@dataclass(frozen=True)
class _DataFile:
    """A file of pipeline rows and the step its rows default to."""

    path: Path
    step: str | None
    """The step its name gives (`<step>.jsonl`), or whose own `data` it is."""
    own: bool = False
    """It is `steps.<step>.data`: every row belongs to that step."""


def _json_error(text: str) -> str:
    """Why `text` is not JSON, as json.loads says it."""
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return f"{exc.msg} at character {exc.pos + 1}"
    return "not a JSON value"


class PipelineTask(Task):
    """Structured JSON output per pipeline step."""

    config_class = PipelineConfig

    def __init__(
        self,
        config: PipelineConfig,
        examples: list[StepExample],
        schemas: dict[str, dict[str, Any]],
        seed: int,
        dataset_sha256: str,
    ) -> None:
        self.config = config
        self.dataset_sha256 = dataset_sha256
        self.validators = {step: validator_for(schema)(schema) for step, schema in schemas.items()}
        self.steps = [config.only_step] if config.only_step else list(config.steps)
        rng = random.Random(seed)
        self.train_examples: list[StepExample] = []
        self.eval_examples: list[StepExample] = []
        # Every step is shuffled in spec order, so one step alone gets the same split as
        # it has in the whole pipeline.
        for step in config.steps:
            rows = [e for e in examples if e.step == step]
            rng.shuffle(rows)
            if step not in self.steps:
                continue
            n_eval = max(1, round(config.eval_fraction * len(rows)))
            self.eval_examples += rows[:n_eval]
            self.train_examples += rows[n_eval:]
        rng.shuffle(self.train_examples)
        self.max_new_tokens = config.max_new_tokens

    @classmethod
    def from_spec(cls, spec: Spec) -> PipelineTask:
        """Read the step schemas and the data (`task.data`, each step's own `data`), checking
        every row against its step's schema."""
        assert isinstance(spec.task, PipelineConfig)
        config = spec.task
        schemas: dict[str, dict[str, Any]] = {}
        problems: list[Problem] = []
        if config.only_step is not None and config.only_step not in config.steps:
            problems.append(
                spec.source.problem(
                    ("task", "only_step"),
                    f"task.only_step '{config.only_step}' is not one of task.steps "
                    f"({', '.join(config.steps)})",
                )
            )
        without = [step for step, s in config.steps.items() if s.data is None]
        if config.data is None and without:
            problems.append(
                spec.source.problem(
                    ("task",),
                    f"task.data is required unless every step has its own data: "
                    f"{', '.join(without)} {'has' if len(without) == 1 else 'have'} none; "
                    "add task.data or steps.<name>.data",
                )
            )
        for step, step_spec in config.steps.items():
            try:
                schemas[step] = load_schema(step_spec.json_schema)
            except ValueError as exc:
                problems.append(
                    spec.source.problem(("task", "steps", step, "schema"), f"step '{step}': {exc}")
                )
        if problems:
            raise InputError(problems)

        sources = cls._sources(spec)
        examples: list[StepExample] = []
        for source in sources:
            for number, row in read_jsonl(source.path):
                checked = check_keys(
                    source.path, number, row, {"instruction", "output"}, {"input", "step"}
                ) or cls._check_row(source, number, row, config, schemas)
                if isinstance(checked, Problem):
                    problems.append(checked)
                else:
                    examples.append(checked)
        if problems:
            raise InputError(problems)
        for step in [config.only_step] if config.only_step else config.steps:
            count = sum(e.step == step for e in examples)
            if count < 2:
                own = config.steps[step].data
                where = f"steps.{step}.data {own}" if own else f"task.data {config.data}"
                raise InputError(
                    [
                        spec.source.problem(
                            ("task", "steps", step),
                            f"step '{step}' has {count} row(s) in {where}; it needs at least 2 "
                            "(one to train on, one held out)",
                        )
                    ]
                )
        wanted = {config.only_step} if config.only_step else set(config.steps)
        used = list(dict.fromkeys(Path(e.file) for e in examples if e.step in wanted))
        return cls(config, examples, schemas, spec.train.seed, sha256_of(used))

    @staticmethod
    def _sources(spec: Spec) -> list[_DataFile]:
        """Every data file, `task.data`'s first, with the step each gives its rows."""
        assert isinstance(spec.task, PipelineConfig)
        config = spec.task
        sources: list[_DataFile] = []
        problems: list[Problem] = []
        if config.data is not None:
            path = require_data(spec, folder_ok=True)
            for file in _data_files(spec, path):
                step = step_named_by(file, config.steps)
                if step is not None and config.steps[step].data is not None:
                    problems.append(
                        spec.source.problem(
                            ("task", "steps", step, "data"),
                            f"step '{step}' has its own data, and task.data {path} holds "
                            f"{file.name} for it too; keep one of them",
                        )
                    )
                    continue
                sources.append(_DataFile(file, step))
        for step, step_spec in config.steps.items():
            if step_spec.data is not None:
                try:
                    own = require_data(spec, path=step_spec.data, field=f"task.steps.{step}.data")
                except InputError as exc:
                    problems += exc.problems
                    continue
                sources.append(_DataFile(own, step, own=True))
        if problems:
            raise InputError(problems)
        return sources

    @staticmethod
    def _check_row(
        source: _DataFile,
        number: int,
        row: dict[str, Any],
        config: PipelineConfig,
        schemas: dict[str, dict[str, Any]],
    ) -> Problem | StepExample:
        """The row as an example of its step, or the first thing wrong with it."""
        file = str(source.path)
        step = row.get("step", source.step)
        known = ", ".join(schemas)
        if step is None:
            return Problem(
                file,
                number,
                f"the row has no 'step' and the file name {source.path.name} names none of "
                f'task.steps ({known}); add "step": "<name>", name the file <step>.jsonl '
                "or <step>_train.jsonl, or give the step its own data (steps.<name>.data)",
            )
        if step not in schemas:
            return Problem(
                file,
                number,
                f"step '{step}' is not in the spec's task.steps ({known}); add it there or fix the row",
            )
        if source.own and step != source.step:
            return Problem(
                file,
                number,
                f"step '{step}' in the data of step '{source.step}' (task.steps.{source.step}"
                f".data); move the row to step '{step}''s data or fix its step",
            )
        if not source.own and config.steps[step].data is not None:
            return Problem(
                file,
                number,
                f"step '{step}' has its own data (task.steps.{step}.data); move this row there",
            )
        if not isinstance(row["instruction"], str) or not row["instruction"].strip():
            return Problem(file, number, "instruction must be a non-empty string")
        text = row.get("input", "")
        if not isinstance(text, str):
            return Problem(
                file,
                number,
                f"input must be a string (the text the instruction is about; may be empty), "
                f"got {type(text).__name__}",
            )
        output = row["output"]
        if isinstance(output, str):
            ok, output = parse_json_output(output)
            if not ok:
                return Problem(
                    file,
                    number,
                    f"output is a string that is not JSON ({_json_error(row['output'].strip())}); "
                    "write a JSON object, or a string holding one",
                )
        if not isinstance(output, dict):
            return Problem(
                file, number, f"output must be a JSON object, got {type(output).__name__}"
            )
        violation = schema_violation(validator_for(schemas[step])(schemas[step]), output)
        if violation is not None:
            return Problem(file, number, f"output fails step '{step}' schema {violation}")
        return StepExample(step, row["instruction"], output, file, number, text)

    @staticmethod
    def _row(example: StepExample) -> Row:
        return {
            "prompt": [{"role": "user", "content": example.prompt}],
            "completion": [
                {"role": "assistant", "content": json.dumps(example.output, ensure_ascii=False)}
            ],
        }

    def corpus(self) -> list[str]:
        """Prompts and serialised outputs."""
        texts = []
        for example in self.train_examples + self.eval_examples:
            texts += [example.prompt, json.dumps(example.output, ensure_ascii=False)]
        return texts

    def train_rows(self) -> list[Row]:
        """Every training example of every step, shuffled."""
        return [self._row(e) for e in self.train_examples]

    def sourced_rows(self) -> list[tuple[str, int, Row]]:
        """Every training and held-out example with its file and line."""
        return [(e.file, e.line, self._row(e)) for e in self.train_examples + self.eval_examples]

    def eval_rows(self) -> list[Row]:
        """Held-out examples of every step."""
        return [self._row(e) for e in self.eval_examples]

    def eval_cases(self) -> list[EvalCase]:
        """Held-out instructions, labelled by step."""
        return [
            EvalCase(
                messages=[{"role": "user", "content": e.prompt}],
                condition=e.step,
                expected=e.output,
            )
            for e in self.eval_examples
        ]

    def score(
        self, cases: list[EvalCase], responses: list[str]
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Per-step and overall JSON validity, schema validity and field accuracy."""
        per_step: dict[str, list[dict[str, float]]] = {step: [] for step in self.steps}
        samples = []
        for case, response in zip(cases, responses, strict=True):
            scores = score_step_output(response, case.expected, self.validators[case.condition])
            per_step[case.condition].append(scores)
            samples.append(
                {
                    "prompt": case.messages[-1]["content"],
                    "condition": case.condition,
                    "response": response,
                    "expected": case.expected,
                    **{k: bool(v) if k != "field_accuracy" else v for k, v in scores.items()},
                    "correct": scores["schema_valid"] == 1.0 and scores["field_accuracy"] == 1.0,
                }
            )
        metrics: dict[str, float] = {}
        for step, rows in per_step.items():
            for key in SCORES:
                metrics[f"{key}/{step}"] = sum(r[key] for r in rows) / len(rows) if rows else 0.0
        for key in SCORES:
            metrics[key] = sum(metrics[f"{key}/{s}"] for s in self.steps) / len(self.steps)
        metrics["pipeline_score"] = metrics["schema_valid"]
        return metrics | self.intervals(per_step), samples

    def intervals(self, per_step: dict[str, list[dict[str, float]]]) -> dict[str, float]:
        """95% intervals: Wilson for each step's scores, and the means over steps of their
        bounds for the scores averaged over steps (`intervals`)."""
        records = [
            {f"{key}/{step}": value for key, value in scores.items()}
            for step, rows in per_step.items()
            for scores in rows
        ]
        steps = list(self.steps)

        def composite(means: dict[str, float]) -> dict[str, float]:
            out = {}
            for key in SCORES:
                # A step with no held-out prompt scores 0, as in the metric itself.
                out[key] = sum(means.get(f"{key}/{s}", 0.0) for s in steps) / len(steps)
            out["pipeline_score"] = out["schema_valid"]
            return out

        return interval_metrics(records, composite)
