"""Opening the catalog: SQLite in WAL mode, schema migrations with a backup first."""

from __future__ import annotations

import logging
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event
from sqlalchemy.exc import DatabaseError, OperationalError

from imagesearch.errors import CatalogError, CatalogTooNew
from imagesearch.storage.catalog_reads import HEAD_REVISION, MIN_SQLITE, schema_revision

log = logging.getLogger(__name__)

_MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def _on_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode survives a killed process; only a power cut may lose the last commit.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def check_sqlite() -> None:
    """Refuse, with what to do, an SQLite too old for the catalog's statements.

    Raises:
        CatalogError: the sqlite3 module of this Python is built on an older SQLite.
    """
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise CatalogError(
            f"imagesearch needs SQLite {'.'.join(map(str, MIN_SQLITE))} or newer; this "
            f"Python's sqlite3 module uses SQLite {sqlite3.sqlite_version}. Run imagesearch "
            "with a newer Python (3.11+ from python.org, or your system's python3 on a "
            "current distribution).")


def create_catalog_engine(path: Path) -> Engine:
    """Make an engine for the catalog file without touching its schema."""
    check_sqlite()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Built as a URL object, not a string: a folder name with '?' or '#' would otherwise
    # be read as the start of the URL's query or fragment.
    engine = create_engine(URL.create("sqlite", database=str(path)), future=True)
    event.listen(engine, "connect", _on_connect)
    return engine


def current_revision(engine: Engine) -> str | None:
    """The schema revision stored in the catalog, or None for an empty database."""
    with engine.connect() as conn:
        return schema_revision(conn.connection)


def _alembic_config(connection: Any) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(_MIGRATIONS_DIR))
    return {rev.revision for rev in script.walk_revisions()}


def migrate(engine: Engine, db_path: Path) -> None:
    """Bring the catalog to HEAD_REVISION, backing it up first if it holds data."""
    from alembic import command

    revision = current_revision(engine)
    if revision is not None:
        backup = db_path.with_name(
            f"{db_path.stem}.backup-{revision}-{datetime.now():%Y%m%d-%H%M%S}{db_path.suffix}"
        )
        _backup_sqlite(db_path, backup)
        log.info("catalog backed up to %s before migrating from %s", backup, revision)
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "head")


def _backup_sqlite(src: Path, dst: Path) -> None:
    # sqlite3's online backup copies a consistent snapshot even with a WAL file present.
    with sqlite3.connect(src) as source, sqlite3.connect(dst) as target:
        source.backup(target)


def open_catalog_engine(path: Path) -> Engine:
    """Open (creating or migrating as needed) the catalog at ``path``.

    Raises:
        CatalogTooNew: the file was written by a newer imagesearch.
        CatalogError: the file is not a usable SQLite database.
    """
    engine = create_catalog_engine(path)
    try:
        revision = current_revision(engine)
        if revision == HEAD_REVISION:
            return engine
        if revision is not None and revision not in known_revisions():
            engine.dispose()
            raise CatalogTooNew(
                f"The catalog at {path} was created by a newer version of imagesearch "
                f"(schema {revision}). Update imagesearch, or point --library at another folder."
            )
        migrate(engine, path)
    except (DatabaseError, OperationalError, sqlite3.DatabaseError) as exc:
        engine.dispose()
        raise CatalogError(f"Cannot open the catalog at {path}: {exc}") from exc
    return engine

