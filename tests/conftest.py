from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "search_spaces"
DATASETS = ROOT / "datasets"

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"


@pytest.fixture(scope="session", autouse=True)
def _tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Build tiny models in a fresh cache, as CI would."""
    os.environ["FTRAY_CACHE_DIR"] = str(tmp_path_factory.mktemp("ftray-cache"))


def run_cli(
    *args: str, cwd: Path = ROOT, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m ftray ARGS`; reports on stderr whether torch or ray got imported (bad input must not)."""
    probe = (
        "import sys; from ftray.cli import main; rc = main(sys.argv[1:]); "
        "sys.stderr.write('HEAVY-IMPORT\\n' if {'torch', 'ray'} & set(sys.modules) else ''); sys.exit(rc)"
    )
    return subprocess.run(
        [sys.executable, "-c", probe, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
