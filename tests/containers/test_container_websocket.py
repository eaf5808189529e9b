"""SIP over WebSocket on the container topology (docker/compose.yaml, issue 15).

edge1 and edge2 listen on WebSocket too (KO_DEFINES=WITH_WEBSOCKET, ws on :8080
of their fixed addresses). The device is tests/ws_ua.py over tests/wsclient.py
(stdlib Python: SIPp speaks no WebSocket), run with the image's python3 INSIDE
ua-b, so that its connections stay on the internal network: the files are
copied to the host folder mounted at /out, and tests/ws_device.py keeps one
WebSocket flow per edge, answers the calls that come over them and reports
each event as one JSON line; the test tells it on stdin which flow to close.
The caller is SIPp in ua-a over UDP through edge2, as in test_topology.py.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator

import pytest

from docker_topology import Topology
from harness import SippResult, describe
from outbound.sipmsg import parse_name_addr
from outbound.tokens import FlowTokenCodec, parse_key
from ws_device import WsDevice

WS_PORT = 8080
DOMAIN = "example.com"
PORTS = itertools.count(21000)
DEVICE_LIMIT = 150  # seconds: the driver exits by itself after that, whatever happens
ORIGIN = "https://phone.example.com"  # as the compose edges' outbound.yaml allows


def instance(n: int) -> str:
    return f"urn:uuid:00000000-0000-4000-8000-{n:012d}"


def container_device(topo: Topology, service: str, name: str, user: str, password: str, inst: str,
                     flows: tuple[tuple[int, str], ...]) -> WsDevice:
    """tests/ws_device.py run by the container's python3 (docker exec -i) from the
    host folder mounted at /out."""
    folder = topo.out / name
    WsDevice.copy_helpers(folder)
    return WsDevice(["docker", "exec", "-i", topo.containers[service], "python3"], f"/out/{name}/ws_device.py",
                    folder, user=user, password=password, instance=inst, local_ip=topo.addr(service), port=WS_PORT,
                    origin=ORIGIN, flows=tuple((regid, topo.addr(edge)) for regid, edge in flows),
                    limit=DEVICE_LIMIT)


@pytest.fixture
def devices(topo: Topology) -> Iterator[list[WsDevice]]:
    started: list[WsDevice] = []
    yield started
    for device in started:
        device.stop()


def ws_connections(topo: Topology, edge: str, source: str) -> list[dict]:
    return [c for c in topo.rpc(edge, "core.tcp_list") or [] if c.get("src_ip") == source and c.get("type") == "WS"]


def wait_ws_gone(topo: Topology, edge: str, source: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while ws_connections(topo, edge, source):
        if time.monotonic() > deadline:
            raise AssertionError(f"{edge} still holds {ws_connections(topo, edge, source)} after {timeout}s")
        time.sleep(0.1)


def call(topo: Topology, user: str, scenario: str = "caller/uac_short.xml", **keys: str) -> SippResult:
    """The caller (SIPp in ua-a, UDP) through edge2; digest answered as carol."""
    return topo.sipp("ua-a", scenario, f"{topo.addr('edge2')}:5060", local_port=next(PORTS), timeout=20,
                     check=False, keys={"callee": user, "domain": DOMAIN, "user": "carol", **keys},
                     auth=topo.subscriber("carol"))


def rr_hosts(answered: dict) -> list[str]:
    return [parse_name_addr(v.strip()).sip_uri.host for r in answered["rr"] for v in r.split(",")]


def test_websocket_device_in_the_topology_fails_over_between_its_flows(topo, devices):
    """Issue 15, RFC 7118 §5, RFC 5626 §5.3.1 / §7 on the containers: a device in
    ua-b registers one instance over WebSocket twice, reg-id 2 through edge2 and
    reg-id 1 through edge1 (ws :8080; each Path a flow token naming a ws flow);
    a call from ua-a is answered over flow 1 (the most recent); flow 1's
    WebSocket closes: the next call is answered over flow 2 (edge1's 430 never
    reaches the caller); with flow 2 closed too the caller gets 480."""
    user, password = topo.subscriber("wanda")
    device = container_device(topo, "ua-b", "wanda-ws", user, password, instance(21), ((2, "edge2"), (1, "edge1")))
    devices.append(device)
    local = {}
    for regid in (2, 1):
        registered = device.expect("registered", regid)
        assert registered["status"] == 200, device.diagnostics()
        local[regid] = tuple(registered["local"])

    codec = FlowTokenCodec([parse_key(topo.flow_keys)])
    bindings = {b["Reg-Id"]: b for b in topo.bindings("reg1", user)}
    assert sorted(bindings) == [1, 2], bindings
    for regid, edge in ((1, "edge1"), (2, "edge2")):
        path = parse_name_addr(bindings[regid]["Path"]).sip_uri
        assert path.host == topo.addr(edge), bindings[regid]
        flow = codec.flow_of(path.user or "")
        assert flow is not None and flow.transport == "ws", bindings[regid]
        assert (flow.local_ip, flow.local_port) == (topo.addr(edge), WS_PORT), flow
        assert (flow.remote_ip, flow.remote_port) == local[regid], flow

    first = call(topo, user)
    answered = device.expect("answered", 1)
    assert first.returncode == 0 and first.value("who") == user, describe(first)
    assert topo.addr("edge1") in rr_hosts(answered), answered

    device.close_flow(1)
    wait_ws_gone(topo, "edge1", topo.addr("ua-b"))
    second = call(topo, user)
    answered = device.expect("answered", 2)
    assert second.returncode == 0 and second.value("who") == user, describe(second)
    assert topo.addr("edge2") in rr_hosts(answered), answered
    assert not re.search(r"^SIP/2.0 430", second.messages, re.M), "the caller saw a 430"

    device.close_flow(2)
    wait_ws_gone(topo, "edge2", topo.addr("ua-b"))
    none_left = call(topo, user, "caller/uac_final.xml", ruri=f"sip:{user}@{DOMAIN}", extra="X-Case: ws-none-left")
    assert none_left.value("final") == "480", describe(none_left)
    for edge in ("edge1", "edge2"):
        log = topo.logs(edge)
        assert "Traceback" not in log and "exception in route" not in log, log[-4000:]
