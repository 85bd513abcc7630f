"""Exports re-checked: the task's behaviour suite run on what `ftray export` wrote.

Merging in another precision and converting are where fine-tunes get lost, so a merged
export (and the merged model a GGUF or Ollama export is converted from) answers the
held-out prompts the trial was scored on, greedily, loaded with transformers as a server
would load it; each behaviour metric is compared with the adapter's (the trial's last).
The held-out prompts come from the sweep that registered the version: its `spec.yaml` (the
data must be where the sweep read it) and, for tasks that store one, its split; they must
give the version's held-out fingerprint, else nothing is compared and the manifest says why.

A metric that falls more than `max_drop` below the adapter's (rises, for one where lower is
better) fails the export (exit 1) with the files kept. The GGUF file itself is not run
(transformers cannot load every GGUF ftray writes, and llama.cpp's runtime is not built by
default), nor is the Ollama model: its TEMPLATE is checked against the chat template when
the Modelfile is written.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftray.log import get_logger
from ftray.tasks.intervals import is_interval

DEFAULT_MAX_DROP = 0.05
LOWER_IS_BETTER = {"false_trigger_rate"}
SKIPPED = {"train_loss", "eval_loss", "epoch"}

log = get_logger()


@dataclass
class Recheck:
    """What the re-check found; `manifest()` is its part of manifest.json."""

    checked: str
    """What was run (`merged model with transformers`), or why nothing was."""
    held_out: int = 0
    max_drop: float = DEFAULT_MAX_DROP
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    """metric -> {adapter, export}."""

    @property
    def fell(self) -> list[str]:
        """`metric adapter -> export` for each metric that fell more than max_drop."""
        out = []
        for name, pair in self.metrics.items():
            drop = pair["export"] - pair["adapter"]
            if name not in LOWER_IS_BETTER:
                drop = -drop
            if drop > self.max_drop + 1e-9:
                out.append(f"{name} {pair['adapter']:.3g} -> {pair['export']:.3g}")
        return out

    def manifest(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "held_out": self.held_out,
            "max_drop": self.max_drop,
            "metrics": self.metrics,
        }


def heldout_task(client: Any, source: Any) -> tuple[Any, str | None]:
    """(the registering sweep's task with its held-out split, None), or (None, why not)."""
    import yaml

    from ftray.config import load_spec
    from ftray.errors import InputError
    from ftray.sweep.resume import recorded_spec, reuse_stored_split
    from ftray.tasks import load_task

    sweep_run_id = source.lineage.get("sweep_run_id")
    if not sweep_run_id:
        return None, "the version names no sweep run, so its held-out prompts are unknown"
    parent = client.get_run(sweep_run_id)
    recorded = recorded_spec(client, parent)
    if recorded is None:
        return None, f"sweep run {sweep_run_id} recorded no spec.yaml"
    with tempfile.TemporaryDirectory(prefix="ftray-recheck-") as folder:
        path = Path(folder) / "spec.yaml"
        path.write_text(yaml.safe_dump(recorded))
        try:
            task = load_task(load_spec(path))
        except InputError as exc:
            return None, f"the sweep's task data cannot be read here ({exc.problems[0]})"
    try:
        reuse_stored_split(client, sweep_run_id, task)
    except RuntimeError:  # the sweep stored none
        return None, f"sweep run {sweep_run_id} stored no held-out split"
    except Exception as exc:  # the data changed since the sweep split it
        return None, f"the sweep's held-out split cannot be used ({exc})"
    wanted = source.lineage.get("heldout_fingerprint")
    if wanted and task.heldout_fingerprint() != wanted:
        return None, "the task's held-out prompts here differ from the version's (fingerprint)"
    return task, None


def recheck_merged(folder: Path, task: Any, source: Any, max_drop: float) -> Recheck:
    """The behaviour suite on the merged model in `folder`, against the adapter's metrics."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftray.training.evaluate import evaluate

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model.eval()
    cases = task.eval_cases()
    metrics, _ = evaluate(task, model, tokenizer, cases=cases)
    compared = {
        name: {"adapter": float(source.metrics[name]), "export": float(value)}
        for name, value in metrics.items()
        if name in source.metrics
        and name not in SKIPPED
        and not is_interval(name)
        and "/" not in name
        and math.isfinite(value)
    }
    return Recheck(
        "the merged model with transformers (float32, greedy)", len(cases), max_drop, compared
    )


def not_checked(why: str, max_drop: float) -> Recheck:
    log.warning(f"the export's behaviour was not re-checked: {why}")
    return Recheck(f"not checked: {why}", 0, max_drop)
