"""ftray: hyperparameter sweeps of QLoRA fine-tuning on Ray."""

from __future__ import annotations

__version__ = "0.1.0"
