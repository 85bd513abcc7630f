"""Every spec in search_spaces/ and every file in datasets/ is a test fixture."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftray.config import load_spec
from ftray.sweep.space import check_search
from ftray.tasks import load_task
from ftray.tasks.chat import ChatConfig
from ftray.tasks.pipeline import PipelineConfig
from tests.conftest import DATASETS, SPECS

SPEC_FILES = sorted(SPECS.glob("*.yaml"))
DATA_FILES = sorted(p for p in DATASETS.rglob("*") if p.is_file())


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.name)
def test_shipped_spec_validates(path: Path) -> None:
    spec = load_spec(path)
    task = load_task(spec)
    check_search(spec, task)
    assert task.train_rows() and task.eval_cases()


def _files_used_by(path: Path) -> set[Path]:
    spec = load_spec(path)
    used = {Path(spec.task.data)} if spec.task.data else set()
    if isinstance(spec.task, PipelineConfig):
        used |= {
            Path(s.json_schema.partition("#")[0])
            for s in spec.task.steps.values()
            if isinstance(s.json_schema, str)
        }
        used |= {Path(s.data) for s in spec.task.steps.values() if s.data}
    if isinstance(spec.task, ChatConfig) and spec.task.tools:
        used.add(Path(spec.task.tools))
    return used


@pytest.mark.parametrize("path", DATA_FILES, ids=lambda p: str(p.relative_to(DATASETS)))
def test_every_dataset_file_is_validated_by_a_shipped_spec(path: Path) -> None:
    # A dataset file is validated when a shipped spec that uses it validates (test above).
    used = set().union(*(_files_used_by(s) for s in SPEC_FILES))
    assert path.resolve() in used, f"{path} is shipped but no spec in search_spaces/ uses it"


def test_there_is_something_to_check() -> None:
    assert len(SPEC_FILES) >= 2 and len(DATA_FILES) >= 3


def test_the_docs_explain_every_trial_status() -> None:
    from ftray.tracking.tags import TrialStatus
    from tests.conftest import ROOT

    sweeps = (ROOT / "docs" / "sweeps.md").read_text()
    assert "## Trial statuses" in sweeps
    table = sweeps.split("## Trial statuses", 1)[-1].split("\n\n#", 1)[0]
    rows = {line.split("|")[1].strip(" `") for line in table.splitlines() if line.startswith("| `")}
    assert rows == {status.value for status in TrialStatus}


CURVE_FILES = sorted((SPECS.parent / "bench" / "curves").glob("*.json"))


@pytest.mark.parametrize("path", CURVE_FILES, ids=lambda p: p.name)
def test_shipped_curves_simulate_their_spec(path: Path) -> None:
    """Each recorded curves file names the spec and the command that recorded it, holds at
    least 40 configurations of its space (some with a second seed, for the noise), and
    simulates a sweep of that spec as it ships."""
    import json

    from ftray.sweep.space import prepare_sweep
    from ftray.training.simulated import load_curves

    record = json.loads(path.read_text())
    assert record["command"].startswith(".venv/bin/python bench/record_curves.py")
    assert record["recorded"] and (SPECS.parent / record["spec"]).is_file()
    model = load_curves(str(path))
    assert len(model.configs) >= 40
    assert any(len(group) > 1 for _, group in model.configs)
    assert any(value > 0 for values in model.noise.values() for value in values)
    relative = path.relative_to(SPECS.parent)
    spec = load_spec(
        SPECS.parent / record["spec"],
        ["model.backend=simulated", f"model.simulation={{curves: ../{relative}}}"],
    )
    assert spec.model.simulation is not None and Path(spec.model.simulation.curves) == path
    prepare_sweep(spec)  # its epochs, its metrics and its space: exit 2 otherwise


def test_curves_are_shipped() -> None:
    assert {p.stem for p in CURVE_FILES} >= {"trigger_tiny", "pipeline_tiny"}
