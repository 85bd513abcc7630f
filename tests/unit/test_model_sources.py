"""A base model that is not `tiny`, a local folder or a Hugging Face id this machine can load
is bad input before anything loads (exit 2 at `model.base`'s line), with the nearest cached
names; a GPU spec stays checkable on a machine without the model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ftray.config import load_spec
from ftray.models.sources import base_model_problem, cached_models, nearest_cached
from tests.conftest import SPECS, run_cli
from tests.fake_hub import fake_hub

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_model(cache: Path, repo: str, commit: str = COMMIT, ref: str | None = "main") -> None:
    """A model in the layout huggingface_hub writes: snapshots/<commit>/, refs/<ref>."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "snapshots" / commit / "config.json").write_text("{}")
    if ref is not None:
        (folder / "refs").mkdir()
        (folder / "refs" / ref).write_text(commit)


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hub"
    cache.mkdir()
    cache_model(cache, "unsloth/Llama-3.2-3B-Instruct-bnb-4bit")
    cache_model(cache, "Qwen/Qwen2.5-0.5B-Instruct")
    (cache / "models--half--downloaded" / "snapshots").mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return cache


def test_cached_models_are_those_with_a_snapshot(hub_cache: Path) -> None:
    assert cached_models() == [
        "Qwen/Qwen2.5-0.5B-Instruct",
        "unsloth/Llama-3.2-3B-Instruct-bnb-4bit",
    ]
    assert nearest_cached("Qwen/Qwen2.5-0.5B-instruct") == ["Qwen/Qwen2.5-0.5B-Instruct"]
    assert nearest_cached("qwen2.5-0.5b-instruct") == ["Qwen/Qwen2.5-0.5B-Instruct"]


@pytest.mark.parametrize(
    "base", ["tiny", "unsloth/Llama-3.2-3B-Instruct-bnb-4bit", "Qwen/Qwen2.5-0.5B-Instruct"]
)
def test_tiny_and_cached_models_pass(hub_cache: Path, base: str) -> None:
    spec = load_spec(SPECS / "trigger_tiny.yaml", [f"model.base={base}"])
    assert base_model_problem(spec) == (None, None)


def test_a_local_folder_passes_and_a_missing_one_is_an_error(
    hub_cache: Path, tmp_path: Path
) -> None:
    spec = load_spec(SPECS / "trigger_tiny.yaml", [f"model.base={tmp_path}"])
    assert base_model_problem(spec) == (None, None)
    gone = load_spec(SPECS / "trigger_tiny.yaml", [f"model.base={tmp_path / 'a' / 'b' / 'c'}"])
    error, _ = base_model_problem(gone)
    assert error is not None and "neither 'tiny', a model folder, nor a Hugging Face id" in str(
        error
    )


def test_a_revision_the_cache_lacks_is_an_error_offline(hub_cache: Path) -> None:
    base = "Qwen/Qwen2.5-0.5B-Instruct"
    at_commit = load_spec(
        SPECS / "trigger_tiny.yaml", [f"model.base={base}", f"model.revision={COMMIT}"]
    )
    assert base_model_problem(at_commit) == (None, None)
    other = load_spec(SPECS / "trigger_tiny.yaml", [f"model.base={base}", "model.revision=v2"])
    error, _ = base_model_problem(other)
    assert error is not None and "at revision v2" in error.message
    assert f"hf download {base} --revision v2" in error.message


def test_an_uncached_model_is_a_warning_when_the_hub_may_be_reached(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_spec(SPECS / "trigger_tiny.yaml", ["model.base=Qwen/Qwen2.5-7B-Instruct"])
    monkeypatch.delenv("HF_HUB_OFFLINE")
    from huggingface_hub import constants

    # As in a process started without HF_HUB_OFFLINE (huggingface_hub reads it at import).
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with fake_hub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.files["Qwen/Qwen2.5-7B-Instruct"] = {"config.json": b"{}"}
        error, warning = base_model_problem(spec)
        assert ("GET", "/api/models/Qwen/Qwen2.5-7B-Instruct") in hub.requests
        # A Hub that does not answer: the trial's own download will say why; a warning.
        hub.fail["info"] = 503
        assert base_model_problem(spec)[0] is None
    assert error is None and warning is not None
    assert "not in this machine's Hugging Face cache" in warning.message
    assert "Qwen/Qwen2.5-0.5B-Instruct" in warning.message
    # Offline, but the trials run on a cluster whose nodes load the model: a warning too.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    error, warning = base_model_problem(spec, local=False)
    assert error is None and "each trial's node" in warning.message


def test_a_mistyped_model_is_bad_input_for_validate_and_train(hub_cache: Path) -> None:
    spec = SPECS / "trigger_tiny.yaml"
    for command in ("validate", "train"):
        result = run_cli(command, str(spec), "--set", "model.base=tinny")
        assert result.returncode == 2, result.stderr[-3000:]
        assert "Traceback" not in result.stderr and "HEAVY-IMPORT" not in result.stderr
        [line] = result.stderr.strip().splitlines()
        assert re.match(
            rf"error: {re.escape(str(spec))}: --set model.base=tinny: model.base 'tinny' is not "
            r"'tiny', not a local folder and not in the Hugging Face cache",
            line,
        ), line
        assert "HF_HUB_OFFLINE is set; did you mean 'tiny'?" in line and "hf download tinny" in line


def test_a_model_the_hub_does_not_know_is_bad_input_where_the_hub_may_be_reached(
    hub_cache: Path,
) -> None:
    spec = SPECS / "trigger_tiny.yaml"
    with fake_hub() as hub:
        env = {"HF_HUB_OFFLINE": "", "HF_ENDPOINT": hub.url}
        for command in ("validate", "train"):
            result = run_cli(
                command, str(spec), "--set", "model.base=Qwen/Qwen2.5-7B-Instruc", env=env
            )
            assert result.returncode == 2, result.stderr[-3000:]
            assert "Traceback" not in result.stderr and "HEAVY-IMPORT" not in result.stderr
            [line] = result.stderr.strip().splitlines()
            assert line.startswith(
                f"error: {spec}: --set model.base=Qwen/Qwen2.5-7B-Instruc: model.base "
                "'Qwen/Qwen2.5-7B-Instruc' is not on the Hugging Face Hub, or is private"
            ), line
            assert "nearest cached: Qwen/Qwen2.5-0.5B-Instruct" in line, line
        assert ("GET", "/api/models/Qwen/Qwen2.5-7B-Instruc") in hub.requests


def test_the_line_of_model_base_and_the_nearest_cached_names(
    hub_cache: Path, tmp_path: Path
) -> None:
    text = (SPECS / "trigger_tiny.yaml").read_text()
    text = text.replace("  base: tiny", "  base: unsloth/Llama-3.2-3B-Instruct-bnb4bit")
    text = text.replace("../datasets", str(SPECS.parent / "datasets"))
    (tmp_path / "s.yaml").write_text(text)
    result = run_cli("validate", str(tmp_path / "s.yaml"))
    assert result.returncode == 2, result.stderr
    line = text.splitlines().index("  base: unsloth/Llama-3.2-3B-Instruct-bnb4bit") + 1
    [error] = result.stderr.strip().splitlines()
    assert error.startswith(f"error: {tmp_path / 's.yaml'}:{line}: model.base "), error
    assert "nearest cached: unsloth/Llama-3.2-3B-Instruct-bnb-4bit" in error


def test_shipped_gpu_specs_validate_with_a_warning_where_the_hub_may_be_reached(
    tmp_path: Path,
) -> None:
    specs = sorted(SPECS.glob("*gpu*.yaml"))
    with fake_hub() as hub:  # the Hub, knowing the models the GPU specs name
        for spec in specs:
            hub.files[load_spec(spec).model.base] = {"config.json": b"{}"}
        env = {"HF_HUB_OFFLINE": "", "HF_HUB_CACHE": str(tmp_path), "HF_ENDPOINT": hub.url}
        for spec in specs:
            result = run_cli("validate", str(spec), env=env)
            assert result.returncode == 0, result.stderr
            assert "not in this machine's Hugging Face cache" in result.stderr
