"""What every e2e test file shares: the check that no Ray outlives the file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.e2e.ray_helpers import RAY_TEMPS, processes_of, stop_nodes

LEFTOVER_GRACE_S = 10.0
"""How long a Ray found running at the end of a test file may take to finish stopping: a
driver stops its Ray before it exits, and the tests stop their nodes and wait for them, so
this covers only processes already on their way out."""


@pytest.fixture(scope="module", autouse=True)
def _no_ray_left_running(_ray_tmpdir: Path) -> Iterator[None]:
    """No Ray outlives the e2e file whose sweeps, heads or clusters started it: once the
    file's tests and fixtures are done, nothing may run under this test process's RAY_TMPDIR
    (its sweeps' own Rays, `ray.cluster_utils` clusters) nor under a `short_ray_temp` folder
    (`ray start` nodes, sweeps given a RAY_TMPDIR of their own). A Ray left behind fails the
    file's last test at teardown, and is stopped, so the next file is judged on its own."""
    yield
    temps = [_ray_tmpdir, *RAY_TEMPS]
    RAY_TEMPS.clear()
    leftover = [process for temp in temps for process in processes_of(temp)]
    _, alive = psutil.wait_procs(leftover, timeout=LEFTOVER_GRACE_S)
    if not alive:
        return
    described = []
    for process in alive:
        try:
            described.append(f"{process.pid}: {' '.join(process.cmdline())[:300]}")
        except psutil.Error:
            continue
    for temp in temps:
        stop_nodes(temp)
    if described:
        pytest.fail(
            f"Ray left running after this file's tests ({len(described)} processes):\n"
            + "\n".join(described),
            pytrace=False,
        )
