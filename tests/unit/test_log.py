"""One logging channel: `[ftray]` lines on stderr, --quiet and --verbose, stdout for results."""

from __future__ import annotations

import pytest

from ftray import __version__
from ftray.log import NORMAL, QUIET, VERBOSE, configure, get_logger
from tests.conftest import SPECS, run_cli


@pytest.fixture(autouse=True)
def _restore_logging():
    yield
    configure(NORMAL)


@pytest.mark.parametrize(
    ("verbosity", "shown"),
    [(QUIET, ["warning"]), (NORMAL, ["info", "warning"]), (VERBOSE, ["debug", "info", "warning"])],
)
def test_verbosity_decides_what_reaches_stderr(
    capsys: pytest.CaptureFixture[str], verbosity: int, shown: list[str]
) -> None:
    configure(verbosity)
    log = get_logger()
    log.debug("a debug line")
    log.info("an info line")
    log.warning("a warning line")
    out, err = capsys.readouterr()
    assert out == ""
    expected = {
        "debug": "[ftray] a debug line",
        "info": "[ftray] an info line",
        "warning": "[ftray] warning: a warning line",
    }
    assert err.splitlines() == [expected[level] for level in shown]


def test_configuring_twice_does_not_print_twice(capsys: pytest.CaptureFixture[str]) -> None:
    configure(NORMAL)
    configure(NORMAL)
    get_logger().info("once")
    assert capsys.readouterr().err == "[ftray] once\n"


def test_version_and_quiet_flags() -> None:
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"ftray {__version__}"
    quiet = run_cli("--quiet", "validate", str(SPECS / "trigger_tiny.yaml"))
    assert quiet.returncode == 0 and quiet.stdout.startswith("ok: ")
    both = run_cli("--quiet", "--verbose", "validate", str(SPECS / "trigger_tiny.yaml"))
    assert both.returncode == 2 and "not allowed with" in both.stderr
