"""usrloc's location table for the tests: one SQLite file per Kamailio, or a real PostgreSQL.

Every registrar and single server the tests start keeps its bindings in its
own SQLite file (``<workdir>/<name>.location.sqlite``), made from Kamailio's
schema files the way tools/install-deps makes the default database (version
table, location table, WAL journal): one test's bindings never reach another
test's registrar through the database, while a restart of the same Kamailio
reloads its own file. The run's subscriber database (tests/topology.py) is a
separate file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SQLITE_SCHEMA_DIR = Path("/usr/share/kamailio/db_sqlite")
# ... and our guard: no row without a ruid (db/location-guard-sqlite.sql)
LOCATION_SCHEMA = [SQLITE_SCHEMA_DIR / "standard-create.sql", SQLITE_SCHEMA_DIR / "usrloc-create.sql",
                   Path(__file__).resolve().parent.parent / "db" / "location-guard-sqlite.sql"]
# the location table's columns the tests compare (Kamailio's usrloc-create.sql)
COLUMNS = ("ruid", "username", "domain", "contact", "received", "path", "expires", "q", "callid", "cseq",
           "flags", "cflags", "user_agent", "socket", "methods", "instance", "reg_id", "server_id",
           "connection_id", "keepalive")


def sqlite_location_db(path: Path) -> str:
    """Kamailio's db_url of the SQLite file ``path``, made with the location
    table when missing (an existing file is kept: a restart reloads it)."""
    path = Path(path).resolve()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".new")
        tmp.unlink(missing_ok=True)
        conn = sqlite3.connect(tmp)
        try:
            conn.executescript("BEGIN;\n" + "\n".join(p.read_text() for p in LOCATION_SCHEMA) + "\nCOMMIT;\n")
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()
        tmp.rename(path)
    return f"sqlite://{path}"


def sqlite_rows(url: str) -> list[dict[str, object]]:
    """The location table of an SQLite ``url``, ordered by ruid."""
    path = url.removeprefix("sqlite://")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cursor = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM location ORDER BY ruid")
        return [dict(zip(COLUMNS, row, strict=True)) for row in cursor.fetchall()]
    finally:
        conn.close()
