"""Reading a spec file: YAML with the line of every node, `--set` overrides, validation,
and every problem reported at once with its file and line."""

from __future__ import annotations

import copy
import difflib
import hashlib
import re
import types
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from ftray.config.files import path_problem, read_text
from ftray.config.search import Distribution, searchable
from ftray.config.spec import Spec, SpecSource, set_dotted, spec_model
from ftray.errors import InputError, Problem
from ftray.redaction import looks_secret, mask_override, mask_url_passwords


def _node_lines(
    node: yaml.Node, prefix: tuple[str, ...], out: dict[tuple[str, ...], int], seen: set[int]
) -> None:
    out.setdefault(prefix, node.start_mark.line + 1)
    if id(node) in seen:  # an alias that leads back to its own anchor
        return
    seen = seen | {id(node)}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = (*prefix, str(key.value))
            out[path] = key.start_mark.line + 1
            _node_lines(value, path, out, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _node_lines(item, (*prefix, str(index)), out, seen)


def duplicate_keys(node: yaml.Node, path: Path) -> list[Problem]:
    """A problem for every key given twice in one mapping (YAML would keep the last)."""
    problems: list[Problem] = []

    def walk(node: yaml.Node, prefix: str, seen: set[int]) -> None:
        if id(node) in seen:
            return
        seen = seen | {id(node)}
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    dotted = f"{prefix}.{key.value}" if prefix else str(key.value)
                    line = key.start_mark.line + 1
                    if key.value in first:
                        problems.append(
                            Problem(
                                str(path),
                                line,
                                f"'{dotted}' is given twice (first at line {first[key.value]}); "
                                "YAML would silently keep only the last: remove all but one",
                            )
                        )
                    else:
                        first[key.value] = line
                    walk(value, dotted, seen)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, f"{prefix}.{index}" if prefix else str(index), seen)

    walk(node, "", set())
    return problems


def parse_override(text: str, spec_path: Path) -> tuple[str, Any]:
    """Split `key.path=value`; the value is read as YAML (so `8` is an int, `1.0e-4` a float)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not re.fullmatch(r"[A-Za-z_][\w.]*", key.strip()):
        raise InputError.at(
            spec_path,
            None,
            f"--set {mask_override(text)!r}: write --set dotted.key=value, e.g. --set lora.r=16",
        )
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        # The parser's message quotes the value: only for a key that names no secret.
        detail = "" if looks_secret(key) else f" ({mask_url_passwords(str(exc))})"
        raise InputError.at(
            spec_path, None, f"--set {mask_override(text)}: value is not valid YAML{detail}"
        ) from None
    return key.strip(), parsed


def _task_kinds() -> list[str]:
    from ftray.tasks import task_configs

    return [config.kind_name() for config in task_configs()]


def _models_in(annotation: Any) -> tuple[list[type[BaseModel]], bool]:
    """The config classes a field's annotation can hold (through Optional, unions, tuples and
    dict values), and whether they sit under a mapping's keys."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation], False
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _models_in(args[0])
    if origin is dict and len(args) == 2:
        return _models_in(args[1])[0], True
    if origin in (Union, types.UnionType, tuple, list):
        found = [_models_in(arg) for arg in args if arg is not Ellipsis]
        return [m for models, _ in found for m in models], any(keyed for _, keyed in found)
    return [], False


def _kind_of(model: type[BaseModel]) -> str | None:
    kind_name = getattr(model, "kind_name", None)
    return kind_name() if callable(kind_name) else None


def known_fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The field names the section holding `loc` accepts (`loc` as pydantic reports it, union
    tags such as the task kind included); empty where it cannot tell."""
    from ftray.config.spec import spec_model

    models: list[type[BaseModel]] = [spec_model()]
    keyed = False
    for key in loc[:-1]:
        if isinstance(key, int) or str(key).startswith("function-after"):
            continue
        if keyed:  # a key of a mapping such as search.space
            keyed = False
            continue
        tagged = [m for m in models if _kind_of(m) == key]
        if tagged:
            models = tagged
            continue
        fields = [
            field
            for model in models
            for name, field in model.model_fields.items()
            if key in (name, field.alias)
        ]
        if not fields:
            return []
        found = [_models_in(field.annotation) for field in fields]
        models = [m for inner, _ in found for m in inner]
        keyed = any(k for _, k in found)
    names = {field.alias or name for model in models for name, field in model.model_fields.items()}
    return sorted(names)


def nearest_field(loc: tuple[Any, ...]) -> str | None:
    """The known field closest to the unknown last key of `loc`, if one is close."""
    name = str(loc[-1]) if loc else ""
    close = difflib.get_close_matches(name, known_fields_at(loc), n=1, cutoff=0.6)
    return close[0] if close else None


SELF_NAMED = (
    "objectives",
    "prune",
    "simulation_missing",
    "simulation_unused",
    "simulated_register",
)
"""Error kinds whose message names the fields itself."""


def describe_error(error: dict[str, Any]) -> str:
    """One pydantic error as a sentence that names the field and the fix."""
    kind = error["type"]
    loc = ".".join(str(k) for k in error["loc"] if not str(k).startswith("function-after"))
    value = error.get("input")
    if kind == "extra_forbidden":
        nearest = error.get("nearest")
        if nearest:
            parent = loc.rpartition(".")[0]
            return (
                f"unknown field '{loc}'; did you mean '{parent + '.' if parent else ''}{nearest}'? "
                "(see README 'The spec')"
            )
        return f"unknown field '{loc}'; remove it or check its spelling (see README 'The spec')"
    if kind == "missing":
        return f"'{loc}' is required"
    kinds = ", ".join(repr(k) for k in _task_kinds())
    if kind == "union_tag_invalid":
        return f"task.kind '{error.get('ctx', {}).get('tag')}' is not one of {kinds}"
    if kind == "union_tag_not_found":
        return f"task.kind is required: one of {kinds}"
    if kind == "literal_error" and loc == "task.kind":
        return f"task.kind {value!r} is not one of {kinds}"
    prefix = f"{loc} " if loc else ""
    if kind in SELF_NAMED:
        return error["msg"]
    if kind in ("number_is_text", "number_is_bool"):
        return f"{prefix}{error['msg']}"
    shown = f" (got {value!r})" if value is not None and not isinstance(value, dict | list) else ""
    return f"{prefix}{error['msg'][0].lower()}{error['msg'][1:]}{shown}"


def clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """A pydantic error location as a spec path (no union tags, no validator names)."""
    # Discriminated unions insert the tag ('trigger') after 'task'; drop it for line lookup.
    parts = list(loc)
    if len(parts) >= 2 and parts[0] == "task" and parts[1] in _task_kinds():
        del parts[1]
    return tuple(p for p in parts if not str(p).startswith("function-after"))


def validation_problems(exc: ValidationError, source: SpecSource) -> InputError:
    """Every error of a failed validation, located in the spec file."""
    problems = []
    for err in exc.errors():
        loc = clean_loc(err["loc"])
        nearest = nearest_field(err["loc"]) if err["type"] == "extra_forbidden" else None
        problems.append(
            source.problem(loc, describe_error({**err, "loc": loc, "nearest": nearest}))
        )
    return InputError(problems)


def searched_value_problems(
    raw: dict[str, Any], failed: ValidationError, source: SpecSource, context: dict[str, Any]
) -> list[Problem]:
    """Search dimensions whose values are not valid for their field, judged on a spec that
    does not validate as a whole, so they are reported beside its field errors instead of
    only once those are fixed.

    A dimension's value is judged by the errors at its own field alone (the spec's other
    errors are there with any value); a field that already fails with the value the spec
    gives it, or that the spec does not have, is left to the spec's own error, and the
    other search checks run once the spec is valid."""
    search = raw.get("search")
    space = search.get("space") if isinstance(search, dict) else None
    if not isinstance(space, dict):
        return []
    broken = {clean_loc(error["loc"]) for error in failed.errors()}
    problems: list[Problem] = []
    for dotted, given in space.items():
        field = tuple(str(dotted).split("."))
        if field in broken or not searchable(str(dotted)):
            continue
        try:
            distribution = Distribution.model_validate(given)
        except ValidationError:
            continue  # the dimension itself is one of the spec's errors
        for value in distribution.samples():
            candidate = copy.deepcopy(raw)
            set_dotted(candidate, str(dotted), value)
            try:
                spec_model().model_validate(candidate, context=context)
            except ValidationError as exc:
                error = next(
                    (
                        e
                        for e in exc.errors()
                        if clean_loc(e["loc"]) == field and e["type"] != "extra_forbidden"
                    ),
                    None,
                )
                if error is not None:
                    message = distribution.value_problem(str(dotted), value, error)
                    problems.append(source.problem(("search", "space", dotted), message))
                    break
    return problems


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Spec:
    """Read, override and validate a spec file; raise InputError listing every problem."""
    path = Path(path)
    reason = path_problem(path)
    if reason == "not found":
        raise InputError.at(path, None, "spec file not found; check the path")
    if reason is not None:
        fix = "; name a YAML spec file" if "folder" in reason else ""
        raise InputError.at(path, None, f"spec {reason}{fix}")
    text = read_text(path, "spec")
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
    repeated: list[Problem] = []
    if node is not None:
        repeated = duplicate_keys(node, path)
        _node_lines(node, (), lines, set())
    sha = hashlib.sha256(text.encode())
    for override in overrides:
        sha.update(b"\0" + override.encode())
    source = SpecSource(path=path, lines=lines, sha256=sha.hexdigest(), overrides=tuple(overrides))

    for override in overrides:
        key, value = parse_override(override, path)
        set_dotted(raw, key, value)

    context = {"base_dir": path.resolve().parent}
    try:
        spec = spec_model().model_validate(raw, context=context)
    except ValidationError as exc:
        fields = validation_problems(exc, source).problems
        searched = searched_value_problems(raw, exc, source, context)
        raise InputError(repeated + fields + searched) from None
    if repeated:
        raise InputError(repeated)
    return spec.attach_source(source)
