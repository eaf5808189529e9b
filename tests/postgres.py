"""A private PostgreSQL 15 for the tests: Debian's initdb and pg_ctl, never a system service.

The cluster lives in the test workdir (``<workdir>/data``, owned by ``postgres``:
the server refuses to run as root, so as root every server command runs through
``runuser -u postgres``; a workdir postgres cannot reach, as in a checkout under
/root, becomes a link to a directory in /var/tmp). It listens on one loopback address and port, with its
unix socket in the data directory. The database ``kamailio`` is made from
Kamailio's own PostgreSQL schema files plus db/kemi-outbound-create.sql and
belongs to the role ``kamailio``, which logs in over TCP with a password
(scram-sha-256); only the unix socket (reachable by root and postgres) trusts.

Readiness is ``pg_ctl -w`` and then ``pg_isready`` on the TCP address, never a
sleep. ``stop()`` is ``pg_ctl stop -m fast``, then SIGKILL by the postmaster's
PID (from postmaster.pid) as a last resort; ``kill()`` is SIGKILL to the
postmaster and its backends by PID: "the database went down".
"""

from __future__ import annotations

import os
import pwd
import secrets
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import ProcessError, read_log
from subscribers import ko_subscriber

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"
# Kamailio's PostgreSQL schema files, then ours: the list tools/ko-subscriber documents
SCHEMA = [*ko_subscriber.POSTGRES_SCHEMA, ko_subscriber.OUR_SCHEMA,
          ko_subscriber.OUR_SCHEMA.parent / "location-guard-postgres.sql"]
ROLE = DATABASE = "kamailio"


def _as_owner(cmd: list[str]) -> list[str]:
    """``cmd`` run as the cluster's owner (postgres when we are root)."""
    return ["runuser", "-u", PG_USER, "--", *cmd] if os.geteuid() == 0 else cmd


def _owner_can_write(path: Path) -> bool:
    return subprocess.run(_as_owner(["test", "-w", str(path)])).returncode == 0


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return not any(_alive(pid) for pid in pids)


@dataclass
class Postgres:
    workdir: Path  # the cluster's own directory (made here, chown'd to postgres)
    addr: str
    port: int
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    pid: int | None = None  # the postmaster while it runs

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        return self.workdir / "postgres.log"

    @property
    def url(self) -> str:
        """Kamailio's db_url for the kamailio database."""
        return f"postgres://{ROLE}:{self.password}@{self.addr}:{self.port}/{DATABASE}"

    def _run(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=self.workdir, **kw)
        if done.returncode != 0:
            raise ProcessError(f"{' '.join(cmd[:6])}... exited {done.returncode}:\n{done.stdout}{done.stderr}"
                               f"\n{self.log()[-3000:]}")
        return done

    def _initdb(self) -> None:
        if not (PG_BIN / "initdb").exists():
            raise ProcessError(f"{PG_BIN}/initdb missing: run tools/install-deps (postgresql)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(self.workdir, *_owner_ids())
            if not _owner_can_write(self.workdir):
                # a checkout under /root (0700): postgres cannot reach the workdir, so
                # the cluster lives in /var/tmp and the workdir links to it
                real = Path(tempfile.mkdtemp(prefix=f"ko-postgres-{self.workdir.name}-", dir="/var/tmp"))
                os.chown(real, *_owner_ids())
                if not _owner_can_write(real):
                    raise ProcessError(f"user {PG_USER} can write neither {self.workdir} nor {real}")
                self.workdir.rmdir()
                self.workdir.symlink_to(real)
                self.workdir = real
        self._run(_as_owner([str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-U", PG_USER, "--no-locale",
                             "-E", "UTF8", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"]))
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(f"""
# kemi-outbound tests (tests/postgres.py)
listen_addresses = '{self.addr}'
port = {self.port}
unix_socket_directories = '{self.data_dir}'
password_encryption = 'scram-sha-256'
# no fsync: only an OS crash could lose data; a SIGKILL (kill()) loses no commit
# (synchronous_commit stays on for that reason)
fsync = off
full_page_writes = off
""")
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text("# kemi-outbound tests: the unix socket (in the 0700 data dir) trusts; TCP needs a password\n"
                       "local all all trust\n"
                       f"host {DATABASE} {ROLE} 127.0.0.0/8 scram-sha-256\n")
        if os.geteuid() == 0:
            os.chown(hba, *_owner_ids())

    def _setup(self) -> None:
        """Role, database and schema, over the unix socket as the superuser."""
        self._psql(PG_USER, "postgres", f"CREATE ROLE {ROLE} LOGIN PASSWORD :'pw';\n"
                                        f"CREATE DATABASE {DATABASE} OWNER {ROLE} ENCODING 'UTF8';\n",
                   "-v", f"pw={self.password}")
        for path in SCHEMA:
            self._psql(ROLE, DATABASE, path.read_text())
        (self.workdir / "schema-loaded").touch()

    def _psql(self, user: str, dbname: str, script: str, *args: str) -> str:
        cmd = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self.data_dir),
               "-p", str(self.port), "-U", user, "-d", dbname, *args]
        return self._run(cmd, input=script).stdout

    def sql(self, script: str, dbname: str = DATABASE) -> str:
        """Run SQL in the database as its owner (unaligned, tuples only)."""
        return self._psql(ROLE, dbname, script)

    def start(self, timeout: float = 60.0) -> Postgres:
        if self.pid is not None and _alive(self.pid):
            return self
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._run(_as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path),
                             "-w", "-t", str(int(timeout)), "start"]))
        self.pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        self.wait_ready(timeout)
        if not (self.workdir / "schema-loaded").exists():
            self._setup()
        return self

    def wait_ready(self, timeout: float) -> None:
        """Until pg_isready answers on the TCP address (the server accepts connections)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid is None or not _alive(self.pid):
                raise ProcessError(f"postgres exited:\n{self.log()[-3000:]}")
            probe = subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", self.addr, "-p", str(self.port),
                                    "-U", ROLE, "-d", DATABASE, "-t", "2"], capture_output=True)
            if probe.returncode == 0:
                return
            time.sleep(0.05)
        raise ProcessError(f"postgres not ready on {self.addr}:{self.port} after {timeout}s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        """pg_ctl stop -m fast; SIGKILL by PID if the postmaster is still there."""
        if self.pid is None:
            return
        if _alive(self.pid):
            subprocess.run(_as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w",
                                      "-t", "30", "stop"]), capture_output=True, cwd=self.workdir)
            if _alive(self.pid):
                self.kill()
        self.pid = None

    def kill(self) -> None:
        """SIGKILL to the postmaster and its backends (by PID): the database is down."""
        if self.pid is None:
            return
        pids = [self.pid, *_children(self.pid)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not _wait_gone(pids, 10):
            raise ProcessError(f"postgres processes {pids} still there after SIGKILL")
        # The dead postmaster may stay a zombie until init reaps it, and postgres
        # takes a lock file naming a zombie's PID for a running server: the lock
        # files (data dir, unix socket) of a server whose every process is dead go.
        for lock in [self.data_dir / "postmaster.pid", *self.data_dir.glob(".s.PGSQL.*.lock")]:
            try:
                if lock.read_text().split()[:1] == [str(self.pid)]:
                    lock.unlink()
            except OSError:
                pass
        self.pid = None

    def restart(self, timeout: float = 60.0) -> Postgres:
        self.stop()
        return self.start(timeout)

    def log(self) -> str:
        return read_log(self.log_path)

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _owner_ids() -> tuple[int, int]:
    entry = pwd.getpwnam(PG_USER)
    return entry.pw_uid, entry.pw_gid
