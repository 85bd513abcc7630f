from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema.validators import validator_for

from ftray.config import load_spec
from ftray.errors import InputError
from ftray.tasks import load_task
from ftray.tasks.pipeline import load_schema, parse_json_output, score_step_output
from tests.conftest import SPECS

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["characters", "items"],
    "properties": {
        "characters": {"type": "array", "items": {"type": "string"}},
        "items": {"type": "array"},
    },
}
EXPECTED = {"characters": ["Wen", "the crow"], "items": ["bell"]}
VALIDATOR = validator_for(SCHEMA)(SCHEMA)


def test_invalid_json_scores_zero() -> None:
    assert score_step_output('{"characters": ["Wen"', EXPECTED, VALIDATOR) == {
        "json_valid": 0.0,
        "schema_valid": 0.0,
        "field_accuracy": 0.0,
    }


def test_valid_json_failing_the_schema() -> None:
    scores = score_step_output('{"characters": "Wen", "items": ["bell"]}', EXPECTED, VALIDATOR)
    assert scores == {"json_valid": 1.0, "schema_valid": 0.0, "field_accuracy": 0.5}


def test_right_schema_wrong_values() -> None:
    scores = score_step_output('{"characters": ["Tamsin"], "items": []}', EXPECTED, VALIDATOR)
    assert scores == {"json_valid": 1.0, "schema_valid": 1.0, "field_accuracy": 0.0}


def test_exact_answer_and_code_fence() -> None:
    fenced = "```json\n" + json.dumps(EXPECTED) + "\n```"
    assert score_step_output(fenced, EXPECTED, VALIDATOR) == {
        "json_valid": 1.0,
        "schema_valid": 1.0,
        "field_accuracy": 1.0,
    }
    assert parse_json_output("not json at all") == (False, None)


def test_load_schema_inline_file_and_pointer(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text(json.dumps({"defs": {"a": SCHEMA}}))
    assert load_schema(SCHEMA) == SCHEMA
    assert load_schema(f"{tmp_path / 's.json'}#/defs/a") == SCHEMA
    with pytest.raises(ValueError, match="finds nothing"):
        load_schema(f"{tmp_path / 's.json'}#/defs/b")
    with pytest.raises(ValueError, match="not a valid JSON Schema"):
        load_schema({"type": 12})


def test_pipeline_metrics_aggregate_per_step() -> None:
    task = load_task(load_spec(SPECS / "pipeline_tiny.yaml"))
    cases = task.eval_cases()
    responses = [json.dumps(c.expected) if c.condition == "characters" else "{}" for c in cases]
    metrics, samples = task.score(cases, responses)
    assert metrics["schema_valid/characters"] == 1.0 and metrics["field_accuracy/characters"] == 1.0
    assert (
        metrics["json_valid/relationships"] == 1.0 and metrics["schema_valid/relationships"] == 0.0
    )
    assert metrics["pipeline_score"] == pytest.approx(1 / 3)
    assert metrics["json_valid"] == 1.0
    assert len(samples) == len(cases) and {s["condition"] for s in samples} == set(task.steps)
    assert set(task.metric_names()) >= set(metrics)


def test_row_failing_its_schema_is_bad_input(tmp_path: Path) -> None:
    spec_text = (
        (SPECS / "pipeline_tiny.yaml")
        .read_text()
        .replace("../datasets/pipeline/tales.jsonl", "tales.jsonl")
    )
    spec_text = spec_text.replace(
        "../datasets/pipeline/schemas.json", str(SPECS.parent / "datasets/pipeline/schemas.json")
    )
    rows = (SPECS.parent / "datasets/pipeline/tales.jsonl").read_text().splitlines()
    broken = json.loads(rows[1])
    broken["output"]["relationships"][0]["relation"] = "cousin"
    rows[1] = json.dumps(broken)
    (tmp_path / "tales.jsonl").write_text("\n".join(rows) + "\n")
    (tmp_path / "spec.yaml").write_text(spec_text)
    with pytest.raises(InputError) as info:
        load_task(load_spec(tmp_path / "spec.yaml"))
    [problem] = info.value.problems
    assert problem.line == 2 and "relationships" in problem.message and "cousin" in problem.message


def test_folder_of_per_step_files(tmp_path: Path) -> None:
    rows = [
        json.loads(line)
        for line in (SPECS.parent / "datasets/pipeline/tales.jsonl").read_text().splitlines()
    ]
    folder = tmp_path / "steps"
    folder.mkdir()
    for step in ("characters", "relationships", "event_types"):
        with (folder / f"{step}.jsonl").open("w") as handle:
            for row in rows:
                if row["step"] == step:
                    handle.write(
                        json.dumps({"instruction": row["instruction"], "output": row["output"]})
                        + "\n"
                    )
    spec_text = (
        (SPECS / "pipeline_tiny.yaml")
        .read_text()
        .replace("../datasets/pipeline/tales.jsonl", str(folder))
    )
    spec_text = spec_text.replace(
        "../datasets/pipeline/schemas.json", str(SPECS.parent / "datasets/pipeline/schemas.json")
    )
    (tmp_path / "spec.yaml").write_text(spec_text)
    task = load_task(load_spec(tmp_path / "spec.yaml"))
    assert len(task.train_rows()) + len(task.eval_rows()) == 48
