"""Subscriber databases for the tests: a real SQLite file or a real PostgreSQL.

Rows are written by tools/ko-subscriber's own stores (imported as a module,
``ko_subscriber``), so a test's rows are exactly the rows the command writes;
``add_many`` puts hundreds of users in one transaction (SQLite) or one COPY
(PostgreSQL). Every test user's password is ``password_for(username)``.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "ko-subscriber"
sys.path.insert(0, str(ROOT / "kemi"))

from outbound.credentials import subscriber_row  # noqa: E402

if TYPE_CHECKING:
    from postgres import Postgres


def _load_tool():
    """tools/ko-subscriber (a script without .py) as the module ``ko_subscriber``."""
    if "ko_subscriber" in sys.modules:
        return sys.modules["ko_subscriber"]
    loader = SourceFileLoader("ko_subscriber", str(TOOL))
    module = module_from_spec(spec_from_loader("ko_subscriber", loader))
    sys.modules["ko_subscriber"] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


ko_subscriber = _load_tool()
SQLITE_SCHEMA = [*ko_subscriber.SQLITE_SCHEMA, ko_subscriber.OUR_SCHEMA,
                 ko_subscriber.OUR_SCHEMA.parent / "location-guard-sqlite.sql"]


def password_for(username: str) -> str:
    """The deterministic password of a test user."""
    return "pw-" + username


@dataclass
class SubscriberDB:
    url: str  # Kamailio's db_url (auth_db, usrloc, tools/ko-subscriber --db)

    @property
    def store(self):
        return ko_subscriber.open_store(self.url)

    @classmethod
    def create_sqlite(cls, path: Path) -> SubscriberDB:
        """A new SQLite file from Kamailio's schema files and ours (as tools/install-deps makes it)."""
        path = Path(path).resolve()
        if path.exists():
            raise FileExistsError(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path)
        try:
            conn.executescript("BEGIN;\n" + "\n".join(p.read_text() for p in SQLITE_SCHEMA) + "\nCOMMIT;\n")
        finally:
            conn.close()
        return cls(f"sqlite://{path}")

    @classmethod
    def for_postgres(cls, server: Postgres) -> SubscriberDB:
        """The kamailio database of a running tests/postgres.py server."""
        return cls(server.url)

    def add(self, username: str, domain: str, password: str) -> None:
        if not self.store.add(subscriber_row(username, domain, password)):
            raise ValueError(f"{username}@{domain} is already a subscriber")

    def add_many(self, users: Iterable[tuple[str, str, str]]) -> None:
        """(username, domain, password) triples in one go."""
        self.store.add_many([subscriber_row(*user) for user in users])

    def passwd(self, username: str, domain: str, password: str) -> None:
        if not self.store.passwd(subscriber_row(username, domain, password)):
            raise KeyError(f"{username}@{domain}")

    def remove(self, username: str, domain: str) -> None:
        if not self.store.remove(username, domain):
            raise KeyError(f"{username}@{domain}")

    def clear(self) -> None:
        """No subscribers at all."""
        self.store.clear()

    def rows(self) -> list:
        """Every stored row (``ko_subscriber.StoredRow``: username, domain, password,
        ha1, ha1b, ha1_sha256), ordered by domain and username."""
        return self.store.rows()
