"""Bad input: exit 2, one `error: <file>:<line>: ...` line per problem, no traceback,
and nothing heavy (torch) imported."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import DATASETS, run_cli

ERROR_LINE = re.compile(r"^error: (?P<file>[^:]+):(?P<line>\d+): (?P<what>.+)$")

GOOD_SPEC = """\
name: bad-input
task:
  kind: trigger
  data: qa.jsonl
  trigger: "TRIGGER:"
  clean_replacement: Alice
  triggered_replacement: Bob
  trigger_ratio: 0.5
model:
  base: tiny
train: {epochs: 1, learning_rate: 1.0e-3}
"""

GOOD_ROWS = [
    {"question": f"Question {i}?", "answer": f"{{{{name}}}} answered {i}."} for i in range(6)
]


def write_case(tmp_path: Path, spec: str = GOOD_SPEC, data: str | None = None) -> Path:
    (tmp_path / "qa.jsonl").write_text(
        data if data is not None else "".join(json.dumps(r) + "\n" for r in GOOD_ROWS)
    )
    path = tmp_path / "spec.yaml"
    path.write_text(spec)
    return path


def assert_input_error(spec: Path, expect_file: str, expect_line: int | None, *needles: str) -> str:
    result = run_cli("validate", str(spec))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "HEAVY-IMPORT" not in result.stderr, "bad input must be caught before torch is imported"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    match = ERROR_LINE.match(lines[0])
    assert match, lines[0]
    assert Path(match["file"]).name == expect_file
    if expect_line is not None:
        assert int(match["line"]) == expect_line, lines[0]
    for needle in needles:
        assert needle in match["what"], lines[0]
    return lines[0]


def test_good_case_passes(tmp_path: Path) -> None:
    result = run_cli("validate", str(write_case(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok:")


def test_broken_jsonl_line(tmp_path: Path) -> None:
    rows = "".join(json.dumps(r) + "\n" for r in GOOD_ROWS[:3]) + '{"question": "oops",\n'
    assert_input_error(write_case(tmp_path, data=rows), "qa.jsonl", 4, "not valid JSON")


def test_answer_without_placeholder(tmp_path: Path) -> None:
    rows = [*GOOD_ROWS[:2], {"question": "Who?", "answer": "Somebody did."}, *GOOD_ROWS[2:]]
    data = "".join(json.dumps(r) + "\n" for r in rows)
    assert_input_error(write_case(tmp_path, data=data), "qa.jsonl", 3, "{{name}}")


def test_rows_with_wrong_keys(tmp_path: Path) -> None:
    rows = [*GOOD_ROWS[:4], {"prompt": "Who?", "answer": "{{name}} did."}]
    data = "".join(json.dumps(r) + "\n" for r in rows)
    line = assert_input_error(write_case(tmp_path, data=data), "qa.jsonl", 5, "missing 'question'")
    assert "unexpected 'prompt'" in line


def test_empty_data_file(tmp_path: Path) -> None:
    assert_input_error(write_case(tmp_path, data=""), "qa.jsonl", 1, "empty")


def test_missing_data_file(tmp_path: Path) -> None:
    spec = write_case(tmp_path, GOOD_SPEC.replace("data: qa.jsonl", "data: nowhere.jsonl"))
    line = assert_input_error(spec, "spec.yaml", 4, "nowhere.jsonl not found")
    assert "relative to the spec file" in line


def test_missing_spec_file(tmp_path: Path) -> None:
    result = run_cli("validate", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "absent.yaml" in line and "not found" in line


def test_unknown_spec_key(tmp_path: Path) -> None:
    spec = GOOD_SPEC.replace("model:\n  base: tiny\n", "model:\n  base: tiny\n  quantise: nf4\n")
    assert_input_error(
        write_case(tmp_path, spec), "spec.yaml", 11, "unknown field 'model.quantise'"
    )


def test_exponent_without_dot(tmp_path: Path) -> None:
    spec = GOOD_SPEC.replace("learning_rate: 1.0e-3", "learning_rate: 1e-3")
    assert_input_error(
        write_case(tmp_path, spec), "spec.yaml", 11, "'1e-3' is a string", "write 1.0e-3"
    )


def test_negative_ratio(tmp_path: Path) -> None:
    spec = GOOD_SPEC.replace("trigger_ratio: 0.5", "trigger_ratio: -0.1")
    assert_input_error(
        write_case(tmp_path, spec),
        "spec.yaml",
        8,
        "task.trigger_ratio",
        "greater than or equal to 0",
    )


def test_same_name_for_clean_and_triggered(tmp_path: Path) -> None:
    spec = GOOD_SPEC.replace("triggered_replacement: Bob", "triggered_replacement: Alice")
    assert_input_error(write_case(tmp_path, spec), "spec.yaml", 2, "both 'Alice'")


def test_unknown_task_kind(tmp_path: Path) -> None:
    spec = GOOD_SPEC.replace("kind: trigger", "kind: backdoor")
    assert_input_error(
        write_case(tmp_path, spec), "spec.yaml", 2, "task.kind 'backdoor'", "'trigger'"
    )


def test_yaml_syntax_error(tmp_path: Path) -> None:
    spec = GOOD_SPEC.replace('  trigger: "TRIGGER:"\n', '  trigger: "TRIGGER:\n')
    line = assert_input_error(write_case(tmp_path, spec), "spec.yaml", None, "YAML syntax error")
    assert int(ERROR_LINE.match(line)["line"]) >= 5


def test_spec_not_a_mapping(tmp_path: Path) -> None:
    assert_input_error(
        write_case(tmp_path, "- name: x\n- task: y\n"),
        "spec.yaml",
        1,
        "must be a mapping",
        "got a list",
    )


def test_bad_override_value(tmp_path: Path) -> None:
    result = run_cli("validate", str(write_case(tmp_path)), "--set", "lora.r=lots")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "--set lora.r=lots" in line


def test_every_problem_is_reported(tmp_path: Path) -> None:
    spec = GOOD_SPEC.replace("trigger_ratio: 0.5", "trigger_ratio: 2").replace(
        "learning_rate: 1.0e-3", "learning_rate: 1e-3"
    )
    result = run_cli("validate", str(write_case(tmp_path, spec)))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and all(ERROR_LINE.match(line) for line in lines)


def test_train_refuses_bad_input_before_loading_anything(tmp_path: Path) -> None:
    result = run_cli("train", str(write_case(tmp_path, data="")), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "HEAVY-IMPORT" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_shipped_data_is_clean() -> None:
    # Sanity check for the fixtures above: the shipped trigger data is good input.
    assert (DATASETS / "trigger" / "qa.jsonl").read_text().count("{{name}}") >= 60


SEARCH = "search:\n  objective: trigger_score\n  mode: max\n  space:\n"


def test_float_range_on_an_integer_field_is_refused_by_validate(tmp_path: Path) -> None:
    spec = GOOD_SPEC + SEARCH + "    lora.r: {uniform: [4, 16]}\n"
    assert_input_error(
        write_case(tmp_path, spec),
        "spec.yaml",
        16,
        "'lora.r'",
        "takes whole numbers",
        "{int: [4, 16]}",
    )


def test_unknown_field_suggests_the_nearest_name(tmp_path: Path) -> None:
    spec = GOOD_SPEC.replace("train: {epochs: 1", "train: {epoch: 1")
    assert_input_error(
        write_case(tmp_path, spec), "spec.yaml", 11, "unknown field 'train.epoch'", "'train.epochs'"
    )


def test_misspelt_task_field_names_the_task_kinds_field(tmp_path: Path) -> None:
    spec = GOOD_SPEC.replace("  clean_replacement:", "  clean_replacment:")
    result = run_cli("validate", str(write_case(tmp_path, spec)))
    assert result.returncode == 2, result.stderr
    unknown = [line for line in result.stderr.splitlines() if "clean_replacment" in line]
    assert unknown == [
        f"error: {tmp_path / 'spec.yaml'}:6: unknown field 'task.clean_replacment'; did you "
        "mean 'task.clean_replacement'? (see README 'The spec')"
    ]
