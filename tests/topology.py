"""Kamailio topologies for the integration tests: who listens where."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

from harness import CFG_DIR, ROOT, TEST_KEY, Kamailio
from locations import sqlite_location_db
from subscribers import SubscriberDB, password_for

WORK_ROOT = ROOT / "tests" / ".work"
# All test addresses live in one /24 of loopback; KO_TEST_NET=127.0.5 moves a whole
# run elsewhere so that two checkouts can run their suites side by side.
TEST_NET = os.environ.get("KO_TEST_NET", "127.0.0")


def net(host: int) -> str:
    """Address ``host`` of the test network, e.g. net(2) == "127.0.0.2"."""
    return f"{TEST_NET}.{host}"


REGISTRAR_ADDR = net(1)
REGISTRAR_PORT = 5070
FAULT_HEADER = "X-KO-Fault"
RUNNING: list[Kamailio] = []
STOPPED: list[Kamailio] = []  # stopped during the current test (conftest prints their logs too)
PORTS = itertools.count(15000, 50)  # a block of 50 ports per test


_SUBSCRIBERS: list[SubscriberDB] = []
_KNOWN: set[tuple[str, str]] = set()


def subscribers() -> SubscriberDB:
    """The run's subscriber database (SQLite), shared by every registrar and
    single server the tests start (their KO_DB_URL)."""
    if not _SUBSCRIBERS:
        path = WORK_ROOT / f"subscribers-{TEST_NET}-{os.getpid()}.sqlite"
        path.unlink(missing_ok=True)
        _SUBSCRIBERS.append(SubscriberDB.create_sqlite(path))
    return _SUBSCRIBERS[0]


def subscriber(username: str, domain: str = "example.com") -> tuple[str, str]:
    """Make ``username@domain`` a subscriber (once) with its test password;
    (username, password) for SIPp's ``auth``."""
    if (username, domain) not in _KNOWN:
        if not any(r.username == username and r.domain == domain for r in subscribers().rows()):
            subscribers().add(username, domain, password_for(username))
        _KNOWN.add((username, domain))
    return username, password_for(username)


def db_defines(workdir: Path, name: str, db: SubscriberDB | None = None) -> dict[str, str]:
    """The registrar's and single server's databases: subscribers in ``db``, by
    default the run's (subscribers()); bindings in its own SQLite file
    (tests/locations.py), kept across its restarts."""
    location = sqlite_location_db(Path(workdir) / f"{name}.location.sqlite")
    # no start-up window (KO_LOAD_WINDOW): a test's unknown AOR is 404 at once;
    # the tests of the window set it (test_registrar_pair.py)
    return {"KO_DB_URL": f'"{(db or subscribers()).url}"', "KO_USRLOC_DB_URL": f'"{location}"',
            "KO_LOAD_WINDOW": "0"}


def ko_yaml() -> str:
    text = (CFG_DIR / "outbound.yaml").read_text()
    return text.replace('fault_injection_header: ""', f'fault_injection_header: "{FAULT_HEADER}"')


def start(kam: Kamailio) -> Kamailio:
    RUNNING.append(kam)
    return kam.start()


def stop(kam: Kamailio) -> None:
    kam.stop()
    if kam in RUNNING:
        RUNNING.remove(kam)
    if kam not in STOPPED:
        STOPPED.append(kam)


TLS_PORT = 5061


def tls_defines(tls_cfg: Path | None, port: int = TLS_PORT) -> dict[str, str]:
    """Defines that add the TLS listener of edge.cfg / single.cfg (WITH_TLS)."""
    if tls_cfg is None:
        return {}
    return {"WITH_TLS": "", "KO_TLS_PORT": str(port), "KO_TLS_CFG": f'"{tls_cfg}"'}


WS_PORT = 8080
WSS_PORT = 8443


def ws_defines(ws_port: int | None, wss_port: int = WSS_PORT) -> dict[str, str]:
    """Defines that add the WebSocket listeners of edge.cfg / single.cfg (WITH_WEBSOCKET;
    WSS too when WITH_TLS is on)."""
    if ws_port is None:
        return {}
    return {"WITH_WEBSOCKET": "", "KO_WS_PORT": str(ws_port), "KO_WSS_PORT": str(wss_port)}


def registrar(workdir: Path, name: str = "registrar", addr: str = REGISTRAR_ADDR,
              port: int = REGISTRAR_PORT, db: SubscriberDB | None = None, yaml_text: str | None = None,
              **kw) -> Kamailio:
    """The registrar (home proxy), by default on net(1):5070, with the subscriber
    database ``db`` (default the run's) and the tests' outbound.yaml (``yaml_text``
    replaces it)."""
    defines = {**db_defines(workdir, name, db), **kw.pop("defines", {})}
    return Kamailio(name, "registrar.cfg", workdir, addr, port, yaml_text=yaml_text or ko_yaml(), defines=defines,
                    **kw)


def two_edges(workdir: Path, registrar_uri: str, **kw) -> dict[int, Kamailio]:
    """edge1 (net(2):5060) and edge2 (net(3):5060) toward ``registrar_uri``, by
    number, not started; ``kw`` as for edge()."""
    return {n: edge(workdir, f"edge{n}", net(n + 1), registrar_uri, **kw) for n in (1, 2)}


def farm_with_two_edges(workdir: Path, reg: Kamailio,
                        edges: dict[int, Kamailio] | None = None) -> Iterator[dict[str, Kamailio]]:
    """Start ``reg`` and ``edges`` (by number 1, 2; default two_edges() toward it);
    yield them by name; stop whatever started (a fixture's body)."""
    edges = edges if edges is not None else two_edges(workdir, reg.uri)
    started: list[Kamailio] = []
    try:
        for kam in (reg, *edges.values()):
            started.append(start(kam))
        yield {"registrar": reg, "edge1": edges[1], "edge2": edges[2]}
    finally:
        for kam in started:
            stop(kam)


def edge(workdir: Path, name: str, addr: str, registrar_uri: str, key: str = TEST_KEY,
         port: int = 5060, tls_cfg: Path | None = None, yaml_text: str | None = None,
         ws_port: int | None = None, **kw) -> Kamailio:
    """An edge proxy toward ``registrar_uri`` signing flow tokens with ``key``, with
    the tests' outbound.yaml (``yaml_text`` replaces it); ``ws_port``: WebSocket too."""
    return Kamailio(name, "edge.cfg", workdir, addr, port, env={"KO_FLOW_KEYS": key},
                    defines={"KO_REGISTRAR": f'"{registrar_uri}"', **tls_defines(tls_cfg), **ws_defines(ws_port)},
                    yaml_text=yaml_text or ko_yaml(), **kw)


def single(workdir: Path, name: str = "single", addr: str | None = None, key: str = TEST_KEY,
           port: int = 5060, tls_cfg: Path | None = None, ws_port: int | None = None, **kw) -> Kamailio:
    """Edge + registrar + home proxy in one Kamailio (cfg/single.cfg); ``ws_port``: WebSocket too."""
    defines = {**db_defines(workdir, name), **kw.pop("defines", {}), **tls_defines(tls_cfg), **ws_defines(ws_port)}
    return Kamailio(name, "single.cfg", workdir, addr or net(60), port, env={"KO_FLOW_KEYS": key},
                    yaml_text=kw.pop("yaml_text", None) or ko_yaml(), defines=defines, **kw)
