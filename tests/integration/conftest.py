"""Fixtures: real Kamailio processes on 127.0.x.y, started once per module."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "kemi"))

from dns_setup import NS, NS_PORT  # noqa: E402
from harness import Kamailio, SippRun  # noqa: E402
from nsd import Nsd  # noqa: E402
from topology import (  # noqa: E402
    PORTS,
    RUNNING,
    STOPPED,
    TEST_NET,
    WORK_ROOT,
    farm_with_two_edges,
    net,
    registrar,
    stop,
)
from wsclient import WsClient  # noqa: E402


@pytest.fixture(scope="session")
def workdir() -> Path:
    path = WORK_ROOT / (time.strftime("%Y%m%d-%H%M%S") + "-" + net(0))
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@pytest.fixture
def local_port() -> int:
    """A fresh local port for each SIPp run, so no two runs share a UDP socket."""
    return next(PORTS)


@pytest.fixture
def callees() -> Iterator[list[SippRun]]:
    """SIPp UAs a test started in the background; killed (by PID) when it ends."""
    runs: list[SippRun] = []
    yield runs
    for run in runs:
        run.kill()


@pytest.fixture
def sockets() -> Iterator[list[WsClient]]:
    """WebSocket clients (tests/wsclient.py) a test opened: aborted when it ends."""
    opened: list[WsClient] = []
    yield opened
    for client in opened:
        client.abort()


@pytest.fixture
def started() -> Iterator[list[Kamailio | SippRun]]:
    """Kamailios and SIPps a test started itself: stopped (by PID) when it ends,
    pass or fail, last started first."""
    items: list[Kamailio | SippRun] = []
    yield items
    for item in reversed(items):
        if isinstance(item, Kamailio):
            stop(item)
        else:
            item.kill()


@pytest.fixture(scope="module")
def topology(workdir: Path) -> Iterator[dict[str, Kamailio]]:
    """Registrar on net(1):5070, edge1 on net(2):5060, edge2 on net(3):5060."""
    reg = registrar(workdir)
    yield from farm_with_two_edges(workdir, reg)


@pytest.fixture(scope="module")
def nsd(request: pytest.FixtureRequest, workdir: Path) -> Iterator[Nsd]:
    """Debian's nsd serving tests/dns/ko.test.zone on NS:NS_PORT for one test
    module. The module's NSD_VALUES fill the zone's @NAME@ placeholders."""
    values = {"NET": TEST_NET, **getattr(request.module, "NSD_VALUES", {})}
    server = Nsd(workdir / f"nsd-{request.module.__name__}", NS, NS_PORT, values=values)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def log_marks() -> None:
    """Every Kamailio still running from an earlier test (a module's topology)
    starts this test with an empty new_log()."""
    for kam in RUNNING:
        kam.mark_log()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "setup":
        STOPPED.clear()
    if report.when == "call" and report.failed:
        for kam in [*RUNNING, *(k for k in STOPPED if k not in RUNNING)]:
            report.sections.append((f"kamailio {kam.name} log (tail)", kam.log()[-6000:]))
