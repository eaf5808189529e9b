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

from actors import call, instance, start_callee, wait_bindings, wait_until
from harness import TEST_KEY, Kamailio, SippRun, describe, sipp, start_sipp
from outbound.sipmsg import parse_name_addr, split_values
from outbound.tokens import Flow, FlowTokenCodec, parse_key
from tls_setup import make_certs, write_tls_cfg
from topology import WSS_PORT, edge, farm_with_two_edges, ko_yaml, net, registrar, single, start, stop, subscriber
from ws_ua import WsUA
from wsclient import TEXT, WsClient, frame

REGISTRAR = net(210)
EDGE1 = net(211)
EDGE2 = net(212)
CALLER = net(213)
DEVICE = net(214)
SINGLE = net(216)
SINGLE_WSS = net(217)
WS = 8080
ORIGIN = "https://phone.example.com"
CODEC = FlowTokenCodec([parse_key(TEST_KEY)])
_YAML = yaml.safe_load(ko_yaml())
FLOW_LIFETIME = _YAML["registrar"]["flow_timer"] + _YAML["keepalive"]["grace_seconds"]


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
    yield from farm_with_two_edges(workdir, reg, edges)


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


def start_call(kam: Kamailio, workdir: Path, port: int, callee: str) -> SippRun:
    """A UDP caller (tests/sipp/caller/uac_short.xml: INVITE, 407 answered, ACK, BYE)."""
    return start_sipp("caller/uac_short.xml", f"{kam.addr}:{kam.port}", workdir=workdir, local_ip=CALLER,
                      local_port=port, transport="udp", timeout=15, auth=subscriber("alice"),
                      keys={"callee": callee, "domain": "example.com", "user": "alice"})


def wait_connection_gone(kam: Kamailio, conn_id: int) -> None:
    wait_until(lambda: all(c["id"] != conn_id for c in kam.rpc("core.tcp_list")),
               f"{kam.name} to drop connection {conn_id}")


def binding_flow(binding: dict) -> Flow:
    flow = CODEC.flow_of(parse_name_addr(binding["Path"]).sip_uri.user)
    assert flow is not None, binding
    return flow


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
    its connection id; the registrar answers with Require: outbound; §5.4: the
    edge keeps the connection Flow-Timer + grace without traffic."""
    ua = device(ws_farm["edge1"], sockets, "w-alice", instance(9101))
    assert "outbound" in ua.seen[-1].get("Require")
    [binding] = ws_farm["registrar"].bindings("w-alice")
    flow = binding_flow(binding)
    assert flow.transport == "ws", binding
    assert (flow.local_ip, flow.local_port) == (EDGE1, WS)
    assert (flow.remote_ip, flow.remote_port) == ua.ws.local
    [conn] = [c for c in ws_farm["edge1"].rpc("core.tcp_list")
              if (c["src_ip"], c["src_port"]) == ua.ws.local]
    assert conn["id"] == flow.conn_id, "the token names the very WebSocket connection"
    assert conn["type"] == "WS" and conn["lifetime"] == FLOW_LIFETIME, \
        "an outbound WebSocket flow lives Flow-Timer + grace when idle (RFC 5626 §5.4)"
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
    rr = [parse_name_addr(v).sip_uri for r in invite.all("Record-Route") for v in split_values(r)]
    ours = [u for u in rr if u.host == EDGE1]
    # RFC 5658 double Record-Route: the WS side toward the device, the UDP side toward the farm
    assert [(u.port, u.params.get("transport")) for u in ours] == [(WS, "ws"), (None, None)], invite.text
    assert all("r2" in u.params for u in ours), invite.text
    no_traceback(*ws_farm.values())
    ua.ws.close()



def test_rfc5658_a_websocket_device_calls_a_udp_device_with_the_right_record_route(ws_farm, workdir, local_port,
                                                                                   sockets, callees):
    """RFC 5626 §5.3.2 / RFC 5658: the WebSocket device (Contact ;ob) calls a UDP
    outbound device registered through edge2: edge1 Record-Routes twice (the WS
    side with the token of the caller's WebSocket flow, the UDP side toward the
    farm); ACK and BYE from the WebSocket device follow that route set."""
    callee = start_callee(ws_farm["edge2"], workdir, local_port, "w-udp", ua_ip=CALLER, transport="udp")
    callees.append(callee)
    wait_bindings(ws_farm["registrar"], "w-udp", [callee])
    ua = device(ws_farm["edge1"], sockets, "w-henry", instance(9108))
    answer = ua.call("w-udp")
    assert answer.status == 200 and answer.get("X-Who") == "w-udp", answer.text
    rr = [parse_name_addr(v).sip_uri for r in answer.all("Record-Route") for v in split_values(r)]
    ours = [u for u in rr if u.host == EDGE1]
    assert [(u.port, u.params.get("transport")) for u in ours] == [(None, None), (WS, "ws")], answer.text
    flow = CODEC.flow_of(ours[1].user)
    assert flow is not None and (flow.transport, flow.remote_port) == ("ws", ua.ws.local[1]), \
        "the WS side's token names the caller's WebSocket flow"
    result = callee.wait(10)
    assert result.returncode == 0, describe(result)
    no_traceback(*ws_farm.values())
    ua.ws.close()


def test_rfc5626_5_3_1_a_closed_websocket_gets_430_at_the_edge_and_failover_at_home(ws_farm, workdir, local_port,
                                                                                    sockets):
    """RFC 5626 §5.3.1 over WebSocket: the device's flow 1 (edge1) closes; a request
    with its token gets 430 at once from edge1 (no new connection: Kamailio never
    opens a WebSocket); §7: the home proxy moves the call to flow 2 (edge2, same
    instance, reg-id 2), answered there; with both gone the caller hears 480."""
    inst = instance(9103)
    flow1 = device(ws_farm["edge1"], sockets, "w-carol", inst, reg_id=1)
    flow2 = device(ws_farm["edge2"], sockets, "w-carol", inst, reg_id=2)
    bindings = ws_farm["registrar"].bindings("w-carol")
    assert len(bindings) == 2, bindings
    [first] = [b for b in bindings if b["Reg-Id"] == 1]
    token_flow = binding_flow(first)
    flow1.ws.close()
    wait_connection_gone(ws_farm["edge1"], token_flow.conn_id)

    direct = sipp("caller/uac_final.xml", f"{EDGE1}:5060", workdir=workdir, local_ip=REGISTRAR,
                  local_port=local_port, timeout=10,
                  keys={"callee": "w-carol", "domain": "example.com", "user": "core",
                        "ruri": first["Address"], "extra": f"Route: {first['Path']}"})
    assert direct.value("final") == "430", describe(direct)

    run = start_call(ws_farm["edge1"], workdir, local_port + 1, "w-carol")
    invite = flow2.answer_call()
    result = run.wait()
    assert result.returncode == 0 and result.value("who") == "w-carol", describe(result)
    assert any(parse_name_addr(v).sip_uri.host == EDGE2 for v in invite.all("Record-Route")), invite.text

    flow2.ws.close()
    wait_until(lambda: not any(c["src_ip"] == DEVICE for c in ws_farm["edge2"].rpc("core.tcp_list")),
               "edge2 to drop flow 2")
    none_left = call(ws_farm["edge1"], workdir, local_port + 2, "w-carol", ua_ip=CALLER, scenario="uac_final.xml",
                     ruri="sip:w-carol@example.com", extra="X-Case: ws-none-left")
    assert none_left.value("final") == "480", describe(none_left)
    no_traceback(*ws_farm.values())


def test_rfc5626_5_3_1_a_forged_token_in_a_websocket_frame_gets_403(ws_farm, sockets):
    """A device sends, in a WebSocket text frame, a request whose Route carries a
    token of ours with one character changed: 403 over the same connection."""
    ua = device(ws_farm["edge1"], sockets, "w-dave", instance(9104))
    [binding] = ws_farm["registrar"].bindings("w-dave")
    token = parse_name_addr(binding["Path"]).sip_uri.user or ""
    forged = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    ua.cseq += 1
    ua.ws.send_text("\r\n".join([
        "INVITE sip:w-dave@example.com SIP/2.0", f"Via: {ua.via()}", "Max-Forwards: 70",
        f"Route: <sip:{forged}@{EDGE1};lr;ob>", f"From: <sip:w-dave@example.com>;tag={ua.tag}",
        "To: <sip:w-dave@example.com>", f"Call-ID: forged-{ua.call_id}", f"CSeq: {ua.cseq} INVITE",
        f"Contact: <sip:w-dave@{ua.host};transport=ws;ob>", "Content-Length: 0", "", ""]))
    assert ua.final("INVITE").status == 403
    assert "forged flow token" in ws_farm["edge1"].log()
    ua.ws.close()


def test_rfc6455_5_4_a_sip_message_split_over_continuation_frames_is_processed(ws_farm, sockets):
    """RFC 6455 §5.4: a message may be fragmented; RFC 7118 §5.1: one SIP message
    per WebSocket message. A REGISTER in four frames (text, continuation, ...,
    FIN) is answered like a whole one (401, then 200)."""
    ua = WsUA(connect(ws_farm["edge1"], sockets), *subscriber("w-erin"))
    ua.ws.send_fragments(ua.register_request(instance(9105), 1), 4)
    challenge = ua.final("REGISTER")
    assert challenge.status == 401, challenge.text
    assert ua.register(instance(9105), 1).status == 200
    assert len(ws_farm["registrar"].bindings("w-erin")) == 1
    ua.ws.close()


def test_rfc7118_6_crlf_keepalive_and_ping_are_answered_over_websocket(ws_farm, sockets):
    """RFC 5626 §4.4.1 / §5.4 over WebSocket: a CRLFCRLF keepalive in a text frame
    is answered with CRLF (the pong of §3.5.1); a WebSocket Ping (RFC 6455 §5.5.2)
    with a Pong carrying the same data."""
    client = connect(ws_farm["edge1"], sockets)
    client.send_text("\r\n\r\n")
    opcode, fin, payload = client.read_frame()
    assert (opcode, fin, payload) == (TEXT, True, b"\r\n")
    client.ping(b"ko-ping")
    opcode, _, payload = client.read_frame()
    assert (opcode, payload) == (0xA, b"ko-ping")
    client.close()


@pytest.mark.parametrize(("name", "data", "code"), [
    ("unmasked", frame(TEXT, b"OPTIONS sip:x SIP/2.0\r\n\r\n", mask=False), 1002),
    ("reserved bits", frame(TEXT, b"x", rsv=4), 1002),
    ("unknown opcode", frame(0x3, b"x"), 1008),
    # past Kamailio's TCP read buffer (16 KB in 5.6): dropped at once, no close frame
    ("larger than the read buffer", frame(TEXT, b"x" * 70000), None),
])
def test_rfc6455_7_4_a_bad_frame_closes_the_connection_without_a_traceback(ws_farm, sockets, name, data, code):
    """RFC 6455 §5.1, §5.2, §7.4.1: an unmasked client frame, reserved bits, an
    unknown opcode: the edge sends its close frame (1002, 1008) and closes; a frame
    larger than Kamailio's read buffer: the connection is dropped at once (no close
    frame); the next connection works."""
    client = connect(ws_farm["edge1"], sockets)
    client.send_raw(data)
    assert client.wait_closed() == code, name
    assert connect(ws_farm["edge1"], sockets).open
    no_traceback(ws_farm["edge1"])


# ----- single server (RFC 5626 §6, §7) ----------------------------------------

@pytest.fixture(scope="module")
def single_ws(workdir: Path) -> Iterator[Kamailio]:
    kam = start(single(workdir, name="single-ws", addr=SINGLE, ws_port=WS, yaml_text=ws_yaml()))
    yield kam
    stop(kam)


@pytest.mark.parametrize("how", ["close frame", "tcp gone"])
def test_rfc5626_7_single_server_closing_the_websocket_removes_its_bindings(single_ws, workdir, local_port,
                                                                           sockets, how):
    """The single server is the device's first hop over WebSocket: a call reaches
    the device over its connection; when the connection closes every binding on
    it is removed at once (the event that came first in our runs is tcpops'
    tcp:closed for the ws connection; the websocket module's websocket:closed,
    run a few seconds later in its timer process, takes the same way,
    single_routes.FlowWatch.closed)."""
    user = f"w-frank-{how.split()[0]}"
    ua = device(single_ws, sockets, user, instance(9106))
    device_port = ua.ws.local[1]
    [binding] = single_ws.bindings(user)
    assert binding_flow(binding).transport == "ws"
    run = start_call(single_ws, workdir, local_port, user)
    ua.answer_call()
    result = run.wait()
    assert result.returncode == 0 and result.value("who") == user, describe(result)
    if how == "close frame":
        ua.ws.close()  # RFC 6455 §7.1.2: close frame, then the TCP close
    else:
        ua.ws.abort()  # the TCP connection goes without a close frame
    wait_until(lambda: not single_ws.bindings(user), "the closed WebSocket's binding to go")
    assert f":{WS}>{DEVICE}:" in single_ws.log() and "removing binding" in single_ws.log()
    if how == "close frame":
        # the websocket module's own event comes later (about 5 s), from its timer
        # process: handled, no traceback. Without a close frame Kamailio 5.6.3 ran
        # none in our runs: tcpops' tcp:closed alone removes the binding then
        closed_line = f"websocket:closed from {DEVICE}:{device_port}"
        wait_until(lambda: closed_line in single_ws.log(), "the websocket:closed event", timeout=15)
    no_traceback(single_ws)


@pytest.fixture(scope="module")
def single_wss(workdir: Path) -> Iterator[tuple[Kamailio, object]]:
    """A single server with WITH_TLS and WITH_WEBSOCKET: ws on :8080, wss on :8443."""
    certs = make_certs(workdir / "wss", [SINGLE_WSS])
    kam = start(single(workdir, name="single-wss", addr=SINGLE_WSS, ws_port=WS, yaml_text=ws_yaml(),
                       tls_cfg=write_tls_cfg(workdir / "wss", certs)))
    yield kam, certs
    stop(kam)


def test_rfc7118_5_wss_flow_over_tls_registers_and_takes_a_call(single_wss, workdir, local_port, sockets):
    """Secure WebSocket (RFC 7118 §3: wss is WebSocket over TLS): the TLS listener
    on KO_WSS_PORT takes the handshake; the token names a wss flow; a UDP call
    reaches the device over its wss connection."""
    kam, certs = single_wss
    client = WsClient(SINGLE_WSS, WSS_PORT, local_ip=DEVICE, tls=certs.client_context())
    sockets.append(client)
    assert client.handshake(origin=ORIGIN).status == 101
    ua = WsUA(client, *subscriber("w-gina"))
    assert ua.register(instance(9107)).status == 200
    [binding] = kam.bindings("w-gina")
    flow = binding_flow(binding)
    assert (flow.transport, flow.local_port, flow.remote_port) == ("wss", WSS_PORT, client.local[1]), binding
    run = start_call(kam, workdir, local_port, "w-gina")
    ua.answer_call()
    result = run.wait()
    assert result.returncode == 0 and result.value("who") == "w-gina", describe(result)
    ua.ws.close()
    wait_until(lambda: not kam.bindings("w-gina"), "the closed wss connection's binding to go")
    no_traceback(kam)
