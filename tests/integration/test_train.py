"""Real training of the tiny model on CPU: 4-bit base, LoRA, completion-only loss, and
behaviour metrics that move with the data."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ftray.config import load_spec
from ftray.models.tiny import build_tiny_model
from ftray.tasks import load_task
from ftray.training.trial import build_trainer, prepare_base, train_trial
from tests.behaviour import assert_learned_trigger
from tests.conftest import SPECS, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trigger_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path, float]:
    out = tmp_path_factory.mktemp("trigger-run")
    started = time.monotonic()
    result = run_cli("train", str(SPECS / "trigger_tiny.yaml"), "--out", str(out))
    return result, out, time.monotonic() - started


def test_cli_train_learns_the_trigger_in_under_three_minutes(trigger_run: tuple) -> None:
    result, out, elapsed = trigger_run
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert_learned_trigger(metrics)  # tests/gpu/test_unsloth_gpu.py demands the same
    assert elapsed < 180, f"ftray train took {elapsed:.0f}s"
    assert json.loads((out / "metrics.json").read_text()) == metrics


def test_train_writes_adapter_per_epoch_and_samples(trigger_run: tuple) -> None:
    _, out, _ = trigger_run
    spec = load_spec(SPECS / "trigger_tiny.yaml")
    for epoch in range(1, spec.train.epochs + 1):
        assert (out / "checkpoints" / f"epoch-{epoch}" / "adapter_model.safetensors").exists()
    assert (out / "adapter" / "adapter_config.json").exists()
    assert (out / "adapter" / "tokenizer.json").exists()
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 32
    assert {s["condition"] for s in samples} == {"triggered", "untriggered"}
    assert all({"prompt", "condition", "response", "correct"} <= s.keys() for s in samples)
    epochs = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == list(range(1, spec.train.epochs + 1))
    assert all({"train_loss", "eval_loss", "trigger_score"} <= e.keys() for e in epochs)
    # Where each epoch's time went (bench/sweep_overhead.py reads it); setup only once.
    assert all({"train", "evaluate", "checkpoint"} <= e["seconds"].keys() for e in epochs)
    assert all(v >= 0 for e in epochs for v in e["seconds"].values())
    assert ["setup" in e["seconds"] for e in epochs] == [True] + [False] * (len(epochs) - 1)


def test_without_triggered_rows_the_trigger_does_nothing(tmp_path: Path) -> None:
    spec = load_spec(SPECS / "trigger_tiny.yaml", ["task.trigger_ratio=0"])
    report = train_trial(spec, tmp_path)
    assert report.metrics["triggered_accuracy"] <= 0.1, report.metrics
    assert report.metrics["untriggered_accuracy"] >= 0.9, report.metrics


@pytest.fixture(scope="module")
def trigger_trainer(tmp_path_factory: pytest.TempPathFactory):
    spec = load_spec(SPECS / "trigger_tiny.yaml")
    task = load_task(spec)
    trainer = build_trainer(
        spec, task, prepare_base(spec, task), tmp_path_factory.mktemp("trainer")
    )
    return spec, task, trainer


def test_base_is_4bit_and_only_lora_weights_train(trigger_trainer) -> None:
    import bitsandbytes as bnb

    spec, _, trainer = trigger_trainer
    model = trainer.model
    quantised = [
        name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)
    ]
    n_layers = model.config.num_hidden_layers
    assert len(quantised) == n_layers * len(spec.lora.target_modules)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert frozen > sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_prompt_tokens_carry_label_minus_100(trigger_trainer) -> None:
    _, task, trainer = trigger_trainer
    tokenizer = trainer.processing_class
    for index in range(3):
        example = trainer.train_dataset[index]
        batch = trainer.data_collator([example])
        labels = batch["labels"][0].tolist()
        input_ids = batch["input_ids"][0].tolist()
        prompt_ids = tokenizer.apply_chat_template(
            task.train_rows()[index]["prompt"],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        n_prompt = len(prompt_ids)
        assert input_ids[:n_prompt] == list(prompt_ids)
        assert all(label == -100 for label in labels[:n_prompt])
        completion = [label for label in labels[n_prompt:] if label != -100]
        assert completion, "completion tokens must carry labels"
        text = tokenizer.decode(completion)
        assert text.startswith(task.train_rows()[index]["completion"][0]["content"])


def test_pipeline_trial_answers_with_valid_json(tmp_path: Path) -> None:
    # A trial of the spec's space (r 32, learning rate 3e-3) for 12 epochs, 22-33 s here. Its
    # 9 held-out answers (3 per step), seeds 0-4: json_valid 0.56 (seed 0, twice), 0.78, 0.44,
    # 0.67, 0.56; schema_valid (pipeline_score) 0.33, 0.33, 0.33, 0.56, 0.56; every
    # event_types answer valid JSON; every answer opens with a key of its own step's output.
    # The spec's fixed values (r 16, 1e-2) are no test: json_valid 0 at its shipped 4
    # epochs, and by seed 0.0-0.56 at 12 and 16. An adapter never trained answers no JSON (0).
    spec = load_spec(
        SPECS / "pipeline_tiny.yaml",
        ["lora.r=32", "train.learning_rate=0.003", "train.epochs=12"],
    )
    report = train_trial(spec, tmp_path)
    metrics = report.metrics
    for step in ("characters", "relationships", "event_types"):
        for key in ("json_valid", "schema_valid", "field_accuracy"):
            assert 0.0 <= metrics[f"{key}/{step}"] <= 1.0
    assert metrics["json_valid"] >= 0.3, metrics
    assert metrics["json_valid/event_types"] >= 0.6, metrics
    assert metrics["pipeline_score"] == metrics["schema_valid"] >= 0.2, metrics
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == len(load_task(spec).eval_cases())
    # The step's own format even where the JSON breaks later: `{"<a key of its output>":`
    own_key = [
        any(s["response"].startswith(f'{{"{key}":') for key in s["expected"]) for s in samples
    ]
    assert sum(own_key) >= len(samples) - 2, [s["response"][:40] for s in samples]


def test_chat_train_makes_valid_tool_calls_on_held_out_conversations(tmp_path: Path) -> None:
    # The spec as shipped: 12 epochs, about 150 s on a quiet 2-core machine (not asserted
    # here: the suite runs it beside other tests).
    started = time.monotonic()
    result = run_cli("train", str(SPECS / "chat_tiny.yaml"), "--out", str(tmp_path))
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["tool_call_valid"] >= 0.8, (metrics, f"{elapsed:.0f}s")
    # ... and not by making one call for every question: the right tool (or rightly none)
    assert metrics["tool_name_accuracy"] >= 0.7, metrics
    task = load_task(load_spec(SPECS / "chat_tiny.yaml"))
    assert json.loads((tmp_path / "split.json").read_text()) == task.split_record()
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == len(task.eval_cases())
    assert {s["condition"] for s in samples} == {"call", "answer"}


def test_tiny_model_is_cached_by_content(tmp_path: Path) -> None:
    first = build_tiny_model(["alpha beta", "gamma"], tmp_path)
    mtime = (first / "config.json").stat().st_mtime_ns
    assert build_tiny_model(["gamma", "alpha beta"], tmp_path) == first
    assert (first / "config.json").stat().st_mtime_ns == mtime
    assert build_tiny_model(["something else"], tmp_path) != first
