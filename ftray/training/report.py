"""What one epoch of a trial produced, and the hook that receives it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class EpochReport:
    """What one epoch produced: metrics (losses + behaviour), the saved adapter and samples."""

    epoch: int
    metrics: dict[str, float]
    adapter_dir: Path
    samples: list[dict[str, Any]] = field(repr=False)
    seconds: dict[str, float] = field(default_factory=dict, repr=False)
    """Where the epoch's time went: train, evaluate, checkpoint (and setup, first epoch)."""


class NonFiniteLoss(RuntimeError):
    """Training diverged: a loss became NaN or infinite, so the trial fails (it is never
    reported as a result, scored or registered)."""


EpochHook = Callable[[EpochReport], bool | None]
"""Called after each epoch; returning True stops training early."""
