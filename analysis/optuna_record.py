"""A searched study's own record: the Optuna study its sampler wrote.

It lives in an Optuna RDB storage beside the MLflow store (default `optuna.db` next to an
SQLite `mlflow.db`), under the study's name; the parent run's TAG_OPTUNA_STORAGE says
where (password hidden). A robustness study (a fixed list of re-runs) has none.

Everything here reads without writing, not even a new SQLite file: opening a storage with
Optuna creates its file and tables, so a storage is first looked at through SQLAlchemy
(SQLite read-only), and Optuna opens it only once it holds the study. No Ray, no torch.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from analysis import records
from trainables.errors import UserError

if TYPE_CHECKING:
    import optuna
    import sqlalchemy

FIELD = "optuna-storage"
EXAMPLE = "e.g. sqlite:///optuna.db or postgresql://user@host/db"
# Tables every Optuna RDB storage has (a database with other tables is someone else's).
OPTUNA_TABLES = frozenset({"studies", "version_info"})


def _read_only_engine(url: str) -> sqlalchemy.engine.Engine | None:
    """An engine that reads the storage at `url` without writing to it, or None when it
    does not exist yet (an SQLite file to be created). Bad URLs fail with one line."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    shown = records.redact(url)
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UserError(f"{FIELD}: {shown!r} is not a database URL; write one, {EXAMPLE}") from None
    if parsed.get_backend_name() != "sqlite":
        try:
            return sqlalchemy.create_engine(url)
        except (ImportError, sqlalchemy.exc.SQLAlchemyError) as error:
            raise UserError(
                f"{FIELD}: cannot open {shown} ({_reason(error)}); install its database "
                f"driver or pass another --{FIELD}, {EXAMPLE}"
            ) from None
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        raise UserError(
            f"{FIELD}: {shown} is not an SQLite file (an in-memory study is lost when the "
            f"study's process ends); name a file, e.g. sqlite:///optuna.db"
        )
    path = Path(database)
    if not path.exists():
        if not path.parent.is_dir():
            raise UserError(
                f"{FIELD}: directory {path.parent} does not exist; create it or pass another --{FIELD}"
            )
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise UserError(
                f"{FIELD}: cannot create {path} (directory not writable); pass another --{FIELD}"
            )
        return None
    if not path.is_file():
        raise UserError(f"{FIELD}: {path} is not a file; pass another --{FIELD}, {EXAMPLE}")
    uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
    return sqlalchemy.create_engine(
        "sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False)
    )


def _reason(error: BaseException) -> str:
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    return records.redact(lines[0]) if lines else type(cause).__name__


def study_names(url: str) -> list[str]:
    """The names of the Optuna studies in the storage at `url` ([] where it does not exist
    yet). A URL that is no storage, cannot be read, or is another application's database
    (an MLflow store, say: Optuna would add its tables to it) fails with one line."""
    import sqlalchemy

    engine = _read_only_engine(url)
    if engine is None:
        return []
    shown = records.redact(url)
    try:
        with engine.connect() as connection:
            tables = set(sqlalchemy.inspect(connection).get_table_names())
            if not tables:
                return []
            if not OPTUNA_TABLES.issubset(tables):
                raise UserError(
                    f"{FIELD}: {shown} is another application's database, not an Optuna "
                    f"storage; pass another --{FIELD}, {EXAMPLE}"
                )
            rows = connection.execute(sqlalchemy.text("SELECT study_name FROM studies"))
            return [row[0] for row in rows]
    except sqlalchemy.exc.SQLAlchemyError as error:
        raise UserError(
            f"{FIELD}: cannot read {shown} as a database ({_reason(error)}); "
            f"pass another --{FIELD}, {EXAMPLE}"
        ) from None
    finally:
        engine.dispose()


def check_new_study(url: str, name: str) -> None:
    """A new study's storage: usable, and without a study of its name (whose trials would
    steer the new study's sampler)."""
    if name in study_names(url):
        raise UserError(
            f"{FIELD}: {records.redact(url)} already holds an Optuna study {name!r}, whose "
            f"trials would steer this study's sampler; choose another --name, or delete it "
            f"(optuna delete-study --storage URL --study-name {name})"
        )


def check_existing_study(url: str, name: str, fix: str) -> None:
    """A study's storage holds its Optuna study; `fix` ends the error line."""
    shown = records.redact(url)
    path = _sqlite_file(url)
    if path is not None and not path.is_file():
        raise UserError(f"{FIELD}: {shown} does not exist; {fix}")
    if name not in study_names(url):
        raise UserError(f"{FIELD}: {shown} holds no Optuna study {name!r}; {fix}")


def _sqlite_file(url: str) -> Path | None:
    """The file of an SQLite storage's URL (None for another database or a bad URL)."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return None  # study_names says what is wrong with it
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def optuna_storage_of(parent: records.StudyRecord, storage: str | None = None) -> str:
    """The URL of the Optuna storage holding `parent`'s study (`storage` when given), checked
    to hold it; a study without one fails with one line saying what to do instead."""
    name = parent.name
    url = storage or parent.tags.get(records.TAG_OPTUNA_STORAGE, "")
    if not url:
        if parent.tags.get(records.TAG_MODE) == records.MODE_ROBUSTNESS:
            source = parent.tags.get(records.TAG_SOURCE_STUDY, "SOURCE")
            raise UserError(
                f"{FIELD}: study {name!r} re-runs fixed configs (a robustness study), so no "
                f"sampler wrote an Optuna study; open its source: study dashboard {source}"
            )
        raise UserError(
            f"{FIELD}: study {name!r} recorded no Optuna storage (it ran before studies kept "
            f"one); read it with `study report {name}`, or pass --{FIELD} URL"
        )
    if "://***@" in url:
        raise UserError(
            f"{FIELD}: study {name!r} recorded its Optuna storage without the password ({url}); "
            f"pass --{FIELD} with the full URL"
        )
    check_existing_study(url, name, f"restore that storage or pass --{FIELD} URL")
    return url


def load_optuna_study(
    parent: records.StudyRecord, storage: str | None = None
) -> optuna.Study | None:
    """The Optuna study the sampler of `parent`'s study wrote, or None when it has none
    (a robustness study, one run before studies kept one, a password that was not
    recorded) or its storage or study is missing. `storage` overrides the recorded URL."""
    import optuna

    try:
        url = optuna_storage_of(parent, storage)
    except UserError:
        return None
    # The storage holds the study, so Optuna finds its tables and writes nothing.
    backend = optuna.storages.RDBStorage(url, skip_table_creation=True)
    return optuna.load_study(study_name=parent.name, storage=backend)
