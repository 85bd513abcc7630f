"""The registered version's pyfunc, loaded by MLflow from the folder ftray saves, on the
tiny chat model's real tokenizer with a canned model in place of the weights: what it renders
(as evaluation renders it, tools included), what it answers (OpenAI assistant messages for a
chat model, text otherwise), the forms MLflow's scoring server hands it, and a quiet load."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ftray.config import load_spec
from ftray.models import peft_backend
from ftray.models.tiny import build_tiny_model
from ftray.tasks import load_task
from ftray.tasks.chat import ChatTask, normalise_tools
from ftray.tracking.pyfunc import save_adapter_model
from ftray.training.evaluate import generate, render_prompt
from tests.conftest import ROOT, SPECS, openai_messages

REPLY = (
    '<think>I need the weather.</think>\n<tool_call>\n{"name": "get_weather", '
    '"arguments": {"city": "Berlin"}}\n</tool_call>'
)
ANSWER = {
    "content": "",
    "tool_calls": [
        {
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Berlin"}'},
        }
    ],
    "reasoning": "I need the weather.",
}
QUESTION = {"role": "user", "content": "What's the weather in Berlin?"}


class CannedModel:
    """A causal LM that answers every prompt with the same reply, and keeps the prompts."""

    def __init__(self, tokenizer: Any, reply: str) -> None:
        ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
        self.reply = [*ids, tokenizer.eos_token_id]
        self.prompts: list[list[int]] = []

    def parameters(self) -> Any:
        import torch

        yield torch.zeros(1)

    def generate(self, input_ids: Any, attention_mask: Any, max_new_tokens: int, **_: Any) -> Any:
        import torch

        for row, mask in zip(input_ids, attention_mask, strict=True):
            self.prompts.append(row[mask.bool()].tolist())
        reply = torch.tensor(self.reply[:max_new_tokens]).repeat(len(input_ids), 1)
        return torch.cat([input_ids, reply], dim=1)


@pytest.fixture(scope="module")
def chat() -> tuple[ChatTask, Any]:
    task = load_task(load_spec(SPECS / "chat_tiny.yaml"))
    assert isinstance(task, ChatTask)
    return task, peft_backend.load_tokenizer(str(build_tiny_model(task.corpus())))


def load_saved(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tokenizer: Any,
    config: dict[str, Any],
    task_config: dict[str, Any] | None = None,
) -> tuple[Any, CannedModel]:
    """The model as ftray saves it, loaded by `mlflow.pyfunc.load_model`, with a canned model
    answering REPLY where the base and adapter would be loaded."""
    import mlflow

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    config = {"base_model": "tiny", "max_new_tokens": 64, "batch_size": 4, **config}
    save_adapter_model(tmp_path / "model", adapter, None, config, ["Hi"], task_config)
    canned = CannedModel(tokenizer, REPLY)
    monkeypatch.setattr(peft_backend, "load_for_inference", lambda *_, **__: (canned, tokenizer))
    return mlflow.pyfunc.load_model(str(tmp_path / "model")), canned


def served_chat(chat: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple:
    task, tokenizer = chat
    return load_saved(tmp_path, monkeypatch, tokenizer, {"task": "chat"}, task.serving_config())


def test_a_chat_model_renders_tools_and_turns_as_its_evaluation_did(
    chat: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task, tokenizer = chat
    cases = task.eval_cases()
    assert any(m["role"] == "tool" for c in cases for m in c.messages), "tool turns covered"
    evaluated = CannedModel(tokenizer, REPLY)
    generate(
        evaluated,
        tokenizer,
        [c.messages for c in cases],
        8,
        tools=[c.extra.get("tools") for c in cases],
        keep_tokens=task.keep_tokens,
    )
    model, canned = served_chat(chat, tmp_path, monkeypatch)
    model.predict([openai_messages(c.messages) for c in cases])
    assert canned.prompts == evaluated.prompts
    assert "<tools>" in tokenizer.decode(canned.prompts[0])


def test_a_request_brings_its_own_tools(
    chat: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, tokenizer = chat
    model, canned = served_chat(chat, tmp_path, monkeypatch)
    weather = {"get_weather": {"type": "object", "properties": {"city": {"type": "string"}}}}
    model.predict(
        [{"messages": [QUESTION], "tools": weather}, {"messages": [QUESTION], "tools": []}]
    )
    expected = [
        render_prompt(tokenizer, [QUESTION], normalise_tools(weather)),
        render_prompt(tokenizer, [QUESTION]),
    ]
    assert canned.prompts == [tokenizer(p, add_special_tokens=False)["input_ids"] for p in expected]


def test_a_chat_model_answers_openai_assistant_messages(
    chat: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = served_chat(chat, tmp_path, monkeypatch)
    assert model.predict(["What's the weather in Berlin?", "And in Lima?"]) == [ANSWER, ANSWER]
    assert model.predict([QUESTION]) == [ANSWER], "one conversation, one answer in a list"
    assert model.predict({"messages": [QUESTION]}) == ANSWER, "one request, one answer"
    assert model.metadata.get_input_schema() is None


def test_other_models_answer_text(
    chat: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, tokenizer = chat
    model, _ = load_saved(tmp_path, monkeypatch, tokenizer, {"task": "trigger"})
    (answer,) = model.predict(["Who fixed the gate?"])
    assert isinstance(answer, str) and "get_weather" in answer


@pytest.mark.filterwarnings("ignore:Using .httpx. with .starlette.testclient.")
def test_the_scoring_server_passes_every_form(
    chat: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient
    from mlflow.pyfunc.scoring_server import init

    model, _ = served_chat(chat, tmp_path, monkeypatch)
    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "false")  # init sets it; undone
    client = TestClient(init(model))

    def post(body: dict[str, Any]) -> Any:
        return client.post("/invocations", json=body)

    call = {"role": "assistant", "tool_calls": ANSWER["tool_calls"], "content": None}
    result = {"role": "tool", "content": '{"temperature": 20}'}
    for body in (
        {"inputs": ["What's the weather in Berlin?", "And in Lima?"]},
        {"inputs": [[QUESTION], [QUESTION]]},
        {"inputs": [{"messages": [QUESTION]}, {"messages": [QUESTION, call, result]}]},
        {"dataframe_records": [{"messages": [QUESTION]}, {"messages": [QUESTION, call, result]}]},
        {"dataframe_split": {"columns": ["prompt"], "data": [["Hi"], ["Bye"]]}},
    ):
        response = post(body)
        assert response.status_code == 200, (body, response.text)
        assert response.json() == {"predictions": [ANSWER, ANSWER]}, body
    # an OpenAI-style body: one assistant message back, as an OpenAI client reads it
    openai = post({"messages": [QUESTION, call, result], "tools": [], "max_new_tokens": 64})
    assert openai.status_code == 200, openai.text
    assert openai.json() == ANSWER
    bad = post({"messages": [{"role": "robot", "content": "x"}]})
    assert bad.status_code == 400
    assert "unknown role 'robot'" in bad.json()["message"]
    assert "predict reads a prompt string" in bad.json()["message"]


def test_importing_and_loading_print_no_library_warning() -> None:
    script = (
        "import ftray.tracking.pyfunc\n"
        "from ftray.models.peft_backend import quiet_cpu_kernel_notice\n"
        "quiet_cpu_kernel_notice()\n"
        "import bitsandbytes, peft\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""


def test_only_the_bitsandbytes_cpu_kernel_notice_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    peft_backend.quiet_cpu_kernel_notice()
    logger = logging.getLogger(peft_backend.BNB_CPU_KERNEL_LOGGER)
    with caplog.at_level(logging.WARNING, logger=peft_backend.BNB_CPU_KERNEL_LOGGER):
        logger.warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make "
            "sure you already `pip install kernels` and the kernels >= 0.11.1",
            "No module named 'kernels'",
        )
        logger.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]
