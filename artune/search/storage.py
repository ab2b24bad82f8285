"""The Optuna storage URL of a search (``--storage``): checked, made absolute, looked into without creating anything."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from artune.errors import SearchError
from artune.humanize import first_line
from artune.study import sqlite_file


def sqlite_write_error(url: str) -> Optional[OSError]:
    """Why a SQLite database's directory takes no write, as the OS says it (SQLite says only "unable to open
    database file" or "disk I/O error"): a page written and synced to a new file beside the database, then removed.
    None for another database, or where the write succeeds."""
    database = sqlite_file(url)
    if database is None or database == Path(":memory:"):
        return None
    try:
        with tempfile.NamedTemporaryFile(dir=database.absolute().parent, prefix=".artune-probe-") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        return exc
    return None


def absolute_storage(url: str) -> str:
    """A SQLite URL whose file is relative, made absolute: the manifest records the URL, and a later --resume
    or --extend from another directory would otherwise open (and create) another, empty database there."""
    from sqlalchemy.engine import make_url

    database = sqlite_file(url)
    if database is None or database == Path(":memory:") or database.is_absolute():
        return url
    return make_url(url).set(database=str(database.absolute())).render_as_string(hide_password=False)


# A server that takes the connection and never answers (a firewall that drops, a stopped VM) is a line before
# Ray starts, not a driver waiting on it; a URL's own ?connect_timeout= stands. Both drivers take it in seconds.
CONNECT_TIMEOUT_S = 10
TIMED_BACKENDS = ("postgresql", "mysql")


@contextlib.contextmanager
def existing_database(url: str) -> Iterator[Any]:
    """A connection to the database at ``url``, or None where it is a SQLite file not there yet: opened without
    creating anything. SQLAlchemy's errors (a file that is not a database, a server that refuses) pass through."""
    database = sqlite_file(url)
    if database is not None and not database.is_file():
        yield None
        return
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    connect_args = {}
    if parsed.get_backend_name() in TIMED_BACKENDS and "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    engine = create_engine(url, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def study_exists(url: str, name: str) -> bool:
    """Whether the Optuna storage at ``url`` holds a study ``name`` (a database that cannot be read is reported
    where the search opens its study)."""
    from sqlalchemy import inspect, text

    try:
        with existing_database(url) as connection:
            if connection is None or not inspect(connection).has_table("studies"):  # Optuna's table of studies
                return False
            found = connection.execute(text("SELECT 1 FROM studies WHERE study_name = :name"), {"name": name})
            return found.first() is not None
    except Exception:  # noqa: BLE001 - SQLAlchemy's errors share no useful base; see above
        return False


def study_trials(url: str, name: str) -> int:
    """How many trials the study ``name`` at ``url`` holds (0 where there is no such study). SQLAlchemy's errors
    (a database that does not read) pass through."""
    from sqlalchemy import inspect, text

    with existing_database(url) as connection:
        if connection is None or not inspect(connection).has_table("trials"):  # Optuna's tables
            return 0
        found = connection.execute(
            text("SELECT COUNT(*) FROM trials JOIN studies USING (study_id) WHERE study_name = :name"), {"name": name}
        )
        return int(found.scalar() or 0)


def check_storage(url: str) -> None:
    """A --storage URL must name a database SQLAlchemy can open here: checked before Ray starts or a folder exists."""
    from sqlalchemy.engine import make_url

    try:
        dialect = make_url(url).get_dialect()
        try:
            dialect.import_dbapi()  # SQLAlchemy 2
        except (AttributeError, NotImplementedError):
            dialect.dbapi()  # SQLAlchemy 1.4, or a dialect that keeps the older name
    except ImportError as exc:
        raise SearchError(
            f"--storage {url!r}: its database driver is not installed ({exc}); install it, or use sqlite:///path.db"
        ) from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's URL and plugin errors share no base but Exception
        raise SearchError(
            f"--storage {url!r}: not a database URL ({exc}); e.g. sqlite:///path.db or postgresql://user@host/db"
        ) from None
    database = sqlite_file(url)
    if database == Path(":memory:"):
        raise SearchError(
            f"--storage {url!r}: an in-memory database keeps nothing once the search ends; "
            "give a file (sqlite:///path.db) or a database server's URL"
        )
    if database is not None:
        try:
            elsewhere = database.exists() and not database.is_file()  # a directory: refused once Ray had started
        except OSError as exc:  # a name too long (ENAMETOOLONG), a parent this user may not enter
            raise SearchError(f"--storage {url!r}: cannot look up {database}: {exc.strerror or exc}") from None
        if elsewhere:
            raise SearchError(f"--storage {url!r}: {database.absolute()} is not a file; give the database file's path")
        folder = database.absolute().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise SearchError(f"--storage {url!r}: the database file's directory {folder} is not a writable directory")
        return
    # A database server: connected to once here, so that one which refuses is a line before Ray starts
    # and before the search's directory exists, not a failure once the search has begun.
    try:
        with existing_database(url):
            pass
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's and the driver's errors share no useful base
        first = first_line(exc)
        if "timeout" in first.lower() and "connect_timeout" not in make_url(url).query:
            first += f"; no answer in {CONNECT_TIMEOUT_S} s, and ?connect_timeout=N in the URL waits N s"
        raise SearchError(
            f"--storage {url!r}: the database cannot be reached ({type(exc).__name__}: {first})"
        ) from None


def check_study_readable(url: str, flag: str) -> None:
    """A study database that is already there must read as one before Ray starts (a file that is not a database,
    say); one that is not there yet is created where the search opens its study."""
    from sqlalchemy import inspect

    try:
        with existing_database(url) as connection:
            if connection is not None:
                inspect(connection).get_table_names()
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's errors share no useful base; the user gets one line
        first = first_line(exc)
        raise SearchError(
            f"{flag}: the Optuna study's database {sqlite_file(url) or url} cannot be read "
            f"({type(exc).__name__}: {first}); restore it from a copy, or start a new search under another --name"
        ) from None
