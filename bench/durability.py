"""Durability figures of the registrar (issue 14): reload at start, DMQ resync, write-back rate, memory per binding.

Measured on our registrar (cfg/registrar.cfg) with usrloc write-back on SQLite
and a DMQ pair on loopback, with ``count`` outbound bindings:

1. **Shared memory per binding**: an empty registrar's shared memory in use,
   then the same registrar started on a location table holding ``count``
   rows (written here by SQL, shaped as our registrar writes them: AOR,
   Contact with ``;ob``, a Path naming an edge with a flow token, a
   ``+sip.instance``, reg-id 1 or 2, the outbound branch flag, Call-ID, CSeq,
   an expiry an hour ahead); the difference over ``count``.
2. **Reload at start**: from exec until usrloc holds all ``count`` bindings
   (``usrloc:location_contacts``) and the RPC answers (the registrar serves).
3. **DMQ resync**: reg2 started empty next to reg1: from exec until reg2 holds
   all ``count`` (dmq_usrloc's sync at start, 50 contacts per KDMQ request,
   each request through our Python prologue: adapter.replication).
4. **Write-back rate**: reg2 receives ``count`` bindings it has not written;
   from its start until its own SQLite file holds them all (usrloc's timer,
   every second here, writes them as they come): rows written per second by
   one registrar (a lower bound: the resync is part of that time).

The usrloc code that loads, replicates and writes is Kamailio's C code, the
same under the native C outbound module; what is ours is the Python start and
the KDMQ prologue. Every process is stopped by its PID; every wait is bounded.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from harness import ProcessError
from locations import sqlite_location_db

FLB_OUTBOUND = 1 << 6  # cfg/registrar.cfg FLB_OUTBOUND, as stored in cflags
POLL = 0.05


def pkg_mb(count: int) -> int:
    """Private memory (-M) for a registrar that loads ``count`` bindings from SQLite:
    db_sqlite cannot fetch in chunks, so the child that preloads usrloc holds the
    whole result at once (16 MB failed at 100,000 rows here; docs/scaling.md)."""
    return max(16, 32 + count // 200)


def fill_location(url: str, count: int, registrar_socket: str, edge_addr: str) -> None:
    """``count`` outbound bindings in the (empty) location table of SQLite ``url``:
    users of 4 bindings each (2 instances x reg-id 1, 2)."""
    path = url.removeprefix("sqlite://")
    conn = sqlite3.connect(path)
    try:
        rows = []
        for i in range(count):
            user, instance, reg_id = f"dur{i // 4:06d}", (i // 2) % 2, i % 2 + 1
            token = f"{i:08x}".rjust(40, "A")
            rows.append((
                f"uloc-bench-{i:08x}", user, f"sip:{user}@198.18.{i % 250}.{i % 200 + 1}:{5060 + i % 4000};"
                "transport=tcp;ob", f"<sip:{token}@{edge_addr};transport=tcp;lr;ob>", f"bench-{user}-{instance}",
                1 + i % 7, FLB_OUTBOUND, registrar_socket,
                f"<urn:uuid:00000000-0000-4000-8000-{i // 2:012x}>", reg_id))
        conn.executemany(
            "INSERT INTO location (ruid, username, contact, path, expires, q, callid, cseq, last_modified, "
            "flags, cflags, user_agent, socket, methods, instance, reg_id) VALUES "
            "(?, ?, ?, ?, julianday('now', '+3600 seconds'), -1.0, ?, ?, julianday('now'), 0, ?, 'bench', ?, "
            "NULL, ?, ?)", rows)
        conn.commit()
    finally:
        conn.close()


def row_count(url: str) -> int:
    conn = sqlite3.connect(f"file:{url.removeprefix('sqlite://')}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM location").fetchone()[0])
    finally:
        conn.close()


def wait_for(predicate: Callable[[], bool], what: str, timeout: float) -> float:
    """Seconds until ``predicate`` holds; RuntimeError after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"durability: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(POLL)
    return time.monotonic() - started


def contacts(kam) -> int:
    """usrloc's contact count; RuntimeError when the Kamailio has exited."""
    if kam.proc is None or kam.proc.poll() is not None:
        raise RuntimeError(f"{kam.name} exited:\n{kam.log()[-3000:]}")
    try:
        return kam.stat("usrloc:location_contacts")
    except (ProcessError, OSError, KeyError):  # not answering yet
        return -1


def measure(count: int, workdir: Path, make_registrar: Callable[..., object], addr: Callable[[int], str],
            log: Callable[[str], None]) -> dict:
    """The four figures for ``count`` bindings. ``make_registrar(name, addr, port,
    defines)`` returns a not yet started bench Kamailio on cfg/registrar.cfg."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = 5070
    a, b = addr(31), addr(32)
    pair = {"WITH_DMQ": "", "KO_USRLOC_TIMER": "1"}

    def registrar(name: str, me: str, peer: str, location: str):
        return make_registrar(name, me, port, {**pair, "KO_USRLOC_DB_URL": f'"{location}"',
                                               "KO_DMQ_ADDRESS": f'"sip:{me}:{port}"',
                                               "KO_DMQ_PEER": f'"sip:{peer}:{port}"'})

    out: dict = {"bindings": count}
    empty = registrar("dur-empty", a, b, sqlite_location_db(workdir / "empty.sqlite"))
    empty.start()
    try:
        shm_empty = empty.shm_used()
    finally:
        empty.stop()
    url1 = sqlite_location_db(workdir / "reg1.sqlite")
    fill_location(url1, count, f"udp:{a}:{port}", f"{addr(2)}:5060")
    reg1 = registrar("dur-reg1", a, b, url1)
    reg2 = registrar("dur-reg2", b, a, sqlite_location_db(workdir / "reg2.sqlite"))
    try:
        started = time.monotonic()
        reg1.start()
        wait_for(lambda: contacts(reg1) >= count, f"reg1 to load {count} bindings", timeout=300)
        out["reload_seconds"] = round(time.monotonic() - started, 2)
        out["shm_bytes_per_binding"] = round((reg1.shm_used() - shm_empty) / count)
        log(f"  durability: reload of {count} bindings {out['reload_seconds']} s, "
            f"{out['shm_bytes_per_binding']} B shared memory per binding")
        started = time.monotonic()
        reg2.start()
        wait_for(lambda: contacts(reg2) >= count, f"reg2 to resync {count} bindings", timeout=300)
        out["dmq_resync_seconds"] = round(time.monotonic() - started, 2)
        out["dmq_resync_per_second"] = round(count / out["dmq_resync_seconds"])
        url2 = reg2.defines["KO_USRLOC_DB_URL"].strip('"')
        wait_for(lambda: row_count(url2) >= count, f"reg2 to write {count} rows", timeout=300)
        out["write_back_seconds"] = round(time.monotonic() - started, 2)  # from reg2's start: rows written as they come
        out["write_back_rows_per_second"] = round(count / out["write_back_seconds"])
        log(f"  durability: DMQ resync {out['dmq_resync_seconds']} s ({out['dmq_resync_per_second']}/s), "
            f"write-back of {count} rows {out['write_back_seconds']} s ({out['write_back_rows_per_second']}/s)")
    finally:
        for kam in (reg2, reg1):
            kam.stop()
    return out
