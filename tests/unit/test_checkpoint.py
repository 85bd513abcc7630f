"""Which epoch checkpoint a retried trial resumes from: the newest whose files match its
manifest, else the one before."""

from __future__ import annotations

import json
from pathlib import Path

from ftray.sweep.trainable import resume_point
from ftray.training.checkpoint import (
    EPOCH_METRICS,
    EPOCH_SAMPLES,
    MANIFEST,
    RESUME_FILES,
    STATE_JSON,
    STATE_TENSORS,
    TRAINER_STATE,
    checkpoint_problem,
    copy_adapter,
    write_manifest,
)


def _checkpoint(folder: Path, epoch: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"weights %d" % epoch)
    for name in (TRAINER_STATE, STATE_TENSORS, STATE_JSON):
        (folder / name).write_text(f"{name} {epoch}")
    (folder / EPOCH_METRICS).write_text(json.dumps({"epoch": epoch, "loss": 1.0 / epoch}))
    (folder / EPOCH_SAMPLES).write_text('{"prompt": "p", "response": "r"}\n')
    write_manifest(folder)
    return folder


def test_a_complete_checkpoint_is_usable(tmp_path: Path) -> None:
    assert checkpoint_problem(_checkpoint(tmp_path / "c", 1)) is None


def test_a_changed_byte_missing_file_or_missing_manifest_is_caught(tmp_path: Path) -> None:
    flipped = _checkpoint(tmp_path / "flipped", 1)
    data = bytearray((flipped / "adapter_model.safetensors").read_bytes())
    data[0] ^= 1
    (flipped / "adapter_model.safetensors").write_bytes(bytes(data))
    assert "adapter_model.safetensors does not match" in checkpoint_problem(flipped)

    missing = _checkpoint(tmp_path / "missing", 1)
    (missing / STATE_TENSORS).unlink()
    assert f"{STATE_TENSORS} is missing" == checkpoint_problem(missing)

    torn = _checkpoint(tmp_path / "torn", 1)
    (torn / MANIFEST).unlink()
    assert "not written to the end" in checkpoint_problem(torn)

    truncated = _checkpoint(tmp_path / "truncated", 1)
    (truncated / MANIFEST).write_text('{"files": {')
    assert "not written to the end" in checkpoint_problem(truncated)


def _tune_checkpoint(path: Path):
    from ray import tune

    return tune.Checkpoint(str(path))


def test_resume_falls_back_to_the_previous_checkpoint_when_the_newest_is_corrupted(
    tmp_path: Path,
) -> None:
    trial = tmp_path / "trial"
    _checkpoint(trial / "checkpoint_000000", 1)
    newest = _checkpoint(trial / "checkpoint_000001", 2)
    assert resume_point(_tune_checkpoint(newest), tmp_path / "a").name == "checkpoint_000001"

    (newest / STATE_JSON).write_text("garbage")
    chosen = resume_point(_tune_checkpoint(newest), tmp_path / "b")
    assert chosen is not None and chosen.name == "checkpoint_000000"
    assert json.loads((chosen / EPOCH_METRICS).read_text())["epoch"] == 1


def test_only_the_files_the_manifest_lists_are_resumed_from(tmp_path: Path) -> None:
    newest = _checkpoint(tmp_path / "trial" / "checkpoint_000000", 1)
    # Files the Trainer would torch.load on resume, planted after ftray wrote the checkpoint.
    for planted in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "sub/adapter_model.bin"):
        (newest / planted).parent.mkdir(exist_ok=True)
        (newest / planted).write_bytes(b"not ftray's")
    chosen = resume_point(_tune_checkpoint(newest), tmp_path / "into")
    assert chosen is not None
    assert {str(p.relative_to(chosen)) for p in chosen.rglob("*") if p.is_file()} == {
        "adapter_model.safetensors",
        TRAINER_STATE,
        STATE_TENSORS,
        STATE_JSON,
        EPOCH_METRICS,
        EPOCH_SAMPLES,
        MANIFEST,
    }


def test_resume_starts_over_when_no_checkpoint_is_usable(tmp_path: Path) -> None:
    only = _checkpoint(tmp_path / "trial" / "checkpoint_000003", 4)
    (only / MANIFEST).unlink()
    assert resume_point(_tune_checkpoint(only), tmp_path / "into") is None


def test_the_adapter_copied_out_leaves_the_resume_state_behind(tmp_path: Path) -> None:
    source = _checkpoint(tmp_path / "c", 1)
    copy_adapter(source, tmp_path / "adapter")
    assert [p.name for p in (tmp_path / "adapter").iterdir()] == ["adapter_model.safetensors"]
    assert set(RESUME_FILES) <= {p.name for p in source.iterdir()}
