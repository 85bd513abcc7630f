"""A Hub base is pinned by the commit a trial trained on and loaded from the local Hugging
Face cache only; a missing one is a clear error naming the download command."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftray.config import load_spec
from ftray.models.peft_backend import BaseModelMissing, load_for_inference, resolved_revision
from tests.conftest import SPECS

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline Hugging Face cache holding org/base at COMMIT (branch main)."""
    cache = tmp_path / "hub"
    repo = cache / "models--org--base"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    (repo / "snapshots" / COMMIT / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_a_cached_hub_base_is_pinned_to_its_commit(hub_cache: Path) -> None:
    assert resolved_revision("org/base", None) == COMMIT
    assert resolved_revision("org/base", "main") == COMMIT
    assert resolved_revision("org/other", None) == "unresolved"
    assert resolved_revision("org/other", "v1") == "v1"


def test_a_local_folder_is_not_a_hub_revision(tmp_path: Path) -> None:
    assert resolved_revision(str(tmp_path), None) == "local"


def test_a_base_missing_from_the_cache_is_a_clear_error(hub_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(BaseModelMissing) as raised:
        load_for_inference("org/absent", str(tmp_path), load_in_4bit=False, revision="abc123")
    message = str(raised.value)
    assert "org/absent" in message and "hf download org/absent --revision abc123" in message


def test_model_revision_is_a_spec_field() -> None:
    spec = load_spec(SPECS / "trigger_tiny.yaml", ["model.revision=v2.0"])
    assert spec.model.revision == "v2.0"
    assert load_spec(SPECS / "trigger_tiny.yaml").model.revision is None
