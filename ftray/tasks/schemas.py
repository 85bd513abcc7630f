"""JSON Schema checks the tasks share: is a schema valid, and where does a value fail one."""

from __future__ import annotations

from typing import Any

import jsonschema
from jsonschema.validators import validator_for


def check_json_schema(schema: Any) -> None:
    """ValueError unless `schema` is a JSON Schema object its own metaschema accepts."""
    if not isinstance(schema, dict):
        raise ValueError(f"a JSON Schema must be an object, got {type(schema).__name__}")
    try:
        validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"not a valid JSON Schema: {exc.message}") from None


def schema_violation(validator: Any, value: Any) -> str | None:
    """`at <path>: <message>` for the most relevant way `value` fails, else None."""
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
    return f"at {where}: {error.message}"
