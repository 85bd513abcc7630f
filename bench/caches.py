"""Cold caches for the benchmarks: every measured sweep starts as on a machine that has the
base model but has never run ftray with it."""

from __future__ import annotations

import shutil
from pathlib import Path


def cold_ftray_cache(root: Path, tiny: Path) -> Path:
    """A fresh ftray cache (for `FTRAY_CACHE_DIR`) under `root` holding only the built `tiny`
    base folder `tiny`, its files' times kept (the quantized copies' key reads them): no
    quantized base, no data check passed before."""
    cache = root / "ftray-cache"
    shutil.copytree(tiny, cache / "tiny" / tiny.name)
    return cache
