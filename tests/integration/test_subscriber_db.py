"""tools/ko-subscriber against real databases: an SQLite file and a private PostgreSQL.

Each test runs on both (``db`` is parametrized): rows hold the HA1s of the
definition (computed here with hashlib), an empty password column, and nothing
the command prints holds a password or an HA1. PostgreSQL is tests/postgres.py's
server (password login over TCP on a test address), started once per module;
"the database is down" is that server SIGKILLed.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from postgres import Postgres
from subscribers import ROOT, TOOL, SubscriberDB, ko_subscriber, password_for
from topology import net

PG_ADDR, PG_PORT = net(200), 5432
SQLITE_NUMBERS = itertools.count(1)
HEX_RUN = re.compile(r"[0-9a-f]{32,}")


@pytest.fixture(scope="module")
def pg_server(workdir: Path) -> Iterator[Postgres]:
    server = Postgres(workdir / "postgres-subscribers", PG_ADDR, PG_PORT)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, workdir: Path) -> SubscriberDB:
    if request.param == "sqlite":
        return SubscriberDB.create_sqlite(workdir / f"subscribers-{next(SQLITE_NUMBERS)}.sqlite")
    server: Postgres = request.getfixturevalue("pg_server")
    server.start()  # a test that killed it may have failed before starting it again
    found = SubscriberDB.for_postgres(server)
    found.clear()
    return found


def ko(*args: str, db_url: str | None = None, stdin: str = "", env_url: str | None = None
       ) -> subprocess.CompletedProcess:
    """tools/ko-subscriber [--db db_url] ARGS with ``stdin``; KO_DB_URL only when given."""
    env = {k: v for k, v in os.environ.items() if k != "KO_DB_URL"}
    if env_url is not None:
        env["KO_DB_URL"] = env_url
    cmd = ["/usr/bin/python3", str(TOOL), *(["--db", db_url] if db_url else []), *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env, timeout=60)


def expected(username: str, domain: str, password: str) -> ko_subscriber.StoredRow:
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731
    return ko_subscriber.StoredRow(
        username=username, domain=domain, password="",
        ha1=md5(f"{username}:{domain}:{password}"),
        ha1b=md5(f"{username}@{domain}:{domain}:{password}"),
        ha1_sha256=hashlib.sha256(f"{username}:{domain}:{password}".encode()).hexdigest())


def assert_quiet(done: subprocess.CompletedProcess, *secrets: str) -> None:
    """Nothing printed holds a password or an HA1."""
    out = done.stdout + done.stderr
    for secret in secrets:
        assert secret not in out
    assert not HEX_RUN.search(out), out


def test_add_stores_the_ha1s_and_no_clear_text(db: SubscriberDB) -> None:
    done = ko("add", "alice@example.com", db_url=db.url, stdin="s3cret-Alice\n")
    assert done.returncode == 0, done.stderr
    row = expected("alice", "example.com", "s3cret-Alice")
    assert db.rows() == [row]
    assert_quiet(done, "s3cret-Alice", row.ha1, row.ha1b, row.ha1_sha256)
    if db.url.startswith("sqlite:"):
        assert b"s3cret-Alice" not in Path(db.url[len("sqlite://"):]).read_bytes()


def test_list_prints_user_at_domain_only(db: SubscriberDB) -> None:
    db.add("bob", "example.com", password_for("bob"))
    db.add("carol", "example.org", password_for("carol"))
    assert ko("add", "alice@example.com", db_url=db.url, stdin="pw-alice\n").returncode == 0
    done = ko("list", db_url=db.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["alice@example.com", "bob@example.com", "carol@example.org"]
    assert_quiet(done, "pw-alice", "pw-bob", "pw-carol")


def test_passwd_changes_every_ha1(db: SubscriberDB) -> None:
    db.add("alice", "example.com", "old password")
    new = "n3w p@ss w'rd \"\\ ünï"  # quotes, backslash, spaces, @, UTF-8 all go through stdin
    done = ko("passwd", "alice@example.com", db_url=db.url, stdin=new + "\n")
    assert done.returncode == 0, done.stderr
    assert db.rows() == [expected("alice", "example.com", new)]
    assert_quiet(done, new, "old password")


def test_rm_removes_that_subscriber_only(db: SubscriberDB) -> None:
    db.add("alice", "example.com", password_for("alice"))
    db.add("alice", "example.org", password_for("alice"))
    done = ko("rm", "alice@example.com", db_url=db.url)
    assert done.returncode == 0, done.stderr
    assert db.rows() == [expected("alice", "example.org", password_for("alice"))]
    assert ko("list", db_url=db.url).stdout == "alice@example.org\n"


@pytest.mark.parametrize("command", ["passwd", "rm"])
def test_an_unknown_subscriber_is_exit_2(db: SubscriberDB, command: str) -> None:
    db.add("alice", "example.com", password_for("alice"))
    done = ko(command, "bob@example.com", db_url=db.url, stdin="whatever\n")
    assert done.returncode == 2
    assert "no subscriber bob@example.com" in done.stderr
    assert db.rows() == [expected("alice", "example.com", password_for("alice"))]


def test_adding_twice_is_refused_and_keeps_the_first_password(db: SubscriberDB) -> None:
    db.add("alice", "example.com", "first")
    done = ko("add", "alice@example.com", db_url=db.url, stdin="second\n")
    assert done.returncode == 2
    assert "already a subscriber" in done.stderr
    assert db.rows() == [expected("alice", "example.com", "first")]


@pytest.mark.parametrize(("aor", "stdin", "message"), [
    ("alice@example.com", "\n", "empty password"),
    ("alice@example.com", "", "empty password"),
    ("alice", "pw\n", "expected username@domain"),
    ("@example.com", "pw\n", "expected username@domain"),
    ("alice@", "pw\n", "expected username@domain"),
    ("a@b@example.com", "pw\n", "expected username@domain"),
    ("al ice@example.com", "pw\n", "username"),
    ("alice@exa:mple.com", "pw\n", "domain"),
    ("u" * 65 + "@example.com", "pw\n", "username"),
])
def test_what_cannot_be_stored_is_exit_2(db: SubscriberDB, aor: str, stdin: str, message: str) -> None:
    done = ko("add", aor, db_url=db.url, stdin=stdin)
    assert done.returncode == 2
    assert message in done.stderr
    assert db.rows() == []


def test_ko_db_url_is_the_default_database(db: SubscriberDB) -> None:
    assert ko("add", "alice@example.com", env_url=db.url, stdin="pw-alice\n").returncode == 0
    done = ko("list", env_url=db.url)
    assert (done.returncode, done.stdout) == (0, "alice@example.com\n")
    assert db.rows() == [expected("alice", "example.com", "pw-alice")]


def test_the_helper_writes_the_rows_the_command_writes(db: SubscriberDB) -> None:
    db.add("bob", "example.com", password_for("bob"))
    assert ko("add", "carol@example.com", db_url=db.url, stdin=password_for("carol") + "\n").returncode == 0
    assert db.rows() == [expected(name, "example.com", password_for(name)) for name in ("bob", "carol")]


def test_hundreds_of_users_at_once(db: SubscriberDB) -> None:
    users = [(f"user{i:03d}", "example.com", password_for(f"user{i:03d}")) for i in range(500)]
    db.add_many(users)
    assert db.rows() == [expected(*user) for user in users]
    done = ko("list", db_url=db.url)
    assert done.stdout.splitlines() == [f"{u}@{d}" for u, d, _ in users]
    db.remove("user007", "example.com")
    assert len(db.rows()) == 499


def test_the_schema_is_kamailios_plus_our_column(db: SubscriberDB, request: pytest.FixtureRequest) -> None:
    """Kamailio checks table versions at start (auth_db: subscriber 7, usrloc: location 9)."""
    if db.url.startswith("sqlite:"):
        import sqlite3

        conn = sqlite3.connect(db.url[len("sqlite://"):])
        versions = dict(conn.execute("SELECT table_name, table_version FROM version").fetchall())
        columns = [row[1] for row in conn.execute("PRAGMA table_info(subscriber)")]
        conn.close()
    else:
        server: Postgres = request.getfixturevalue("pg_server")
        versions = {name: int(v) for name, v in (line.split("|") for line in server.sql(
            "SELECT table_name, table_version FROM version;").split())}
        columns = server.sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'subscriber' "
                             "ORDER BY ordinal_position;").split()
    assert versions["subscriber"] == 7 and versions["location"] == 9
    assert columns == ["id", "username", "domain", "password", "ha1", "ha1b", "ha1_sha256"]


@pytest.mark.parametrize("url", [
    "sqlite://relative/path.sqlite",
    "sqlite:relative.sqlite",
    "sqlite://host/abs.sqlite",
    "postgres://kamailio:topsecret@127.0.0.1/",
    "postgres://kamailio:topsecret@/kamailio",
    "postgres://:topsecret@127.0.0.1/kamailio",
    "postgres://kamailio:topsecret@127.0.0.1:notaport/kamailio",
    "postgres://kamailio:topsecret@127.0.0.1:5432/a/b",
    "mysql://kamailio:topsecret@127.0.0.1/kamailio",
    "/var/lib/kemi-outbound/kemi-outbound.sqlite",
])
def test_a_bad_url_is_exit_2_and_never_shows_its_password(url: str) -> None:
    done = ko("list", db_url=url)
    assert done.returncode == 2
    assert "bad database URL" in done.stderr
    assert "topsecret" not in done.stderr


def test_a_missing_sqlite_file_is_unreachable_and_not_created(workdir: Path) -> None:
    path = workdir / "no-such-dir" / "missing.sqlite"
    done = ko("list", db_url=f"sqlite://{path}")
    assert done.returncode == 2
    assert "cannot open SQLite database" in done.stderr
    assert not path.exists()
    empty = workdir / "empty.sqlite"
    empty.touch()  # a file without the schema
    done = ko("add", "alice@example.com", db_url=f"sqlite://{empty}", stdin="pw\n")
    assert done.returncode == 2
    assert "no such table: subscriber" in done.stderr


def test_postgres_down_is_exit_2_and_the_rows_are_back_with_it(pg_server: Postgres) -> None:
    db = SubscriberDB.for_postgres(pg_server)
    db.clear()
    db.add("alice", "example.com", password_for("alice"))
    pg_server.kill()
    try:
        for args, stdin in ((("list",), ""), (("add", "bob@example.com"), "pw-bob\n"),
                            (("rm", "alice@example.com"), "")):
            done = ko(*args, db_url=db.url, stdin=stdin)
            assert done.returncode == 2
            assert "cannot connect to PostgreSQL" in done.stderr
            assert pg_server.password not in done.stderr
    finally:
        pg_server.start()
    assert ko("list", db_url=db.url).stdout == "alice@example.com\n"


def test_postgres_wants_the_right_password(pg_server: Postgres) -> None:
    url = pg_server.url.replace(pg_server.password, "wrong-password")
    done = ko("list", db_url=url)
    assert done.returncode == 2
    assert "password authentication failed" in done.stderr
    assert "wrong-password" not in done.stderr


def test_no_secret_on_psql_command_line(pg_server: Postgres, monkeypatch: pytest.MonkeyPatch) -> None:
    """The URL's password goes in PGPASSWORD and the HA1s on stdin: ps never shows them."""
    real_run, seen = subprocess.run, []

    def recording_run(cmd, *args, **kw):
        seen.append(cmd)
        return real_run(cmd, *args, **kw)

    monkeypatch.setattr(ko_subscriber.subprocess, "run", recording_run)
    store = ko_subscriber.open_store(pg_server.url)
    store.clear()
    row = ko_subscriber.subscriber_row("alice", "example.com", "pw-alice")
    assert store.add(row)
    assert store.passwd(ko_subscriber.subscriber_row("alice", "example.com", "pw-new"))
    assert store.remove("alice", "example.com")
    assert len(seen) == 4
    for cmd in seen:
        text = " ".join(cmd)
        assert pg_server.password not in text
        assert not HEX_RUN.search(text), text


def test_install_deps_makes_the_sqlite_file_from_the_same_schema() -> None:
    text = (ROOT / "tools" / "install-deps").read_text()
    assert "/var/lib/kemi-outbound/kemi-outbound.sqlite" in text
    assert ko_subscriber.DEFAULT_DB_URL == "sqlite:///var/lib/kemi-outbound/kemi-outbound.sqlite"
    for path in ko_subscriber.SQLITE_SCHEMA:
        assert f"$SQLITE_SCHEMA/{path.name}" in text and path.parent == Path("/usr/share/kamailio/db_sqlite")
    assert "db/kemi-outbound-create.sql" in text
