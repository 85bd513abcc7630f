"""A corpus of malformed input: specs, data files, schemas, tools, search spaces and command
lines. Each case exits 2 with `error: <file>:<line>: ...` on stderr (no line only where there
is none to give: a `--set` argument, the spec path itself), no traceback, and Ray is never
started. The CLI runs in-process with `ray.init` made to fail, so a case that got as far as
Ray fails loudly instead of waiting."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ftray.cli import main
from ftray.errors import MAX_SHOWN
from ftray.sweep.resources import local_cpu_count

ERROR_LINE = re.compile(r"^error: (?P<file>.+?):(?:(?P<line>\d+):)? (?P<what>.+)$")

TRIGGER_SPEC = """\
name: bad-input
task:
  kind: trigger
  data: qa.jsonl
  trigger: "TRIGGER:"
  clean_replacement: Alice
  triggered_replacement: Bob
model:
  base: tiny
  max_seq_length: 128
train: {epochs: 1, learning_rate: 1.0e-3, batch_size: 4}
search:
  objective: trigger_score
  mode: max
  num_trials: 2
  max_concurrent_trials: 1
  space:
    lora.r: {choice: [4, 8]}
resources_per_trial: {cpu: 1, gpu: 0}
"""
QA_ROWS = [
    {"question": f"Question {i}?", "answer": f"{{{{name}}}} answered {i}."} for i in range(6)
]

PIPELINE_SPEC = """\
name: bad-pipeline
task:
  kind: pipeline
  data: steps.jsonl
  steps:
    names: {schema: schemas.json#/names}
    counts: {schema: schemas.json#/counts}
model:
  base: tiny
search:
  objective: pipeline_score
  mode: max
"""
SCHEMAS = {
    "names": {
        "type": "object",
        "required": ["names"],
        "properties": {"names": {"type": "array", "items": {"type": "string"}}},
    },
    "counts": {
        "type": "object",
        "required": ["count"],
        "properties": {"count": {"type": "integer"}},
    },
}
STEP_ROWS = {
    "names": [
        {"instruction": f"Who is in tale {i}?", "output": {"names": [f"N{i}"]}} for i in range(3)
    ],
    "counts": [{"instruction": f"How many in tale {i}?", "output": {"count": i}} for i in range(3)],
}

CHAT_SPEC = """\
name: bad-chat
task:
  kind: chat
  data: conversations.jsonl
  tools: tools.json
model:
  base: tiny
"""
TOOLS = {"get_weather": {"type": "object", "properties": {"city": {"type": "string"}}}}


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """The line of the `nth` line of `text` that contains `needle`."""
    hits = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    return hits[nth - 1]


def conversation(i: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"Weather in city {i}?"},
            {"role": "assistant", "content": f"It is {i} degrees."},
        ]
    }


# --- writing a case: each returns the command line -----------------------------------


def trigger(tmp: Path, spec: str = TRIGGER_SPEC, data: str | bytes | None = None) -> Path:
    raw = data if data is not None else jsonl(QA_ROWS)
    target = tmp / "qa.jsonl"
    target.write_bytes(raw if isinstance(raw, bytes) else raw.encode())
    (tmp / "spec.yaml").write_text(spec)
    return tmp / "spec.yaml"


def pipeline(tmp: Path, spec: str = PIPELINE_SPEC, schemas: str | None = None) -> Path:
    (tmp / "schemas.json").write_text(schemas if schemas is not None else json.dumps(SCHEMAS))
    rows = [{"step": step, **row} for step, step_rows in STEP_ROWS.items() for row in step_rows]
    (tmp / "steps.jsonl").write_text(jsonl(rows))
    (tmp / "spec.yaml").write_text(spec)
    return tmp / "spec.yaml"


def pipeline_folder(tmp: Path) -> Path:
    """A pipeline whose data is a folder of one file per step."""
    folder = tmp / "steps"
    folder.mkdir()
    for step, rows in STEP_ROWS.items():
        (folder / f"{step}.jsonl").write_text(jsonl(rows))
    return pipeline(tmp, PIPELINE_SPEC.replace("data: steps.jsonl", "data: steps"))


def chat(tmp: Path, tools: bytes | None = None, data: str | None = None) -> Path:
    (tmp / "tools.json").write_bytes(tools if tools is not None else json.dumps(TOOLS).encode())
    (tmp / "conversations.jsonl").write_text(
        data if data is not None else jsonl([conversation(i) for i in range(6)])
    )
    (tmp / "spec.yaml").write_text(CHAT_SPEC)
    return tmp / "spec.yaml"


def spec_with(old: str, new: str, base: str = TRIGGER_SPEC) -> str:
    assert old in base, old
    return base.replace(old, new, 1)


def symlink_loop(path: Path) -> None:
    """`path` -> `path`.loop -> `path`."""
    other = path.with_name(path.name + ".loop")
    other.symlink_to(path.name)
    path.symlink_to(other.name)


@dataclass(frozen=True)
class Case:
    """One malformed input: how to write it, and where the error must point; `also`: what
    other error lines of the same run must say (problems of independent stages are reported
    together), `last`: the line stderr must end with."""

    id: str
    write: Callable[[Path], list[str]]
    file: str
    line: int | Callable[[Path], int] | None
    says: str
    env: dict[str, str] = field(default_factory=dict)
    also: tuple[str, ...] = ()
    last: str | None = None


def validate(spec: Path, *extra: str) -> list[str]:
    return ["validate", str(spec), *extra]


def sweep(spec: Path, *extra: str) -> list[str]:
    return ["sweep", str(spec), *extra]


def _spec_not_utf8(tmp: Path) -> list[str]:
    spec = trigger(tmp)
    spec.write_bytes(TRIGGER_SPEC.replace("Alice", "Alic\xe9").encode("latin-1"))
    return validate(spec)


def _spec_is_folder(tmp: Path) -> list[str]:
    trigger(tmp)
    return validate(tmp)


def _spec_symlink_loop(tmp: Path) -> list[str]:
    trigger(tmp)
    symlink_loop(tmp / "looping.yaml")
    return validate(tmp / "looping.yaml")


def _data_not_utf8(tmp: Path) -> list[str]:
    rows = jsonl(QA_ROWS[:2]).encode() + b'{"question": "Caf\xe9?", "answer": "{{name}}"}\n'
    return validate(trigger(tmp, data=rows + jsonl(QA_ROWS[2:]).encode()))


def _data_utf16(tmp: Path) -> list[str]:
    return validate(trigger(tmp, data=jsonl(QA_ROWS).encode("utf-16")))


def _data_repeated_key(tmp: Path) -> list[str]:
    row = '{"question": "Who?", "answer": "{{name}} did.", "answer": "{{name}} did not."}\n'
    return validate(trigger(tmp, data=jsonl(QA_ROWS[:3]) + row + jsonl(QA_ROWS[3:])))


def _data_is_folder(tmp: Path) -> list[str]:
    spec = trigger(tmp, spec_with("data: qa.jsonl", "data: rows"))
    (tmp / "rows").mkdir()
    return validate(spec)


def _data_symlink_loop(tmp: Path) -> list[str]:
    spec = trigger(tmp, spec_with("data: qa.jsonl", "data: looping.jsonl"))
    symlink_loop(tmp / "looping.jsonl")
    return validate(spec)


LONG_QUESTION = " ".join(f"word{i % 89}" for i in range(2500)) + "?"


def _answer_cut_away(tmp: Path) -> list[str]:
    rows = [*QA_ROWS[:2], {"question": LONG_QUESTION, "answer": "{{name}} knows."}, *QA_ROWS[2:]]
    return sweep(trigger(tmp, data=jsonl(rows)))


def _answer_cut_away_in_some_trials(tmp: Path) -> list[str]:
    spec = spec_with("max_seq_length: 128", "max_seq_length: 65536").replace(
        "lora.r: {choice: [4, 8]}", "model.max_seq_length: {choice: [128, 65536]}"
    )
    rows = [*QA_ROWS[:2], {"question": LONG_QUESTION, "answer": "{{name}} knows."}, *QA_ROWS[2:]]
    return sweep(trigger(tmp, spec, data=jsonl(rows)))


def _answer_cut_away_validate(tmp: Path) -> list[str]:
    rows = [*QA_ROWS[:2], {"question": LONG_QUESTION, "answer": "{{name}} knows."}, *QA_ROWS[2:]]
    return validate(trigger(tmp, data=jsonl(rows)))


def _answer_cut_away_in_train(tmp: Path) -> list[str]:
    rows = [*QA_ROWS[:4], {"question": LONG_QUESTION, "answer": "{{name}} knows."}, *QA_ROWS[4:]]
    return ["train", str(trigger(tmp, data=jsonl(rows))), "--out", str(tmp / "out")]


def _rows_without_answers(count: int) -> Callable[[Path], list[str]]:
    """`count` rows that lack "answer" among good ones."""

    def write(tmp: Path) -> list[str]:
        bad = [{"question": f"Unanswered {i}?"} for i in range(count)]
        return validate(trigger(tmp, data=jsonl([*bad, *QA_ROWS])))

    return write


def _bad_rows_and_bad_range(tmp: Path) -> list[str]:
    spec = spec_with("lora.r: {choice: [4, 8]}", "task.trigger_ratio: {uniform: [0.1, 2.0]}")
    return validate(trigger(tmp, spec, data=jsonl([{"question": "Who?"}, *QA_ROWS])))


def _pipeline_folder_without_files(tmp: Path) -> list[str]:
    spec = pipeline(tmp, PIPELINE_SPEC.replace("data: steps.jsonl", "data: steps"))
    (tmp / "steps").mkdir()
    (tmp / "steps" / "notes.txt").write_text("not data\n")
    return validate(spec)


def _pipeline_folder_symlink_loop(tmp: Path) -> list[str]:
    spec = pipeline_folder(tmp)
    (tmp / "steps" / "counts.jsonl").unlink()
    symlink_loop(tmp / "steps" / "counts.jsonl")
    return validate(spec)


def _pipeline_step_file_empty(tmp: Path) -> list[str]:
    spec = pipeline_folder(tmp)
    (tmp / "steps" / "counts.jsonl").write_text("\n")
    return validate(spec)


def _pipeline_step_file_not_utf8(tmp: Path) -> list[str]:
    spec = pipeline_folder(tmp)
    rows = STEP_ROWS["names"]
    bad = b'{"instruction": "Who is in \xff?", "output": {"names": ["X"]}}\n'
    (tmp / "steps" / "names.jsonl").write_bytes(jsonl(rows[:1]).encode() + bad)
    return validate(spec)


def _pipeline_step_without_rows(tmp: Path) -> list[str]:
    spec = pipeline(tmp)
    rows = [{"step": "names", **row} for row in STEP_ROWS["names"]]
    (tmp / "steps.jsonl").write_text(jsonl(rows))
    return validate(spec)


def _pipeline_schema_file(text: str | bytes, pointer: str = "#/counts") -> Callable:
    def write(tmp: Path) -> list[str]:
        spec = pipeline(
            tmp, spec_with("schemas.json#/counts", f"counts.json{pointer}", PIPELINE_SPEC)
        )
        target = tmp / "counts.json"
        if text == "FOLDER":
            target.mkdir()
        else:
            target.write_bytes(text if isinstance(text, bytes) else text.encode())
        return validate(spec)

    return write


def _chat_tools_symlink_loop(tmp: Path) -> list[str]:
    spec = chat(tmp)
    (tmp / "tools.json").unlink()
    symlink_loop(tmp / "tools.json")
    return validate(spec)


COUNTS_NOT_UTF8 = b'{"counts": {"type": "object",\n "description": "Z\xe4hler"}}\n'
COUNTS_LINE = line_of(PIPELINE_SPEC, "counts:")
TRIGGER_DATA_LINE = line_of(TRIGGER_SPEC, "data:")
PIPELINE_DATA_LINE = line_of(PIPELINE_SPEC, "data:")
RESOURCES_LINE = line_of(TRIGGER_SPEC, "resources_per_trial")
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}

CASES = [
    # --- the spec file ---
    Case("spec-not-utf8", _spec_not_utf8, "spec.yaml", line_of(TRIGGER_SPEC, "Alice"), "0xe9"),
    Case(
        "spec-name-twice",
        lambda t: validate(trigger(t, TRIGGER_SPEC + "name: again\n")),
        "spec.yaml",
        TRIGGER_SPEC.count("\n") + 1,
        "'name' is given twice (first at line 1)",
    ),
    Case(
        "spec-nested-key-twice",
        lambda t: validate(trigger(t, spec_with("  base: tiny\n", "  base: tiny\n  base: gpt2\n"))),
        "spec.yaml",
        line_of(TRIGGER_SPEC, "base: tiny") + 1,
        "'model.base' is given twice",
    ),
    Case(
        "spec-flow-key-twice",
        lambda t: validate(trigger(t, spec_with("{epochs: 1,", "{epochs: 1, epochs: 2,"))),
        "spec.yaml",
        line_of(TRIGGER_SPEC, "train:"),
        "'train.epochs' is given twice",
    ),
    Case(
        "spec-alias-inside-itself",
        lambda t: validate(trigger(t, spec_with("train: {", "train: &t {seed: *t, "))),
        "spec.yaml",
        line_of(TRIGGER_SPEC, "train:"),
        "train.seed",
    ),
    Case("spec-is-a-folder", _spec_is_folder, "", None, "is a folder"),
    Case("spec-symlink-loop", _spec_symlink_loop, "looping.yaml", None, "symlink loop"),
    Case("spec-empty", lambda t: validate(trigger(t, "")), "spec.yaml", 1, "empty file"),
    Case(
        "spec-tab-indent",
        lambda t: validate(trigger(t, spec_with("  base: tiny", "\tbase: tiny"))),
        "spec.yaml",
        line_of(TRIGGER_SPEC, "base: tiny"),
        "YAML syntax error",
    ),
    # --- resources a local Ray cannot give (sweep; no RAY_ADDRESS) ---
    Case(
        "set-gpu-without-gpu",
        lambda t: sweep(trigger(t), "--set", "resources_per_trial.gpu=1"),
        "spec.yaml",
        None,
        "--set resources_per_trial.gpu=1: resources_per_trial.gpu 1 asks for more",
        NO_GPU,
    ),
    Case(
        "spec-gpu-without-gpu",
        lambda t: sweep(trigger(t, spec_with("gpu: 0}", "gpu: 0.5}"))),
        "spec.yaml",
        RESOURCES_LINE,
        "resources_per_trial.gpu 0.5 asks for more than this machine has: no GPU",
        NO_GPU,
    ),
    Case(
        "spec-more-cpus-than-machine",
        lambda t: sweep(trigger(t, spec_with("{cpu: 1,", "{cpu: 100000,"))),
        "spec.yaml",
        RESOURCES_LINE,
        f"resources_per_trial.cpu 100000 asks for more than this machine has: {local_cpu_count()}",
    ),
    # --- trigger data ---
    Case("data-not-utf8", _data_not_utf8, "qa.jsonl", 3, "byte 0xe9 at column 18 is not UTF-8"),
    Case("data-utf16", _data_utf16, "qa.jsonl", 1, "byte 0xff at column 1 is not UTF-8"),
    Case("data-repeated-key", _data_repeated_key, "qa.jsonl", 4, "key 'answer' appears twice"),
    Case("data-is-a-folder", _data_is_folder, "spec.yaml", TRIGGER_DATA_LINE, "is a folder"),
    Case("data-symlink-loop", _data_symlink_loop, "spec.yaml", TRIGGER_DATA_LINE, "symlink loop"),
    Case(
        "data-broken-json",
        lambda t: validate(trigger(t, data=jsonl(QA_ROWS) + '{"question": "Who?"\n')),
        "qa.jsonl",
        len(QA_ROWS) + 1,
        "not valid JSON",
    ),
    Case(
        "answer-cut-away-sweep",
        _answer_cut_away,
        "qa.jsonl",
        3,
        "past model.max_seq_length 128: all of it is cut and the row trains nothing",
    ),
    Case(
        "answer-cut-away-in-searched-length",
        _answer_cut_away_in_some_trials,
        "qa.jsonl",
        3,
        "past model.max_seq_length 128: all of it is cut",
    ),
    Case(
        "answer-cut-away-validate",
        _answer_cut_away_validate,
        "qa.jsonl",
        3,
        "past model.max_seq_length 128: all of it is cut and the row trains nothing",
    ),
    Case(
        "sixty-bad-rows",
        _rows_without_answers(60),
        "qa.jsonl",
        1,
        "missing 'answer'",
        last="... and 40 more problems",
    ),
    Case(
        "twenty-one-bad-rows",
        _rows_without_answers(21),
        "qa.jsonl",
        1,
        "missing 'answer'",
        last="... and 1 more problem",
    ),
    Case(
        "bad-rows-and-bad-range",
        _bad_rows_and_bad_range,
        "qa.jsonl",
        1,
        "missing 'answer'",
        also=("value 2.0 is not valid for 'task.trigger_ratio'",),
    ),
    Case(
        "spec-field-and-bad-range",
        lambda t: validate(
            trigger(
                t,
                spec_with("{epochs: 1,", "{epochs: 0,").replace(
                    "lora.r: {choice: [4, 8]}", "lora.r: {uniform: [4, 16]}"
                ),
            )
        ),
        "spec.yaml",
        line_of(TRIGGER_SPEC, "train:"),
        "train.epochs",
        also=("'lora.r', which takes whole numbers",),
    ),
    Case(
        "answer-cut-away-train",
        _answer_cut_away_in_train,
        "qa.jsonl",
        5,
        "past model.max_seq_length 128: all of it is cut and the row trains nothing",
    ),
    # --- pipeline data and schemas ---
    Case(
        "pipeline-folder-without-files",
        _pipeline_folder_without_files,
        "spec.yaml",
        PIPELINE_DATA_LINE,
        "holds no *.jsonl files",
    ),
    Case(
        "pipeline-folder-file-symlink-loop",
        _pipeline_folder_symlink_loop,
        "spec.yaml",
        PIPELINE_DATA_LINE,
        "counts.jsonl is a symlink loop",
    ),
    Case("pipeline-step-file-empty", _pipeline_step_file_empty, "counts.jsonl", 1, "is empty"),
    Case(
        "pipeline-step-file-not-utf8",
        _pipeline_step_file_not_utf8,
        "names.jsonl",
        2,
        "byte 0xff at column 28 is not UTF-8",
    ),
    Case(
        "pipeline-step-without-rows",
        _pipeline_step_without_rows,
        "spec.yaml",
        COUNTS_LINE,
        "step 'counts' has 0 row(s)",
    ),
    Case(
        "pipeline-empty-step",
        lambda t: validate(
            pipeline(
                t, spec_with("counts: {schema: schemas.json#/counts}", "counts:", PIPELINE_SPEC)
            )
        ),
        "spec.yaml",
        COUNTS_LINE,
        "task.steps.counts",
    ),
    Case(
        "pipeline-step-without-schema",
        lambda t: validate(
            pipeline(t, spec_with("{schema: schemas.json#/counts}", "{}", PIPELINE_SPEC))
        ),
        "spec.yaml",
        COUNTS_LINE,
        "'task.steps.counts.schema' is required",
    ),
    Case(
        "pipeline-schema-not-json-schema",
        lambda t: validate(
            pipeline(
                t,
                spec_with(
                    "{schema: schemas.json#/counts}", "{schema: {type: objekt}}", PIPELINE_SPEC
                ),
            )
        ),
        "spec.yaml",
        COUNTS_LINE,
        "not a valid JSON Schema",
    ),
    Case(
        "pipeline-pointer-to-nothing",
        lambda t: validate(
            pipeline(t, spec_with("schemas.json#/counts", "schemas.json#/tallies", PIPELINE_SPEC))
        ),
        "spec.yaml",
        COUNTS_LINE,
        "pointer '#/tallies' finds nothing",
    ),
    Case(
        "pipeline-schema-file-not-utf8",
        _pipeline_schema_file(COUNTS_NOT_UTF8),
        "spec.yaml",
        COUNTS_LINE,
        "counts.json:2: byte 0xe4",
    ),
    Case(
        "pipeline-schema-file-is-a-folder",
        _pipeline_schema_file("FOLDER"),
        "spec.yaml",
        COUNTS_LINE,
        "counts.json is a folder",
    ),
    Case(
        "pipeline-schema-file-not-json",
        _pipeline_schema_file('{"counts": {"type": "object",}}'),
        "spec.yaml",
        COUNTS_LINE,
        "is not valid JSON",
    ),
    # --- chat tools and conversations ---
    Case(
        "chat-tools-not-utf8",
        lambda t: validate(chat(t, tools=b'{"get_weather":\n {"description": "M\xfcnchen"}}')),
        "tools.json",
        2,
        "byte 0xfc",
    ),
    Case(
        "chat-tools-symlink-loop",
        _chat_tools_symlink_loop,
        "spec.yaml",
        line_of(CHAT_SPEC, "tools:"),
        "symlink loop",
    ),
    Case(
        "chat-message-repeated-key",
        lambda t: validate(
            chat(
                t,
                data=jsonl([conversation(i) for i in range(4)])
                + '{"messages": [{"role": "user", "role": "assistant", "content": "Hi"}]}\n',
            )
        ),
        "conversations.jsonl",
        5,
        "key 'role' appears twice",
    ),
    Case(
        "chat-arguments-string-not-json",
        lambda t: validate(
            chat(
                t,
                data=jsonl([conversation(i) for i in range(4)])
                + json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": "Weather in Oslo?"},
                            {
                                "role": "assistant",
                                "content": None,
                                "tool_calls": [
                                    {
                                        "id": "call_1",
                                        "type": "function",
                                        "function": {
                                            "name": "get_weather",
                                            "arguments": '{"city": "Oslo"',
                                        },
                                    }
                                ],
                            },
                        ]
                    }
                )
                + "\n",
            )
        ),
        "conversations.jsonl",
        5,
        "the arguments of 'get_weather': the arguments string is not valid JSON",
    ),
    Case(
        "chat-sharegpt-unknown-from",
        lambda t: validate(
            chat(
                t,
                data=jsonl([conversation(i) for i in range(3)])
                + jsonl(
                    [
                        {
                            "conversations": [
                                {"from": "human", "value": "Weather in Oslo?"},
                                {"from": "bot", "value": "Cold."},
                            ]
                        }
                    ]
                ),
            )
        ),
        "conversations.jsonl",
        4,
        "conversations turn 2: unknown 'from' 'bot'",
    ),
    Case(
        "chat-objective-the-data-cannot-report",
        lambda t: validate(chat(t), "--set", "search={objective: arguments_exact, mode: max}"),
        "spec.yaml",
        None,
        "'arguments_exact' is not reported on this data: no held-out turn calls a tool",
    ),
    # --- search spaces ---
    Case(
        "search-empty-choice",
        lambda t: validate(trigger(t, spec_with("{choice: [4, 8]}", "{choice: []}"))),
        "spec.yaml",
        line_of(TRIGGER_SPEC, "lora.r:"),
        "search.space.lora.r.choice",
    ),
    Case(
        "search-unknown-field",
        lambda t: validate(trigger(t, spec_with("lora.r:", "lora.rank:"))),
        "spec.yaml",
        line_of(TRIGGER_SPEC, "lora.r:"),
        "'lora.rank' is not a field of this spec",
    ),
    Case(
        "search-no-concurrency",
        lambda t: validate(
            trigger(t, spec_with("max_concurrent_trials: 1", "max_concurrent_trials: 0"))
        ),
        "spec.yaml",
        line_of(TRIGGER_SPEC, "max_concurrent_trials"),
        "greater than or equal to 1",
    ),
    # --- command lines ---
    Case(
        "set-without-equals",
        lambda t: validate(trigger(t), "--set", "lora.r"),
        "spec.yaml",
        None,
        "write --set dotted.key=value",
    ),
    Case(
        "set-value-not-yaml",
        lambda t: validate(trigger(t), "--set", "lora.target_modules=[q_proj"),
        "spec.yaml",
        None,
        "value is not valid YAML",
    ),
    Case(
        "set-seq-length-too-short",
        lambda t: ["train", str(trigger(t)), "--set", "model.max_seq_length=8"],
        "spec.yaml",
        None,
        "--set model.max_seq_length=8: model.max_seq_length input should be greater than or equal to 16",
    ),
]


@pytest.fixture
def ray_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """`ray.init` fails the test; the environment is put back afterwards (a sweep sets some)."""
    import ray

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("bad input must be refused before Ray starts")

    saved = dict(os.environ)
    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    yield
    assert not ray.is_initialized()
    os.environ.clear()
    os.environ.update(saved)


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_exits_2_at_file_and_line(
    case: Case,
    tmp_path: Path,
    ray_refused: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    work = tmp_path / "case"
    work.mkdir()
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    argv = case.write(work)
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, err
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors, err
    for line in errors:
        assert ERROR_LINE.match(line), line
    first = ERROR_LINE.match(errors[0])
    assert first is not None
    assert Path(first["file"]).name == (case.file or work.name), errors[0]
    want_line = case.line(work) if callable(case.line) else case.line
    assert (int(first["line"]) if first["line"] else None) == want_line, errors[0]
    assert case.says in first["what"], errors[0]
    for needle in case.also:
        assert any(needle in line for line in errors[1:]), (needle, errors)
    if case.last is not None:
        assert err.strip().splitlines()[-1] == case.last, err
        assert len(errors) == MAX_SHOWN, "the first problems, one per line; then the count"
    assert not (work / "out" / "adapter").exists()


# --- allowed, but said: a warning and exit 0 ---


def test_more_concurrent_trials_than_trials_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = trigger(tmp_path, spec_with("max_concurrent_trials: 1", "max_concurrent_trials: 50"))
    assert main(validate(spec)) == 0
    out, err = capsys.readouterr()
    assert out.startswith("ok:")
    line = line_of(TRIGGER_SPEC, "max_concurrent_trials")
    [warning] = [w for w in err.splitlines() if "warning:" in w]
    assert f"spec.yaml:{line}: search.max_concurrent_trials 50 is more than" in warning
    assert "search.num_trials 2" in warning


def test_validate_warns_about_resources_a_local_sweep_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A GPU spec is checked on a laptop before it goes to a cluster: validate passes it.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert main(validate(trigger(tmp_path), "--set", "resources_per_trial.gpu=1")) == 0
    out, err = capsys.readouterr()
    assert out.startswith("ok:")
    [warning] = [w for w in err.splitlines() if "warning:" in w]
    assert "resources_per_trial.gpu 1 asks for more than this machine has: no GPU" in warning
    assert "ftray sweep without RAY_ADDRESS refuses this" in warning
