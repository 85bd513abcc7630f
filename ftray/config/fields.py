"""Building blocks every config section uses: frozen models, numbers that refuse text,
and paths resolved against the spec's folder."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationInfo
from pydantic_core import PydanticCustomError

from ftray.config.files import resolved

_EXPONENT_WITHOUT_DOT = re.compile(r"^\s*([+-]?\d+)([eE][+-]?\d+)\s*$")


def reject_text_number(value: Any) -> Any:
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


Float = Annotated[float, BeforeValidator(reject_text_number)]
Int = Annotated[int, BeforeValidator(reject_text_number)]


class Frozen(BaseModel):
    """A config section: unknown fields are errors, values never change after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def resolve_path(value: str, info: ValidationInfo) -> str:
    """Make a spec-relative path absolute (the folder comes from the validation context)."""
    base = (info.context or {}).get("base_dir")
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return str(resolved(path)) if base is not None else str(path)
