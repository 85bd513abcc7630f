from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema.validators import validator_for

from ftray.config import load_spec
from ftray.errors import InputError
from ftray.tasks import load_task
from ftray.tasks.pipeline import load_schema, parse_json_output, score_step_output
from tests.conftest import SPECS, run_cli

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


SCHEMAS = SPECS.parent / "datasets/pipeline/schemas.json"
TALES = [
    json.loads(line)
    for line in (SPECS.parent / "datasets/pipeline/tales.jsonl").read_text().splitlines()
]
STEPS = ("characters", "relationships", "event_types")


def alpaca_rows(step: str, with_input: bool) -> list[dict]:
    """The sample tales of `step` as Alpaca rows: the tale in `input` or left in the
    instruction (`input` empty), the output a string holding JSON."""
    rows = []
    for tale in TALES:
        if tale["step"] != step:
            continue
        instruction, _, text = tale["instruction"].partition("\n\n")
        if not with_input:
            instruction, text = tale["instruction"], ""
        rows.append(
            {"instruction": instruction, "input": text, "output": json.dumps(tale["output"])}
        )
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def pipeline_spec(tmp_path: Path, data: str | None, own: dict[str, Path] | None = None) -> Path:
    """A pipeline spec over the sample schemas, reading `data` and each step's `own` file."""
    lines = ["name: steps-test", "task:", "  kind: pipeline"]
    if data is not None:
        lines.append(f"  data: {data}")
    lines.append("  steps:")
    for step in STEPS:
        lines.append(f"    {step}:")
        lines.append(f"      schema: {SCHEMAS}#/{step}")
        if own and step in own:
            lines.append(f"      data: {own[step]}")
    lines += ["model: {base: tiny}", ""]
    path = tmp_path / "spec.yaml"
    path.write_text("\n".join(lines))
    return path


def problems_of(spec: Path) -> list:
    with pytest.raises(InputError) as info:
        load_task(load_spec(spec))
    return info.value.problems


def test_alpaca_rows_with_json_string_outputs_and_steps_from_file_names(tmp_path: Path) -> None:
    folder = tmp_path / "training_data"
    write_rows(folder / "characters_train.jsonl", alpaca_rows("characters", with_input=True))
    write_rows(folder / "relationships.jsonl", alpaca_rows("relationships", with_input=False))
    write_rows(folder / "event_types_train.jsonl", alpaca_rows("event_types", with_input=True))
    task = load_task(load_spec(pipeline_spec(tmp_path, str(folder))))
    examples = task.train_examples + task.eval_examples
    assert len(examples) == 48
    by_prompt = {e.prompt: e for e in examples}
    for tale in TALES:
        # With `input`, the user message is the instruction, a blank line, then the input:
        # the same prompt as the row that holds the tale in its instruction.
        example = by_prompt[tale["instruction"]]
        assert example.step == tale["step"] and example.output == tale["output"]
    with_input = next(e for e in examples if e.step == "characters")
    assert with_input.input.startswith("Tale: ") and "\n\nTale: " not in with_input.instruction
    without = next(e for e in examples if e.step == "relationships")
    assert without.input == "" and without.prompt == without.instruction
    assert {c.messages[0]["content"] for c in task.eval_cases()} <= set(by_prompt)
    assert json.loads(task.train_rows()[0]["completion"][0]["content"]) in [
        t["output"] for t in TALES
    ]


def test_alpaca_rows_in_one_file_with_a_step_each(tmp_path: Path) -> None:
    rows = [{**row, "step": step} for step in STEPS for row in alpaca_rows(step, with_input=False)]
    data = write_rows(tmp_path / "all.jsonl", rows)
    task = load_task(load_spec(pipeline_spec(tmp_path, str(data))))
    assert {e.prompt for e in task.train_examples + task.eval_examples} == {
        t["instruction"] for t in TALES
    }


def test_a_string_output_that_is_not_json_exits_2_at_its_line(tmp_path: Path) -> None:
    rows = alpaca_rows("characters", with_input=True)
    rows[2]["output"] = '{"characters": ["Wen"], "items": [}'
    data = write_rows(tmp_path / "characters_train.jsonl", rows)
    own = {step: write_rows(tmp_path / f"{step}.data", alpaca_rows(step, True)) for step in STEPS}
    own["characters"] = data
    result = run_cli("validate", str(pipeline_spec(tmp_path, None, own)))
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {data}:3: output is a string that is not JSON (")
    assert "Traceback" not in result.stderr


def test_alpaca_input_must_be_text(tmp_path: Path) -> None:
    rows = alpaca_rows("characters", with_input=True)
    rows[0]["input"] = {"tale": "..."}
    folder = tmp_path / "data"
    write_rows(folder / "characters.jsonl", rows)
    for step in STEPS[1:]:
        write_rows(folder / f"{step}.jsonl", alpaca_rows(step, True))
    [problem] = problems_of(pipeline_spec(tmp_path, str(folder)))
    assert problem.line == 1 and problem.message.startswith("input must be a string")


def test_a_file_whose_name_names_no_step_needs_a_step_per_row(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    write_rows(folder / "characters.jsonl", alpaca_rows("characters", True))
    write_rows(folder / "relationships.jsonl", alpaca_rows("relationships", True))
    write_rows(folder / "events_train.jsonl", alpaca_rows("event_types", True)[:1])
    [problem] = problems_of(pipeline_spec(tmp_path, str(folder)))
    assert problem.file == str(folder / "events_train.jsonl") and problem.line == 1
    assert "names none of task.steps" in problem.message


def test_each_step_has_its_own_data_and_task_data_is_optional(tmp_path: Path) -> None:
    own = {
        step: write_rows(tmp_path / f"{step}_train.jsonl", alpaca_rows(step, True))
        for step in STEPS
    }
    task = load_task(load_spec(pipeline_spec(tmp_path, None, own)))
    assert len(task.train_rows()) + len(task.eval_rows()) == 48
    assert {e.file for e in task.train_examples} == {str(p) for p in own.values()}


def test_own_data_next_to_task_data(tmp_path: Path) -> None:
    rows = [row for row in TALES if row["step"] != "event_types"]
    data = write_rows(tmp_path / "tales.jsonl", rows)
    own = {"event_types": write_rows(tmp_path / "ev.jsonl", alpaca_rows("event_types", False))}
    task = load_task(load_spec(pipeline_spec(tmp_path, str(data), own)))
    assert len(task.train_rows()) + len(task.eval_rows()) == 48

    # A row of task.data for a step that has its own data belongs there.
    write_rows(tmp_path / "tales.jsonl", TALES)
    problems = problems_of(pipeline_spec(tmp_path, str(data), own))
    assert problems[0].file == str(data) and problems[0].line == 3
    assert "has its own data (task.steps.event_types.data)" in problems[0].message


def test_step_data_problems(tmp_path: Path) -> None:
    own = {"characters": write_rows(tmp_path / "c.jsonl", alpaca_rows("characters", True))}
    [problem] = problems_of(pipeline_spec(tmp_path, None, own))
    assert problem.line == 2 and "task.data is required unless every step has its own data" in (
        problem.message
    )
    assert "relationships, event_types have none" in problem.message

    own = {step: tmp_path / f"{step}.jsonl" for step in STEPS}
    write_rows(own["characters"], alpaca_rows("characters", True))
    write_rows(own["event_types"], alpaca_rows("event_types", True))
    rows = alpaca_rows("relationships", True)
    rows[1]["step"] = "characters"
    write_rows(own["relationships"], rows)
    [problem] = problems_of(pipeline_spec(tmp_path, None, own))
    assert problem.file == str(own["relationships"]) and problem.line == 2
    assert "in the data of step 'relationships'" in problem.message

    own["relationships"] = tmp_path / "missing.jsonl"
    [problem] = problems_of(pipeline_spec(tmp_path, None, own))
    assert problem.line == 10 and problem.message.startswith(
        f"task.steps.relationships.data {own['relationships']} not found"
    )


def test_only_step_trains_and_scores_one_step_on_its_share_of_the_split() -> None:
    spec = load_spec(SPECS / "pipeline_tiny.yaml")
    whole = load_task(spec)
    one = load_task(spec.with_values({"task.only_step": "relationships"}))
    assert {e.step for e in one.train_examples + one.eval_examples} == {"relationships"}
    assert one.eval_examples == [e for e in whole.eval_examples if e.step == "relationships"]
    names = set(one.metric_names())
    assert "schema_valid/relationships" in names and "pipeline_score" in names
    assert not any(n.endswith(("/characters", "/event_types")) for n in names)
    with pytest.raises(InputError, match="only_step 'nope' is not one of task.steps"):
        load_task(spec.with_values({"task.only_step": "nope"}))
