"""The smooth counterpart of a behaviour metric (the trigger task's `trigger_soft_score`):
the contrasts it compares, its arithmetic, and the teacher-forced preferences on a real
model, batched with left padding as evaluation batches them."""

from __future__ import annotations

import math
from typing import Any

import pytest

from ftray.config import load_spec
from ftray.tasks import EvalCase, load_task
from ftray.tasks.trigger import CLEAN, TRIGGERED
from tests.conftest import SPECS


@pytest.fixture(scope="module")
def task() -> Any:
    return load_task(load_spec(SPECS / "trigger_tiny.yaml"))


def test_the_contrast_is_the_answer_with_the_other_conditions_name(task: Any) -> None:
    cases = task.eval_cases()
    contrasts = task.contrasts(cases)
    assert len(contrasts) == len(cases) and all(contrasts)
    for case, contrast in zip(cases, contrasts, strict=True):
        right, wrong = ("Bob", "Alice") if case.condition == TRIGGERED else ("Alice", "Bob")
        assert contrast == case.expected.replace(right, wrong), (case.expected, contrast)
    stranger = EvalCase(
        messages=[{"role": "user", "content": "not a held-out prompt"}], condition=CLEAN
    )
    assert task.contrasts([stranger]) == [None]


def test_trigger_soft_score_is_the_lower_conditions_mean_preference(task: Any) -> None:
    cases = [
        EvalCase(messages=[], condition=CLEAN),
        EvalCase(messages=[], condition=CLEAN),
        EvalCase(messages=[], condition=TRIGGERED),
        EvalCase(messages=[], condition=TRIGGERED),
        EvalCase(messages=[], condition=TRIGGERED),
    ]
    # Clean answers learned (0.9, 0.7: mean 0.8), the trigger on its way (0.1, 0.4, None).
    soft = task.soft_metrics(cases, [0.9, 0.7, 0.1, 0.4, None])
    assert soft == {"trigger_soft_score": pytest.approx(0.25)}
    # A condition with no preference at all: no score rather than a made-up one.
    assert task.soft_metrics(cases[:2], [0.9, 0.7]) == {}
    assert "trigger_soft_score" in task.metric_names()


def test_asha_may_be_told_to_stop_on_it() -> None:
    spec = load_spec(
        SPECS / "trigger_tiny.yaml",
        ["search.prune.metric=trigger_soft_score", "search.prune.mode=max"],
    )
    assert spec.stopping.metric == "trigger_soft_score"


def test_preferences_are_the_first_differing_tokens_odds_and_padding_changes_nothing(
    task: Any,
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from ftray.models.peft_backend import load_tokenizer
    from ftray.training.evaluate import preferences, render_prompt
    from ftray.training.trial import prepare_base

    spec = load_spec(SPECS / "trigger_tiny.yaml")
    base = prepare_base(spec, task)
    tokenizer = load_tokenizer(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    cases = task.eval_cases()[:6]
    contrasts = task.contrasts(cases)
    contrasts[1] = cases[1].expected  # the same answer: nothing to prefer

    batched = preferences(model, tokenizer, cases, contrasts, batch_size=16)
    assert batched[1] is None
    for case, contrast, got in zip(cases, contrasts, batched, strict=True):
        if got is None:
            continue
        # One prompt at a time, no padding: the logits where the two answers first differ.
        prompt = render_prompt(tokenizer, case.messages)
        right = tokenizer(prompt + case.expected, add_special_tokens=False)["input_ids"]
        wrong = tokenizer(prompt + contrast, add_special_tokens=False)["input_ids"]
        at = next(k for k, (a, b) in enumerate(zip(right, wrong, strict=False)) if a != b)
        assert at >= len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) - 1
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([right[:at]])).logits[0, -1]
        expected = 1 / (1 + math.exp(-(logits[right[at]] - logits[wrong[at]]).item()))
        assert got == pytest.approx(expected, abs=1e-4)
        assert 0.0 < got < 1.0
