"""MLflow tracking URIs that name a local store (a `sqlite:` database file, a `file:` URI
or a plain path to a file store's folder), made absolute against a folder: the spec's
folder for `tracking.uri`, the current folder for MLFLOW_TRACKING_URI and `--tracking-uri`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from ftray.config.files import resolved

SQLITE_PREFIX = "sqlite:///"
# MLflow's names of hosted stores, which carry no scheme and are not paths.
HOSTED_STORES = ("databricks", "databricks-uc", "uc")


def local_store_path(uri: str) -> Path | None:
    """The database file of a `sqlite:` URI or the folder of a file store (as written,
    perhaps relative); None for a tracking server, another database or in-memory SQLite."""
    if uri.startswith("sqlite:"):
        if not uri.startswith(SQLITE_PREFIX):
            return None
        database = uri[len(SQLITE_PREFIX) :].split("?", 1)[0]
        return None if database in ("", ":memory:") else Path(unquote(database))
    if uri.startswith("file:"):
        parts = urlsplit(uri)
        return Path(unquote(parts.path)) if parts.netloc in ("", "localhost") else None
    if urlsplit(uri).scheme or uri.split(":", 1)[0] in HOSTED_STORES:
        return None
    return Path(uri).expanduser()


def absolute_store_uri(uri: str, base: Path) -> str:
    """`uri` with a relative local store path made absolute against `base`; any other URI
    unchanged."""
    path = local_store_path(uri)
    if path is None or path.is_absolute():
        return uri
    absolute = resolved(base / path)
    if uri.startswith("sqlite:"):
        query = uri.partition("?")[2]
        return f"{SQLITE_PREFIX}{absolute}" + (f"?{query}" if query else "")
    if uri.startswith("file:"):
        return absolute.as_uri()
    return str(absolute)
