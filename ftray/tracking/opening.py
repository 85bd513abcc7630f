"""Opening an MLflow tracking store so that no two processes make its tables at once.

MLflow creates (and migrates) a database store's tables the first time a process opens it,
with nothing to stop a second process doing the same: two processes opening one new store
at once (a sweep and `mlflow ui`, or a watcher's `MlflowClient`) crash one of them half-way
("table experiments already exists", "duplicate column name", `AttributeError:
dimension_attributes`, "Detected out-of-date database schema"), and on SQLite, whose
migrations commit step by step, the two can leave the store broken for good (a stray
`_alembic_tmp_<table>`). `open_store` opens a database store under a lock every ftray
process takes (a file lock beside a SQLite database, an advisory lock in PostgreSQL). A new
SQLite store is made in a file of its own beside the database and linked into place
whole, so a process that takes no lock (plain MLflow) never sees it half made; where such
a process made the file first, ftray waits until the store stops changing and opens it
then, and again (after the same wait) when the opening fails all the same.

MLflow keeps the store it built for the rest of the process, by URI (the tracking and the
registry store registries' caches), so every later `MlflowClient(uri)` here uses the store
opened here; a build that failed is not kept, so opening again builds it anew. A tracking
server (http, https) makes its own tables, and a file store has none: both open as they are.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ftray.config.tracking_uri import SQLITE_PREFIX, local_store_path
from ftray.log import get_logger
from ftray.redaction import mask_url_passwords

OPEN_TIMEOUT_S = 60.0
"""How long a process keeps trying (the lock, then the opening) before it gives up."""
QUIET_S = 1.5
"""A store whose tables and schema version stayed the same this long is taken to be made:
no other process is migrating it (MLflow commits each step of a SQLite migration)."""
EMPTY_QUIET_S = 5.0
"""The same for a SQLite file without tables: another process may have created the file and
not yet begun to make them (it takes seconds to import what it needs)."""
SETTLED_S = 5.0
"""A store MLflow finds at an old schema version, its tables and version unchanged this
long, is not being migrated by anyone: it needs `mlflow db upgrade`."""
OLD_SCHEMA = "out-of-date database schema"
"""In MLflow's message for a store whose schema is older than the installed MLflow's."""
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
ADVISORY_LOCK_KEY = 0x66747261795F6D6C  # "ftray_ml": the PostgreSQL lock of every ftray process
LOCK_SUFFIX = ".lock"
log = get_logger()

_opened: set[str] = set()
"""The stores this process opened: MLflow keeps them, so they open again without a lock."""


class StoreUnavailable(Exception):
    """A tracking store that cannot be opened: exit 1, one `error:` line naming the store
    (its password masked) and the cause."""

    def __init__(self, uri: str, cause: str) -> None:
        self.uri = uri
        super().__init__(f"cannot open the MLflow store {mask_url_passwords(uri)}: {cause}")


def open_store(uri: str) -> Any:
    """An `MlflowClient` of the store at `uri`, its tables made or checked by this process
    alone among ftray's (a new SQLite store made aside and linked into place, its folder
    made too); StoreUnavailable when it cannot be opened: at once for a store that does not
    answer, else after OPEN_TIMEOUT_S."""
    from mlflow import MlflowClient

    if uri in _opened or database_scheme(uri) is None:
        return MlflowClient(uri)
    deadline = time.monotonic() + OPEN_TIMEOUT_S
    reach_store(uri)
    database = sqlite_path(uri)
    engine = _engine(uri)
    try:
        with _creation_lock(uri, engine, deadline):
            if database is not None and not database.exists():
                _make_aside(uri, database)
            # A SQLite file without tables there now is another process's, its tables yet to
            # come (this one's own is linked in whole, or made here from no file).
            wait_if_empty = database is not None and database.exists()
            client = _open_until(uri, engine, deadline, wait_if_empty)
    finally:
        engine.dispose()
    _opened.add(uri)
    return client


def reach_store(uri: str) -> None:
    """Check, without MLflow, that the database store at `uri` answers a read of its table
    names, so that `ftray sweep` refuses a store it cannot use before Ray starts:
    StoreUnavailable for a server that refuses the connection, a SQLite file that is not a
    database, a folder that cannot be made or written. Another store passes; nothing is
    created but a SQLite store's folder."""
    database = sqlite_path(uri)
    if database is not None:
        _reach_sqlite(uri, database)
    elif database_scheme(uri) is not None:
        engine = _engine(uri)
        try:
            _schema_state(engine)
        except Exception as exc:
            raise StoreUnavailable(uri, _cause(exc)) from None
        finally:
            engine.dispose()


def database_scheme(uri: str) -> str | None:
    """The database of a database store's URI (`sqlite`, `postgresql`, ...), else None."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    return scheme if ":" in uri and scheme in DATABASE_SCHEMES else None


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` store, absolute; None for another store or an
    in-memory database."""
    path = local_store_path(uri) if uri.startswith("sqlite:") else None
    return path.absolute() if path is not None else None


def _reach_sqlite(uri: str, database: Path) -> None:
    """Make the database's folder and read its table names (Python's sqlite3: milliseconds,
    where SQLAlchemy's import takes half a second), or check that a new one can be written."""
    import sqlite3

    folder = database.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailable(
            uri, f"cannot make its folder {folder}: {exc.strerror or exc}"
        ) from None
    if not database.exists():
        if not os.access(folder, os.W_OK | os.X_OK):
            raise StoreUnavailable(uri, f"cannot write in its folder {folder}")
        return
    try:
        # A writer can hold the file for a while: a migration of another process's.
        with contextlib.closing(sqlite3.connect(database, timeout=OPEN_TIMEOUT_S)) as db:
            db.execute("SELECT name FROM sqlite_master").fetchall()
    except sqlite3.Error as exc:
        raise StoreUnavailable(uri, str(exc)) from None


def _make_aside(uri: str, database: Path) -> None:
    """Make a new SQLite store's tables in a file of this process's own beside `database`,
    then link it into place unless a file is there by then (a process that takes no lock
    made it: that one is opened in place). Where hard links cannot be made, nothing is
    linked: the store is made in place."""
    from mlflow import MlflowClient

    aside = database.with_name(f".{database.name}.{os.getpid()}-{secrets.token_hex(4)}.new")
    try:
        try:
            client = MlflowClient(f"{SQLITE_PREFIX}{aside}")
            client.search_experiments(max_results=1)
            client.search_registered_models(max_results=1)
        except Exception as exc:
            raise StoreUnavailable(uri, _cause(exc)) from None
        try:
            os.link(aside, database)
        except FileExistsError:
            log.debug(f"{database} was made by another process while this one made {aside}")
        except OSError as exc:
            log.debug(f"cannot link {aside} to {database} ({exc}); making the store in place")
    finally:
        with contextlib.suppress(OSError):
            aside.unlink()


def _engine(uri: str) -> Any:
    """A SQLAlchemy engine of ftray's own for `uri` (MLflow's opens and migrates the store),
    with no pool: each use connects afresh, and disposing it leaves no connection open."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    try:
        return sqlalchemy.create_engine(uri, poolclass=NullPool)
    except Exception as exc:  # a URI SQLAlchemy cannot read, a driver that is not installed
        raise StoreUnavailable(uri, _cause(exc)) from None


def _open_until(uri: str, engine: Any, deadline: float, wait_if_empty: bool) -> Any:
    """The client of the store, opened (with `wait_if_empty`, one without tables once it
    stops changing) and opened again while the opening fails, each time once the store
    stops changing (another process may be making its tables), until `deadline`; a store
    at an old schema that nobody is migrating fails after SETTLED_S."""
    from mlflow import MlflowClient

    watch = SchemaWatch(engine)
    if wait_if_empty and watch.empty():
        watch.wait_quiet(deadline)
    while True:
        try:
            client = MlflowClient(uri)  # MLflow makes or checks the tables here
            client.search_experiments(max_results=1)
            client.search_registered_models(max_results=1)  # the registry's store, kept too
            return client
        except Exception as exc:
            watch.look()
            now = time.monotonic()
            old = OLD_SCHEMA in str(exc) and watch.unchanged_for() >= SETTLED_S
            if old or now + QUIET_S > deadline:
                tried = f" (tried for {now - (deadline - OPEN_TIMEOUT_S):.0f} s)"
                raise StoreUnavailable(uri, _cause(exc) + tried) from None
            log.debug(f"opening {mask_url_passwords(uri)} again once it is quiet: {_cause(exc)}")
            watch.wait_quiet(deadline)


class SchemaWatch:
    """A database's table names and schema version as last seen, and since when."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.state: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self.since = time.monotonic()
        self.look()

    def look(self) -> None:
        """Read the state again; one that cannot be read (a writer holds the database) is
        a change."""
        try:
            seen = _schema_state(self.engine)
        except Exception:
            seen = None
        if seen is None or seen != self.state:
            self.state, self.since = seen, time.monotonic()

    def empty(self) -> bool:
        """Whether the database was seen without tables."""
        return self.state is not None and not self.state[0]

    def unchanged_for(self) -> float:
        """Seconds since the state last changed."""
        return time.monotonic() - self.since

    def wait_quiet(self, deadline: float) -> None:
        """Return once the state stayed the same QUIET_S (EMPTY_QUIET_S without tables), or
        at `deadline`."""
        while time.monotonic() < deadline:
            if self.unchanged_for() >= (EMPTY_QUIET_S if self.empty() else QUIET_S):
                return
            time.sleep(0.1)
            self.look()


def _schema_state(engine: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The database's table names and its schema revisions (Alembic's), both sorted."""
    import sqlalchemy

    with engine.connect() as connection:
        tables = tuple(sorted(sqlalchemy.inspect(connection).get_table_names()))
        revisions: tuple[str, ...] = ()
        if "alembic_version" in tables:
            rows = connection.exec_driver_sql("SELECT version_num FROM alembic_version")
            revisions = tuple(sorted(str(row[0]) for row in rows))
    return tables, revisions


@contextlib.contextmanager
def _creation_lock(uri: str, engine: Any, deadline: float) -> Iterator[None]:
    """Held while this process opens the store: a file lock beside a SQLite database, a
    PostgreSQL advisory lock; none for another database (the retries cover it)."""
    database = sqlite_path(uri)
    if database is not None:
        with _file_lock(uri, database.with_name(database.name + LOCK_SUFFIX), deadline):
            yield
    elif database_scheme(uri) == "postgresql":
        with _advisory_lock(uri, engine, deadline):
            yield
    else:
        yield


@contextlib.contextmanager
def _file_lock(uri: str, path: Path, deadline: float) -> Iterator[None]:
    """An exclusive flock on `path` (made if missing, never removed: a process waiting on it
    would otherwise lock a file no one else sees). A folder where it cannot be made is
    one no new store can be made in either: the opening goes on without it."""
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        log.debug(f"no lock file {path} ({exc}); opening the store without it")
        descriptor = None
    if descriptor is None:
        yield
        return
    try:
        _wait_for(uri, lambda: _try_flock(descriptor), deadline, str(path))
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _try_flock(descriptor: int) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def _advisory_lock(uri: str, engine: Any, deadline: float) -> Iterator[None]:
    """PostgreSQL's session advisory lock ADVISORY_LOCK_KEY, on a connection of its own."""
    try:
        connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    except Exception as exc:
        raise StoreUnavailable(uri, _cause(exc)) from None
    with connection:
        take = f"SELECT pg_try_advisory_lock({ADVISORY_LOCK_KEY})"
        try:
            _wait_for(uri, lambda: bool(connection.exec_driver_sql(take).scalar()), deadline, "")
        except StoreUnavailable:
            raise
        except Exception as exc:  # the server went away
            raise StoreUnavailable(uri, _cause(exc)) from None
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # closing the connection releases it too
                connection.exec_driver_sql(f"SELECT pg_advisory_unlock({ADVISORY_LOCK_KEY})")


def _wait_for(uri: str, take: Any, deadline: float, what: str) -> None:
    """Call `take` until it returns True; StoreUnavailable past `deadline`."""
    if take():
        return
    where = f" (lock {what})" if what else ""
    log.info(f"another process is opening the MLflow store; waiting for it{where}")
    while not take():
        if time.monotonic() > deadline:
            cause = f"another process held its lock{where} for {OPEN_TIMEOUT_S:.0f} s"
            raise StoreUnavailable(uri, cause)
        time.sleep(0.05)


def _cause(exc: BaseException) -> str:
    """One line of what went wrong: the database driver's own message where SQLAlchemy
    wrapped one, without the SQL statement and the link SQLAlchemy appends."""
    orig = getattr(exc, "orig", None)
    text = str(getattr(exc, "message", None) or orig or exc)
    text = text.split("[SQL:")[0].split("(Background on this error")[0]
    text = " ".join(text.split())
    if orig is None and not hasattr(exc, "message"):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return mask_url_passwords(text)
