"""Behaviour evaluation: batched, greedy, deterministic generation on held-out prompts."""

from __future__ import annotations

from typing import Any

from ftray.tasks import EvalCase, Message, Task


def render_prompt(tokenizer: Any, messages: list[Message]) -> str:
    """The prompt text exactly as training formats it: the chat template plus the assistant header."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def generate(
    model: Any,
    tokenizer: Any,
    conversations: list[list[Message]],
    max_new_tokens: int,
    batch_size: int = 16,
) -> list[str]:
    """Greedy completions for each conversation, batched with left padding.

    The caller puts the model in inference mode (`Backend.generation_mode`): how to switch
    and switch back depends on the backend.
    """
    import torch

    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    responses: list[str] = []
    try:
        for start in range(0, len(conversations), batch_size):
            prompts = [
                render_prompt(tokenizer, c) for c in conversations[start : start + batch_size]
            ]
            batch = tokenizer(
                prompts, return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            with torch.no_grad():
                output = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            responses += [
                text.strip()
                for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            ]
    finally:
        tokenizer.padding_side = previous_side
    return responses


def evaluate(
    task: Task, model: Any, tokenizer: Any, batch_size: int = 16
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The task's behaviour metrics on its held-out cases, and a sample per case."""
    cases: list[EvalCase] = task.eval_cases()
    responses = generate(
        model, tokenizer, [c.messages for c in cases], task.max_new_tokens, batch_size
    )
    return task.score(cases, responses)
