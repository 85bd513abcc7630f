from __future__ import annotations

from ftray.cli import main

raise SystemExit(main())
