"""Fixtures: real Kamailio processes on 127.0.x.y, started once per module."""

from __future__ import annotations

import itertools
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "kemi"))

from harness import CFG_DIR, ROOT, TEST_KEY, Kamailio  # noqa: E402

WORK_ROOT = ROOT / "tests" / ".work"
REGISTRAR_ADDR = "127.0.0.1"
REGISTRAR_PORT = 5070
FAULT_HEADER = "X-KO-Fault"
_RUNNING: list[Kamailio] = []
_PORTS = itertools.count(15000)


def ko_yaml() -> str:
    text = (CFG_DIR / "outbound.yaml").read_text()
    return text.replace('fault_injection_header: ""', f'fault_injection_header: "{FAULT_HEADER}"')


@pytest.fixture(scope="session")
def workdir() -> Path:
    path = WORK_ROOT / time.strftime("%Y%m%d-%H%M%S")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@pytest.fixture
def local_port() -> int:
    """A fresh local port for each SIPp run, so no two runs share a UDP socket."""
    return next(_PORTS)


def start(kam: Kamailio) -> Kamailio:
    _RUNNING.append(kam)
    return kam.start()


def stop(kam: Kamailio) -> None:
    kam.stop()
    if kam in _RUNNING:
        _RUNNING.remove(kam)


def registrar(workdir: Path, name: str = "registrar", addr: str = REGISTRAR_ADDR,
              port: int = REGISTRAR_PORT, **kw) -> Kamailio:
    return Kamailio(name, "registrar.cfg", workdir, addr, port, yaml_text=ko_yaml(), **kw)


def edge(workdir: Path, name: str, addr: str, registrar_uri: str, key: str = TEST_KEY,
         port: int = 5060, **kw) -> Kamailio:
    return Kamailio(name, "edge.cfg", workdir, addr, port, env={"KO_FLOW_KEYS": key},
                    defines={"KO_REGISTRAR": f'"{registrar_uri}"'}, yaml_text=ko_yaml(), **kw)


@pytest.fixture(scope="module")
def topology(workdir: Path) -> Iterator[dict[str, Kamailio]]:
    """Registrar on 127.0.0.1:5070, edge1 on 127.0.0.2:5060, edge2 on 127.0.0.3:5060."""
    reg = registrar(workdir)
    edges = [edge(workdir, f"edge{i}", f"127.0.0.{i + 1}", reg.uri) for i in (1, 2)]
    started: list[Kamailio] = []
    try:
        for kam in (reg, *edges):
            started.append(start(kam))
        yield {"registrar": reg, "edge1": edges[0], "edge2": edges[1]}
    finally:
        for kam in started:
            stop(kam)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for kam in list(_RUNNING):
            report.sections.append((f"kamailio {kam.name} log (tail)", kam.log()[-6000:]))
