"""One logging channel for progress: the `ftray` logger.

Progress and warnings go to stderr as `[ftray] ...` lines; stdout carries only results
(the leaderboard, metrics JSON). `ftray --quiet` shows warnings only, `--verbose` adds debug
lines. Library code logs through `get_logger()`; the CLI (and each Ray trial process) calls
`configure()` once. Every line is masked (`ftray.redaction.mask_secrets`) before it is written.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout

from ftray.redaction import mask_secrets

LOGGER_NAME = "ftray"
QUIET, NORMAL, VERBOSE = -1, 0, 1


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (pytest and notebooks swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # the base class assigns it; sys.stderr wins
        pass


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = mask_secrets(record.getMessage())
        if record.levelno >= logging.ERROR:
            message = f"error: {message}"
        elif record.levelno >= logging.WARNING:
            message = f"warning: {message}"
        return f"[ftray] {message}"


def get_logger() -> logging.Logger:
    """The `ftray` logger."""
    return logging.getLogger(LOGGER_NAME)


def configure(verbosity: int = NORMAL) -> None:
    """Send ftray's log lines to stderr: QUIET warnings only, NORMAL progress, VERBOSE debug.

    Safe to call again (the handler is replaced, not added twice).
    """
    logger = get_logger()
    for handler in list(logger.handlers):
        if isinstance(handler, _Stderr):
            logger.removeHandler(handler)
    handler = _Stderr()
    handler.setFormatter(_Format())
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(
        logging.WARNING
        if verbosity <= QUIET
        else logging.DEBUG
        if verbosity >= VERBOSE
        else logging.INFO
    )


LIBRARY_CHATTER = {
    "mlflow": logging.WARNING,  # "Creating initial MLflow database tables..."
    "alembic": logging.WARNING,  # the same database migrations, line by line
    "optuna": logging.WARNING,  # "A new study created in memory with name: ..."
    "ray.tune.tune": logging.ERROR,  # Ray's own resume advice (`Tuner.restore(...)`)
    # "The `process_trial_result` operation took 0.6 s, which may be a performance
    # bottleneck": the driver's MLflow writes, which take that long by design.
    "ray.tune.utils.util": logging.ERROR,
    # "Failed to fetch metrics for 1 trial(s)": a trial interrupted before its first epoch
    # has none; ftray reports every trial itself.
    "ray.tune.analysis.experiment_analysis": logging.ERROR,
    "py.warnings": logging.ERROR,  # libraries' Python warnings (see quiet_library_logs)
}
"""Library loggers whose lines are not for ftray's user, and the least level they still
show (Ray's resume advice and slowness notes none: ftray prints its own resume command);
everything with --verbose."""


def _verbose() -> bool:
    """Whether ftray runs with --verbose (its logger shows debug lines)."""
    return get_logger().getEffectiveLevel() <= logging.DEBUG


def quiet_library_logs() -> None:
    """Keep library INFO chatter off stderr unless ftray is --verbose. Call it after the
    libraries are imported: MLflow and Optuna set their loggers' levels when imported."""
    verbose = _verbose()
    # MLflow draws a progress bar on stderr for every artifact it downloads (spec.yaml, ...).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Python warnings (MLflow's advice on the type hints of the registered model's predict(),
    # given inside its own warnings filter) go to the `py.warnings` logger, which keeps them;
    # with --verbose they are printed as Python prints them.
    logging.captureWarnings(not verbose)
    for name, level in LIBRARY_CHATTER.items():
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else level)


AFTER_STOP_CHATTER = (
    # "Saving experiment state to storage ... failed" with Ray's traceback
    "ray.tune.execution.experiment_state",
    # "Unhandled error": a stopped trial's failure that Tune no longer collects
    "ray._private.worker",
    "ray.tune.execution.tune_controller",  # "Trial task failed for trial ..."
)
"""Ray loggers that, once ftray has stopped a sweep for a reason it reports itself (a node
that cannot see the storage folder), only repeat that reason as tracebacks."""


def quiet_after_stop() -> None:
    """Keep the tracebacks of trials and syncs cut off by a sweep ftray stopped off stderr
    (debug lines with --verbose, which shows them as they are)."""
    if _verbose():
        return
    for name in AFTER_STOP_CHATTER:
        logging.getLogger(name).setLevel(logging.CRITICAL)


class _DebugLines(io.TextIOBase):
    """A text stream whose every line becomes a debug line of the `ftray` logger."""

    def __init__(self) -> None:
        super().__init__()
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            if line.strip():
                get_logger().debug(line.rstrip())
        return len(text)

    def flush(self) -> None:
        if self._pending.strip():
            get_logger().debug(self._pending.rstrip())
        self._pending = ""


@contextmanager
def library_prints_to_debug() -> Iterator[None]:
    """Inside: what libraries print to stdout (Ray Tune's configuration box and TensorBoard
    hint, whatever its reporter) becomes debug lines, so stdout carries only results."""
    stream = _DebugLines()
    try:
        with redirect_stdout(stream):
            yield
    finally:
        stream.flush()
