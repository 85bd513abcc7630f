from __future__ import annotations

from ftray.cli import entry

entry()
