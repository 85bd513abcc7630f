"""Without RAY_ADDRESS a sweep starts a Ray of its own on loopback, and never joins a cluster
that `ray start` left on the machine (Ray's default for an address of None)."""

from __future__ import annotations

from typing import Any

import pytest


def test_without_ray_address_a_new_local_ray_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from ftray.sweep.ray_session import init_ray

    calls: list[dict[str, Any]] = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    init_ray()
    assert calls[0]["address"] == "local"
    assert calls[0]["_node_ip_address"] == "127.0.0.1"
    assert calls[0]["include_dashboard"] is False
