"""Fixtures: the docker/compose.yaml topology, built and started once per module.

Images are built locally when missing (docker/build_images.py), dockerd is
started when it is not running (tools/install-docker). The topology runs on an
internal network, by default 198.18.7.0/24 (KO_DOCKER_NET moves it), under a
project name unique to this run; every container and network of it is removed
at the end, pass or fail.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "kemi"))

from docker_topology import Topology, build_image, ensure_docker  # noqa: E402
from topology import WORK_ROOT  # noqa: E402

DOCKER_NET = os.environ.get("KO_DOCKER_NET", "198.18.7")
ACTIVE: list[Topology] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "containers: runs the Docker topology (tests/containers)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.containers)


@pytest.fixture(scope="session")
def image() -> str:
    ensure_docker()
    return build_image()


@pytest.fixture(scope="module")
def topo(image: str) -> Iterator[Topology]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    topology = Topology(project=f"kotest{os.getpid()}", net=DOCKER_NET,
                        out=WORK_ROOT / f"containers-{stamp}-{os.getpid()}", image=image,
                        flow_keys="hex:" + secrets.token_hex(32))
    ACTIVE.append(topology)
    try:
        yield topology.up()
    finally:
        topology.down()
        ACTIVE.remove(topology)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for topology in ACTIVE:
            for service in ("edge1", "edge2", "reg1", "reg2"):
                report.sections.append((f"container {service} log (tail)", topology.logs(service)[-4000:]))
