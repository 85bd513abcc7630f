"""The `ftray` command ends without the interpreter's teardown of its modules, after every
exit handler, thread and finalizer the libraries left, with `main`'s exit code and its
output whole."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import ROOT

# A stand-in for `main` that leaves what a sweep's libraries leave at exit: an exit handler
# registered late, a non-daemon thread still working, a TemporaryDirectory left to its
# finalizer, output not yet flushed, and a module-level object whose __del__ runs only in
# the interpreter's teardown.
PROGRAM = textwrap.dedent(
    """
    import atexit, sys, tempfile, threading, time
    from pathlib import Path
    import ftray.cli

    out = Path(sys.argv[1])

    class TornDown:
        def __del__(self):
            (out / "teardown").write_text("ran")

    def fake_main():
        global kept, leftover
        kept = TornDown()
        atexit.register(lambda: (out / "handler").write_text("ran"))
        def work():
            time.sleep(0.3)
            (out / "thread").write_text("ran")
        threading.Thread(target=work).start()
        leftover = tempfile.TemporaryDirectory(dir=out)
        (out / "tempdir").write_text(leftover.name)
        sys.stdout.write("last line, unflushed")
        return int(sys.argv[2])

    ftray.cli.main = fake_main
    ftray.cli.entry()
    """
)


def run(tmp_path: Path, code: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROGRAM, str(tmp_path), str(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_command_exits_with_mains_code_after_every_handler_and_skips_teardown(
    tmp_path: Path,
) -> None:
    done = run(tmp_path, 3)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "last line, unflushed"
    assert (tmp_path / "handler").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "ran"
    assert not Path((tmp_path / "tempdir").read_text()).exists()
    assert not (tmp_path / "teardown").exists()  # the interpreter's teardown was skipped


def test_a_zero_exit_is_zero(tmp_path: Path) -> None:
    assert run(tmp_path, 0).returncode == 0
