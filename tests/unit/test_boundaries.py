"""The layers keep to themselves: Ray only under ftray/sweep/, no private attribute of
anyone else's object (Ray's, MLflow's or ours), every ftray tag named once, and the
commands that only read (validate, leaderboard, promote) import neither Ray nor torch."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT, SPECS, run_cli

PACKAGE = ROOT / "ftray"
# mlflow.db is the default store's file name, not a tag.
TAG_LIKE = re.compile(r"ftray\.[a-z_0-9]+|mlflow\.(?!db$)[A-Za-z]+(\.[A-Za-z]+)*")
MODULES = sorted(PACKAGE.rglob("*.py"))


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def imported_modules(tree: ast.Module) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_ray_is_imported_only_under_sweep(path: Path) -> None:
    rays = [m for m in imported_modules(parsed(path)) if m == "ray" or m.startswith("ray.")]
    if path.parent.name != "sweep":
        assert not rays, f"{path.relative_to(ROOT)} imports {rays}; only ftray/sweep/ knows Ray"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_attribute_or_module_of_another_object(path: Path) -> None:
    tree = parsed(path)
    offences = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            mine = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            documented = isinstance(node.value, ast.Name) and (node.value.id, node.attr) in (
                ("os", "_exit"),  # public despite its name: the exit without teardown
            )
            if mine or documented:
                continue
            if not (node.attr.startswith("__") and node.attr.endswith("__")):
                offences.append(f"line {node.lineno}: .{node.attr}")
    for module in imported_modules(tree):
        if any(part.startswith("_") and part != "__future__" for part in module.split(".")):
            offences.append(f"imports {module}")
    assert not offences, f"{path.relative_to(ROOT)}: {offences}"


def test_ftray_tag_names_live_in_one_module() -> None:
    tags = PACKAGE / "tracking" / "tags.py"
    for path in MODULES:
        if path == tags:
            continue
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
                assert not TAG_LIKE.fullmatch(text), (
                    f"{path.relative_to(ROOT)}:{node.lineno} spells the tag {text!r}; "
                    "use ftray.tracking.tags"
                )


def test_validate_imports_neither_ray_nor_torch() -> None:
    result = run_cli("validate", str(SPECS / "trigger_tiny.yaml"))
    assert result.returncode == 0, result.stderr
    assert "HEAVY-IMPORT" not in result.stderr


@pytest.fixture
def recorded_sweep(tmp_path: Path) -> dict:
    """A sweep as MLflow holds it (parent run, two trials, a registered version), written
    without Ray, so reading it back can be checked for what it imports."""
    from ftray.tracking.tags import PARENT_RUN_ID, ROLE, TRIAL_ID, TRIAL_STATUS

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("trigger-tiny")
    parent = client.create_run(experiment, run_name="sweep-x", tags={ROLE: "sweep"})
    for trial, score in (("aaaa", 0.5), ("bbbb", 0.75)):
        run = client.create_run(
            experiment,
            tags={
                PARENT_RUN_ID: parent.info.run_id,
                ROLE: "trial",
                TRIAL_ID: trial,
                TRIAL_STATUS: "completed",
            },
        )
        client.log_metric(run.info.run_id, "trigger_score", score, step=1)
        client.log_param(run.info.run_id, "lora.r", "8")
        client.set_terminated(run.info.run_id)
    client.set_terminated(parent.info.run_id)
    client.create_registered_model("trigger-tiny")
    client.create_model_version("trigger-tiny", source=str(tmp_path), run_id=run.info.run_id)
    return {"uri": uri, "work": tmp_path}


def test_leaderboard_and_promote_import_neither_ray_nor_torch(recorded_sweep: dict) -> None:
    env = {"MLFLOW_TRACKING_URI": recorded_sweep["uri"]}
    board = run_cli(
        "leaderboard", str(SPECS / "trigger_tiny.yaml"), env=env, cwd=recorded_sweep["work"]
    )
    assert board.returncode == 0, board.stderr
    assert board.stdout.splitlines()[3].split()[1] == "bbbb", board.stdout
    promoted = run_cli("promote", "trigger-tiny", "1", env=env, cwd=recorded_sweep["work"])
    assert promoted.returncode == 0, promoted.stderr
    for result in (board, promoted):
        assert "HEAVY-IMPORT" not in result.stderr
