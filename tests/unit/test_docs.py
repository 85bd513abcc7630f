"""The docs keep up with the code: every field of the spec's models is in docs/spec.md, every
field docs/spec.md lists is one of them, every module under ftray/ is in the Layout of
docs/architecture.md, and the relative links of README.md and docs/ lead to files."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any, Union

from pydantic import BaseModel

from ftray.config.search import Condition
from ftray.config.spec import Spec
from ftray.tasks import task_configs
from tests.conftest import ROOT

DOCS = ROOT / "docs"
TEXT_MODELS = (Condition,)
"""Models a spec writes as one string (`where: ["false_trigger_rate <= 0.05"]`)."""


def _models_in(annotation: Any) -> tuple[list[type[BaseModel]], str]:
    """The models an annotation holds, and how a dotted name reaches them: "" for a field
    that is one, "[]" for a list of them, ".<name>" for a mapping of names to them."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _models_in(args[0])
    if origin in (Union, types.UnionType):
        found = [_models_in(a) for a in args]
        models = [m for ms, _ in found for m in ms]
        return models, next((how for ms, how in found if ms), "")
    if origin in (tuple, list) and args:
        models, _ = _models_in(args[0])
        return models, "[]"
    if origin is dict and len(args) == 2:
        models, _ = _models_in(args[1])
        return models, ".<name>"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return ([] if issubclass(annotation, TEXT_MODELS) else [annotation]), ""
    return [], ""


def field_names(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every dotted name a spec can write under `model`, as the YAML spells it (aliases)."""
    names: set[str] = set()
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{info.alias or name}"
        names.add(dotted)
        models, how = _models_in(info.annotation)
        for inner in models:
            names |= field_names(inner, f"{dotted}{how}.")
    return names


def spec_field_names() -> set[str]:
    names = field_names(Spec) - {"task"}
    for config in task_configs():
        names |= field_names(config, "task.")
    return names | {"task"}


def documented_fields() -> set[str]:
    """The first cell of every row of docs/spec.md's field tables."""
    text = (DOCS / "spec.md").read_text(encoding="utf-8")
    section = text.split("## Every field", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", section, re.MULTILINE))


def test_every_spec_field_is_in_the_spec_reference() -> None:
    fields = spec_field_names()
    assert {"search.select.tie_break[].metric", "task.steps.<name>.schema"} <= fields
    assert {"tracking.register", "search.space.<name>.int", "task.tools"} <= fields
    assert sorted(fields - documented_fields()) == []


def test_the_spec_reference_lists_only_fields() -> None:
    assert sorted(documented_fields() - spec_field_names()) == []


def test_the_layout_lists_every_module() -> None:
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    layout = text.split("## Layout", 1)[1].split("```", 2)[1]
    listed: set[str] = set()
    folders: list[str] = []
    for line in layout.splitlines():
        match = re.match(r"^( *)(\S+)", line)
        if match is None:
            continue
        depth, entry = len(match[1]) // 2, match[2]
        del folders[depth:]
        if entry.endswith("/"):
            folders.append(entry.rstrip("/"))
        elif entry.endswith(".py"):
            listed.add("/".join([*folders, entry]))
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "ftray").rglob("*.py")}
    assert sorted(modules - listed) == [], "modules missing from docs/architecture.md's Layout"
    assert sorted(listed - modules) == [], "Layout lists modules that do not exist"


LINK = re.compile(r"\]\(([^)\s]+)\)")


def documents() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted(DOCS.rglob("*.md"))]


def test_relative_links_lead_to_files_and_headings() -> None:
    broken = []
    for document in documents():
        for target in LINK.findall(document.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            file = (document.parent / path).resolve() if path else document
            if not file.exists():
                broken.append(f"{document.relative_to(ROOT)}: {target}")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{document.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []


def anchors(file: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    in_code = False
    for line in file.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().lower()
        slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        found.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
    return found
