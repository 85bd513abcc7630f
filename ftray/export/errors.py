"""Errors raised by the export steps."""

from __future__ import annotations


class ExportFailed(RuntimeError):
    """An export step failed at run time (exit code 1)."""
