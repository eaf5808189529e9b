"""Outbound flows over WebSocket, on real Kamailio (RFC 7118, RFC 6455, RFC 5626).

The edges (cfg/edge.cfg) and the single server (cfg/single.cfg) run with
``-A WITH_WEBSOCKET``: Kamailio's xhttp + websocket modules on KO_WS_PORT, the
handshake decided in Python (adapter.websocket, outbound.websocket). SIPp
speaks no WebSocket: the device is tests/ws_ua.py over tests/wsclient.py (a
stdlib RFC 6455 client); the callers are SIPp over UDP.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from actors import call, instance, wait_bindings, wait_until
from harness import TEST_KEY, Kamailio, describe, sipp
from outbound.sipmsg import parse_name_addr
from outbound.tokens import FlowTokenCodec, parse_key
from topology import edge, ko_yaml, net, registrar, single, start, stop, subscriber
from ws_ua import WsUA
from wsclient import TEXT, WsClient, WsClosed, frame

REGISTRAR = net(210)
EDGE1 = net(211)
EDGE2 = net(212)
CALLER = net(213)
DEVICE = net(214)
SINGLE = net(216)
WS = 8080
ORIGIN = "https://phone.example.com"
CODEC = FlowTokenCodec([parse_key(TEST_KEY)])


def ws_yaml() -> str:
    data = yaml.safe_load(ko_yaml())
    data["websocket"] = {"allowed_origins": [ORIGIN]}
    return yaml.safe_dump(data)


@pytest.fixture(scope="module")
def ws_farm(workdir: Path) -> Iterator[dict[str, Kamailio]]:
    """A registrar and two edges with WebSocket listeners on :8080 (Origin allow-list set)."""
    reg = registrar(workdir, name="registrar-ws", addr=REGISTRAR)
    edges = {n: edge(workdir, f"edge{n}-ws", addr, reg.uri, ws_port=WS, yaml_text=ws_yaml())
             for n, addr in ((1, EDGE1), (2, EDGE2))}
    started: list[Kamailio] = []
    try:
        for kam in (reg, *edges.values()):
            started.append(start(kam))
        yield {"registrar": reg, "edge1": edges[1], "edge2": edges[2]}
    finally:
        for kam in started:
            stop(kam)


@pytest.fixture
def sockets() -> Iterator[list[WsClient]]:
    opened: list[WsClient] = []
    yield opened
    for client in opened:
        client.abort()


def connect(kam: Kamailio, sockets: list[WsClient], *, local_ip: str = DEVICE, **handshake) -> WsClient:
    client = WsClient(kam.addr, WS, local_ip=local_ip)
    sockets.append(client)
    handshake.setdefault("origin", ORIGIN)
    answer = client.handshake(**handshake)
    assert answer.status == 101, answer.raw
    return client


def device(kam: Kamailio, sockets: list[WsClient], user: str, inst: str, reg_id: int = 1) -> WsUA:
    """A device registered over its own WebSocket connection to ``kam``."""
    ua = WsUA(connect(kam, sockets), *subscriber(user))
    answer = ua.register(inst, reg_id)
    assert answer.status == 200, answer.text
    return ua


def assert_closed_by_server(client: WsClient) -> None:
    """The server closed the TCP connection after its answer."""
    client.sock.settimeout(5)
    try:
        rest = client.sock.recv(65536)
        while rest:
            rest = client.sock.recv(65536)
    except ConnectionResetError:
        pass


def no_traceback(*kams: Kamailio) -> None:
    for kam in kams:
        log = kam.log()
        assert "Traceback" not in log and "exception in route" not in log, log[-4000:]


# ----- the handshake (RFC 6455 §4.2, RFC 7118 §4.1) ---------------------------

@pytest.mark.parametrize(("handshake", "status"), [
    ({"origin": "https://evil.example.com"}, 403),
    ({"origin": None}, 403),
    ({"protocol": None}, 400),
    ({"protocol": "msrp"}, 400),
    ({"version": "8"}, 426),
])
def test_rfc7118_4_1_handshake_refused_with_http_4xx_and_closed(ws_farm, sockets, handshake, status):
    """A foreign Origin (RFC 6455 §10.2: 403), no sip sub-protocol (RFC 7118 §4.1:
    400), another WebSocket version (426): an HTTP answer, then the connection closes."""
    client = WsClient(EDGE1, WS, local_ip=DEVICE)
    sockets.append(client)
    answer = client.handshake(**{"origin": ORIGIN, **handshake})
    assert answer.status == status, answer.raw
    assert_closed_by_server(client)
    no_traceback(ws_farm["edge1"])


def test_an_http_request_that_is_no_upgrade_gets_4xx(ws_farm):
    """A plain GET on the WebSocket port (426) and on the SIP TCP port (404):
    an HTTP answer, never a traceback."""
    for port, status in ((WS, 426), (5060, 404)):
        with socket.create_connection((EDGE1, port), timeout=5, source_address=(DEVICE, 0)) as sock:
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {EDGE1}\r\n\r\n".encode())
            answer = sock.recv(4096).decode(errors="replace")
            assert answer.startswith(f"HTTP/1.1 {status} "), answer
    no_traceback(ws_farm["edge1"])


# ----- outbound over WebSocket (RFC 7118 §5, RFC 5626) -------------------------

def test_rfc7118_5_register_over_websocket_gets_a_token_naming_the_connection(ws_farm, sockets):
    """RFC 5626 §5.2 over WebSocket: the edge's Path token names the ws flow and
    its connection id; the registrar answers with Require: outbound."""
    ua = device(ws_farm["edge1"], sockets, "w-alice", instance(9101))
    assert "outbound" in ua.seen[-1].get("Require")
    [binding] = ws_farm["registrar"].bindings("w-alice")
    flow = CODEC.flow_of(parse_name_addr(binding["Path"]).sip_uri.user)
    assert flow is not None and flow.transport == "ws", binding
    assert (flow.local_ip, flow.local_port) == (EDGE1, WS)
    assert (flow.remote_ip, flow.remote_port) == ua.ws.local
    [conn] = [c for c in ws_farm["edge1"].rpc("core.tcp_list")
              if (c["src_ip"], c["src_port"]) == ua.ws.local]
    assert conn["id"] == flow.conn_id, "the token names the very WebSocket connection"
    ua.ws.close()


def test_rfc7118_5_a_call_reaches_the_device_over_its_websocket_connection(ws_farm, workdir, local_port, sockets):
    """RFC 5626 §5.3.1: the INVITE from a UDP caller goes out over the device's WS
    connection; 200, ACK and BYE complete the call (double Record-Route at the
    edge: UDP toward the farm, WS toward the device, RFC 5658)."""
    ua = device(ws_farm["edge1"], sockets, "w-bob", instance(9102))
    run = start_call(ws_farm["edge2"], workdir, local_port, "w-bob")
    invite = ua.answer_call()
    result = run.wait()
    assert result.returncode == 0, describe(result)
    assert result.value("who") == "w-bob"
    rr = [parse_name_addr(v).sip_uri for v in invite.all("Record-Route")]
    assert any(u.params.get("transport") == "ws" and u.host == EDGE1 for u in rr), invite.text
    no_traceback(*ws_farm.values())
    ua.ws.close()


def start_call(kam: Kamailio, workdir: Path, port: int, callee: str, scenario: str = "uac_short.xml"):
    from harness import start_sipp
    return start_sipp(f"caller/{scenario}", f"{kam.addr}:{kam.port}", workdir=workdir, local_ip=CALLER,
                      local_port=port, transport="udp", timeout=15, auth=subscriber("alice"),
                      keys={"callee": callee, "domain": "example.com", "user": "alice"})
