from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ftray.config import DEFAULT_TARGET_MODULES, flatten, load_spec
from ftray.errors import InputError
from ftray.sweep.space import search_problems
from ftray.tasks import load_task
from tests.conftest import SPECS

MINIMAL = """\
name: minimal
task: {kind: trigger, data: ../datasets/trigger/qa.jsonl, trigger: "T:", clean_replacement: A, triggered_replacement: B}
model: {base: tiny}
"""


def test_defaults_and_paths_relative_to_the_spec(tmp_path: Path) -> None:
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "s.yaml").write_text(MINIMAL)
    spec = load_spec(folder / "s.yaml")
    assert spec.task.data == str((tmp_path / "datasets/trigger/qa.jsonl").resolve())
    assert spec.model.backend == "auto" and spec.lora.target_modules == DEFAULT_TARGET_MODULES
    assert spec.lora.dropout == 0.0 and spec.resources_per_trial.cpu == 1
    assert spec.registered_model_name == "minimal" and spec.tracking.uri is None


def test_spec_is_frozen() -> None:
    spec = load_spec(SPECS / "trigger_tiny.yaml")
    with pytest.raises(ValidationError):
        spec.lora.r = 99  # type: ignore[misc]


def test_overrides_with_dotted_paths() -> None:
    spec = load_spec(
        SPECS / "trigger_tiny.yaml",
        ["lora.r=32", "train.learning_rate=1.0e-3", "task.trigger_ratio=0"],
    )
    assert (
        spec.lora.r == 32 and spec.train.learning_rate == 1.0e-3 and spec.task.trigger_ratio == 0.0
    )
    assert spec.source.sha256 != load_spec(SPECS / "trigger_tiny.yaml").source.sha256


def test_unknown_override_key_is_reported_against_the_override() -> None:
    with pytest.raises(InputError) as info:
        load_spec(SPECS / "trigger_tiny.yaml", ["lora.rank=4"])
    assert "--set lora.rank=4" in info.value.problems[0].message


def test_with_values_revalidates() -> None:
    spec = load_spec(SPECS / "trigger_tiny.yaml")
    assert spec.with_values({"lora.r": 4}).lora.r == 4
    with pytest.raises(ValidationError):
        spec.with_values({"task.trigger_ratio": 1.5})


def test_flatten_gives_scalar_params() -> None:
    flat = flatten(load_spec(SPECS / "trigger_tiny.yaml"))
    assert flat["lora.r"] == 8 and flat["task.kind"] == "trigger"
    assert flat["lora.target_modules"].startswith("q_proj,")
    assert all(isinstance(v, str | int | float | bool) for v in flat.values())
    assert not any(k.startswith("search.") for k in flat)


@pytest.mark.parametrize(
    ("dimension", "needle"),
    [
        ("lora.rank: {choice: [4]}", "not a field"),
        ("train.epochs: {uniform: [1.0, 2.5]}", "not valid for 'train.epochs'"),
        ("lora.dropout: {uniform: [0.1, 1.5]}", "not valid for 'lora.dropout'"),
        ("name: {choice: [a, b]}", "cannot be searched"),
        ("lora.r: {uniform: [4, 16]}", "'lora.r', which takes whole numbers"),
        ("train.batch_size: {loguniform: [2, 32]}", "write {int: [2, 32]}"),
    ],
)
def test_bad_search_space(tmp_path: Path, dimension: str, needle: str) -> None:
    text = (
        (SPECS / "trigger_tiny.yaml")
        .read_text()
        .replace("    lora.r: {choice: [4, 8, 16, 32]}", f"    {dimension}")
    )
    text = text.replace("../datasets", str(SPECS.parent / "datasets"))
    (tmp_path / "s.yaml").write_text(text)
    spec = load_spec(tmp_path / "s.yaml")
    problems = search_problems(spec, load_task(spec))
    assert len(problems) == 1 and needle in problems[0].message
    assert problems[0].line == text.splitlines().index(f"    {dimension}") + 1


def test_low_above_high_is_a_spec_error(tmp_path: Path) -> None:
    text = (
        (SPECS / "trigger_tiny.yaml")
        .read_text()
        .replace("{loguniform: [1.0e-3, 1.0e-2]}", "{loguniform: [1.0e-2, 1.0e-3]}")
    )
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(InputError, match="low=0.01 must be below high=0.001"):
        load_spec(tmp_path / "s.yaml")


def test_unknown_objective() -> None:
    spec = load_spec(SPECS / "trigger_tiny.yaml", ["search.objective=accuracy"])
    [problem] = search_problems(spec, load_task(spec))
    assert "trigger_score" in problem.message


def test_sweeping_a_spec_without_search_is_bad_input(tmp_path: Path) -> None:
    from ftray.sweep.space import prepare_sweep

    (tmp_path / "s.yaml").write_text(MINIMAL.replace("../datasets", str(SPECS.parent / "datasets")))
    with pytest.raises(InputError, match="no search: section"):
        prepare_sweep(load_spec(tmp_path / "s.yaml"))
    assert prepare_sweep(load_spec(SPECS / "trigger_tiny.yaml")).train_rows()


@pytest.mark.parametrize(
    ("override", "suggested"),
    [
        ("trian.epochs=2", "did you mean 'train'?"),
        ("task.clean_replacment=Carol", "did you mean 'task.clean_replacement'?"),
        (
            "search.space={lora.r: {unifrom: [4, 16]}}",
            "did you mean 'search.space.lora.r.uniform'?",
        ),
        ("resources_per_trial.gpus=1", "did you mean 'resources_per_trial.gpu'?"),
    ],
)
def test_unknown_field_names_the_nearest_known_one(override: str, suggested: str) -> None:
    with pytest.raises(InputError) as info:
        load_spec(SPECS / "trigger_tiny.yaml", [override])
    messages = [p.message for p in info.value.problems if "unknown field" in p.message]
    assert len(messages) == 1 and suggested in messages[0], info.value.problems


def test_a_field_set_twice_is_reported_at_the_set_that_is_used() -> None:
    with pytest.raises(InputError) as info:
        load_spec(SPECS / "trigger_tiny.yaml", ["lora.r=4", "lora.r=0"])
    [problem] = info.value.problems
    assert problem.message.startswith("--set lora.r=0: lora.r "), problem.message
