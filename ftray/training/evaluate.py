"""Behaviour evaluation: batched, greedy, deterministic generation on held-out prompts."""

from __future__ import annotations

from typing import Any

from ftray.tasks import EvalCase, Message, Task
from ftray.tasks.base import render_chat


def render_prompt(
    tokenizer: Any, messages: list[Message], tools: list[dict[str, Any]] | None = None
) -> str:
    """The prompt text exactly as training formats it: the chat template (with the
    conversation's tools, if any) plus the assistant header."""
    return render_chat(tokenizer, messages, tools, add_generation_prompt=True)


def decode_keeping(tokenizer: Any, ids: Any, keep: tuple[str, ...]) -> str:
    """The text of generated `ids` up to the end-of-turn token, with special tokens dropped
    except those in `keep` (tool-call markup a tokenizer may mark special)."""
    text = tokenizer.decode(ids, skip_special_tokens=False)
    eos = tokenizer.eos_token
    if eos and eos in text:
        text = text[: text.index(eos)]
    for token in tokenizer.all_special_tokens:
        if token and token not in keep:
            text = text.replace(token, "")
    return text


def generate(
    model: Any,
    tokenizer: Any,
    conversations: list[list[Message]],
    max_new_tokens: int,
    batch_size: int = 16,
    tools: list[list[dict[str, Any]] | None] | None = None,
    keep_tokens: tuple[str, ...] = (),
) -> list[str]:
    """Greedy completions for each conversation, batched with left padding.

    `tools` gives each conversation's tool definitions (rendered by the chat template);
    `keep_tokens` are special tokens the answer keeps (see `decode_keeping`).

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
                render_prompt(tokenizer, c, tools[start + i] if tools else None)
                for i, c in enumerate(conversations[start : start + batch_size])
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
            if keep_tokens:
                texts = [decode_keeping(tokenizer, ids, keep_tokens) for ids in new_tokens]
            else:
                texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            responses += [text.strip() for text in texts]
    finally:
        tokenizer.padding_side = previous_side
    return responses


def preferences(
    model: Any,
    tokenizer: Any,
    cases: list[EvalCase],
    contrasts: list[str | None],
    batch_size: int = 16,
) -> list[float | None]:
    """Per case, the probability the model gives the expected answer's token over the
    contrast's at the first token where the two answers differ, teacher-forced on the prompt
    and their common start: sigmoid of the logit difference (None where there is no contrast
    or the answers do not differ). Batched with left padding, positions counted from each
    row's first real token as generation counts them."""
    import torch

    contexts: list[list[int]] = []
    choices: list[tuple[int, int]] = []
    rows: list[int] = []
    for row, (case, contrast) in enumerate(zip(cases, contrasts, strict=True)):
        if contrast is None or not isinstance(case.expected, str):
            continue
        prompt = render_prompt(tokenizer, case.messages, case.extra.get("tools"))
        right = tokenizer(prompt + case.expected, add_special_tokens=False)["input_ids"]
        wrong = tokenizer(prompt + contrast, add_special_tokens=False)["input_ids"]
        at = next((k for k, (a, b) in enumerate(zip(right, wrong, strict=False)) if a != b), None)
        if at is None:
            continue
        contexts.append(right[:at])
        choices.append((right[at], wrong[at]))
        rows.append(row)
    out: list[float | None] = [None] * len(cases)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(contexts), batch_size):
        chunk = contexts[start : start + batch_size]
        width = max(len(c) for c in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, context in enumerate(chunk):
            input_ids[r, width - len(context) :] = torch.tensor(context)
            mask[r, width - len(context) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = model(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
            ).logits[:, -1, :]
        for r, (good, bad) in enumerate(choices[start : start + batch_size]):
            margin = (logits[r, good] - logits[r, bad]).float()
            out[rows[start + r]] = float(torch.sigmoid(margin))
    return out


def evaluate(
    task: Task,
    model: Any,
    tokenizer: Any,
    batch_size: int = 16,
    cases: list[EvalCase] | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The task's behaviour metrics on `cases` (default: its held-out validation cases), its
    smooth metrics where it has contrasts (`Task.contrasts`), and a sample per case."""
    cases = task.eval_cases() if cases is None else cases
    responses = generate(
        model,
        tokenizer,
        [c.messages for c in cases],
        task.max_new_tokens,
        batch_size,
        tools=[c.extra.get("tools") for c in cases],
        keep_tokens=task.keep_tokens,
    )
    metrics, samples = task.score(cases, responses)
    contrasts = task.contrasts(cases)
    if any(contrast is not None for contrast in contrasts):
        chosen = preferences(model, tokenizer, cases, contrasts, batch_size)
        metrics.update(task.soft_metrics(cases, chosen))
    return metrics, samples
