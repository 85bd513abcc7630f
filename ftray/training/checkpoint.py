"""Epoch checkpoints a trial resumes from: what it needs to continue training where it
stopped, not at epoch 1.

Beside the adapter and tokenizer (`save_pretrained`, safetensors) an epoch's folder holds:
- `trainer_state.json`: the Trainer's state (global step, epoch); the Trainer resumes from it
  and skips the epochs already trained;
- `training_state.safetensors` + `training_state.json`: the optimizer's moments, the learning
  rate schedule and the random generators, so the next epoch is the one an uninterrupted run
  would have trained;
- `metrics.json` and `samples.jsonl`: the epoch's metrics and scored samples, so a trial
  lost after its last epoch finishes at once;
- `checkpoint.json`, written last: the SHA-256 of every file above. A folder without it (the
  copy was cut short) or whose files no longer match it is not resumed from.

A simulated trial's checkpoint holds `metrics.json`, `samples.jsonl` and `simulation.json`
(what it simulated) under the same manifest, and no adapter or training state.

Nothing here is pickled: tensors go through safetensors, the rest through JSON.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

from ftray.config.files import sha256_of_file

TRAINER_STATE = "trainer_state.json"
STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
EPOCH_METRICS = "metrics.json"
EPOCH_SAMPLES = "samples.jsonl"
MANIFEST = "checkpoint.json"
SIMULATION = "simulation.json"
"""In a simulated trial's checkpoint (`ftray.training.simulated`), in place of the training
state: what it simulated."""
# Kept for resuming and as the sweep's record of the epoch: an adapter copied out of a
# checkpoint (the final one, the registered one) leaves them behind.
RESUME_FILES = (TRAINER_STATE, STATE_TENSORS, STATE_JSON, EPOCH_METRICS, EPOCH_SAMPLES, MANIFEST)


def copy_adapter(checkpoint: str | Path, target: Path) -> None:
    """Copy the adapter and tokenizer of an epoch checkpoint to `target`, without the state
    kept only to resume training."""
    shutil.copytree(checkpoint, target, ignore=shutil.ignore_patterns(*RESUME_FILES))


def save_training_state(
    folder: Path,
    *,
    state: Any,
    optimizer: Any,
    scheduler: Any,
    epoch: int,
    metrics: dict[str, float],
    samples: list[dict[str, Any]],
) -> None:
    """Write the training state of an epoch that ended into `folder` (which already holds the
    adapter), then its manifest."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    state.save_to_json(str(folder / TRAINER_STATE))
    tensors: dict[str, Any] = {"rng.torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        for index, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = rng
    scalars: dict[str, Any] = {}
    optimizer_state = optimizer.state_dict()
    for param, values in optimizer_state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{param}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{param}.{name}"] = value
    save_file(tensors, str(folder / STATE_TENSORS))
    numpy_state = np.random.get_state()
    version, internal, gauss = random.getstate()
    (folder / STATE_JSON).write_text(
        json.dumps(
            {
                "optimizer": {"param_groups": optimizer_state["param_groups"], "scalars": scalars},
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": {
                    "python": [version, list(internal), gauss],
                    "numpy": [
                        numpy_state[0],
                        numpy_state[1].tolist(),
                        *[v.item() if hasattr(v, "item") else v for v in numpy_state[2:]],
                    ],
                },
            }
        )
    )
    (folder / EPOCH_METRICS).write_text(json.dumps({"epoch": epoch, **metrics}) + "\n")
    (folder / EPOCH_SAMPLES).write_text(
        "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), encoding="utf-8"
    )
    write_manifest(folder)


def write_manifest(folder: Path) -> None:
    """Checksums of every file in `folder`, written atomically and last."""
    files = {
        str(path.relative_to(folder)): sha256_of_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    staging = folder / f".{MANIFEST}.tmp"
    staging.write_text(json.dumps({"files": files}, indent=1) + "\n")
    os.replace(staging, folder / MANIFEST)


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` cannot be resumed from, or None when every file matches its manifest."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"no readable {MANIFEST} (the checkpoint was not written to the end)"
    needed = (
        (EPOCH_METRICS, SIMULATION)
        if SIMULATION in files
        else (TRAINER_STATE, STATE_TENSORS, STATE_JSON, EPOCH_METRICS)
    )
    for required in needed:
        if required not in files:
            return f"{required} is not in {MANIFEST}"
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if sha256_of_file(path) != digest:
            return f"{name} does not match its checksum"
    return None


def keep_only_manifest_files(folder: Path) -> None:
    """Delete every file of a valid checkpoint that its manifest does not list (a file planted
    there later, say a pickled `optimizer.pt` the Trainer would load on resume): training
    resumes only from what ftray wrote."""
    listed = set(json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"])
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST and str(path.relative_to(folder)) not in listed:
            path.unlink()


def checkpoint_report(folder: Path) -> tuple[int, dict[str, float]]:
    """The epoch a valid checkpoint ended and that epoch's metrics."""
    record = json.loads((folder / EPOCH_METRICS).read_text(encoding="utf-8"))
    return int(record.pop("epoch")), record


def load_training_state(folder: Path, *, optimizer: Any, scheduler: Any) -> None:
    """Restore the optimizer, the schedule and the random generators saved in `folder`."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(folder / STATE_TENSORS))
    saved = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        kind, _, rest = key.partition(".")
        if kind == "optimizer":
            param, _, name = rest.partition(".")
            per_param.setdefault(int(param), {})[name] = value
    for key, value in saved["optimizer"]["scalars"].items():
        param, _, name = key.partition(".")
        per_param.setdefault(int(param), {})[name] = value
    optimizer.load_state_dict(
        {"state": per_param, "param_groups": saved["optimizer"]["param_groups"]}
    )
    if scheduler is not None and saved["scheduler"] is not None:
        scheduler.load_state_dict(saved["scheduler"])
    python = saved["rng"]["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = saved["rng"]["numpy"]
    np.random.set_state((numpy[0], np.array(numpy[1], dtype=np.uint32), *numpy[2:]))
    torch.random.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
