"""Calls to a registered outbound UA travel over its flow (issue 3, RFC 5626 §5.3).

UA B (SIPp) registers through edge1 and keeps its flow; UA A (SIPp) calls it
through edge2 and the registrar (home proxy). Everything is real Kamailio.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from pathlib import Path

import pytest

import actors
from actors import instance, tcp_stat
from digest import authorization, challenges
from harness import OTHER_KEY, TEST_KEY, Kamailio, SippResult, SippRun, describe, sipp
from outbound.sipmsg import parse_name_addr
from outbound.tokens import Flow, FlowTokenCodec, Verdict, parse_key
from topology import edge, net, start, stop, subscriber

UA_A = net(30)
UA_B = net(20)
CORE = net(1)  # the farm (the registrar's address): only it may send to device flows
CODEC = FlowTokenCodec([parse_key(TEST_KEY)])


def start_callee(kam: Kamailio, workdir: Path, port: int, user: str, *, transport: str = "tcp",
                 uas: str = "uas.xml") -> SippRun:
    return actors.start_callee(kam, workdir, port, user, ua_ip=UA_B, transport=transport, uas=uas)


def wait_binding(registrar: Kamailio, user: str, callee: SippRun) -> dict:
    return actors.wait_bindings(registrar, user, [callee])[0]


def call(kam: Kamailio, workdir: Path, port: int, callee: str, scenario: str = "uac.xml", **keys: str) -> SippResult:
    return actors.call(kam, workdir, port, callee, ua_ip=UA_A, scenario=scenario, **keys)


def path_token(binding: dict) -> str:
    return parse_name_addr(binding["Path"]).sip_uri.user or ""


@pytest.mark.parametrize("transport", ["tcp", "udp"])
@pytest.mark.parametrize("hangup", ["caller", "callee"])
def test_call_reaches_callee_over_its_registered_flow(topology, workdir, local_port, transport, hangup):
    """RFC 5626 §5.3.1: the edge sends over the flow of the token; in-dialog requests
    (ACK, re-INVITE, BYE both ways) follow the token Record-Routes (§5.3.2)."""
    user = f"bob-{transport}-{hangup}"
    edge1 = topology["edge1"]
    connects_before = tcp_stat(edge1, "connect_success")
    callee = start_callee(edge1, workdir, local_port, user, transport=transport,
                          uas="uas.xml" if hangup == "caller" else "uas_bye.xml")
    binding = wait_binding(topology["registrar"], user, callee)
    flow = CODEC.decode(path_token(binding)).flow
    assert flow is not None and flow.remote_ip == UA_B and flow.transport == transport
    if transport == "tcp":
        [conn] = [c for c in edge1.rpc("core.tcp_list") if c["src_ip"] == UA_B and c["src_port"] == flow.remote_port]
        assert conn["id"] == flow.conn_id, "token names the very TCP connection B opened"
    else:
        assert flow.remote_port == local_port

    caller = call(topology["edge2"], workdir, local_port + 500, user,
                  "uac.xml" if hangup == "caller" else "uac_wait_bye.xml")
    record_routes = actors.completed_call_routes(caller, user, hangup)
    edge1_entries = [u for u in record_routes if u.host == net(2)]
    assert edge1_entries and all(CODEC.decode(u.user or "").flow == flow for u in edge1_entries)
    if transport == "tcp":
        assert len(edge1_entries) == 2, "double Record-Route where the edge changes transport"
    # the caller's side (§5.3.2, compliance A1.7/A2.8/D11): A sent ;ob in its Contact as
    # first hop, so edge2's Record-Route carries the token of A's own UDP flow, and the
    # callee's BYE (uac_wait_bye) reached A over it
    caller_flow = Flow("udp", net(3), 5060, UA_A, local_port + 500, 0)
    edge2_entries = [u for u in record_routes if u.host == net(3)]
    assert edge2_entries and all(CODEC.decode(u.user or "").flow == caller_flow for u in edge2_entries), \
        [str(u) for u in edge2_entries]

    callee_result = callee.wait(20)
    assert callee_result.returncode == 0, describe(callee_result)
    assert "call ended" in callee_result.log
    assert tcp_stat(edge1, "connect_success") == connects_before, "the edge opened a connection toward the UA"


def test_closed_tcp_flow_gets_430_from_edge_and_480_for_the_caller(topology, workdir, local_port):
    """RFC 5626 §5.3.1: flow gone -> 430 from the edge, no new connection; the home
    proxy never passes 430 to the caller (§11.5)."""
    user = "bob-gone"
    edge1 = topology["edge1"]
    callee = start_callee(edge1, workdir, local_port, user)
    binding = wait_binding(topology["registrar"], user, callee)
    flow = CODEC.decode(path_token(binding)).flow
    assert flow is not None
    callee.kill()  # SIGKILL: the kernel closes B's TCP connection
    callee.wait()
    deadline = time.monotonic() + 10
    while any(c["id"] == flow.conn_id for c in edge1.rpc("core.tcp_list")):
        assert time.monotonic() < deadline, "edge never noticed the closed connection"
        time.sleep(0.05)
    attempts_before = tcp_stat(edge1, "connect_success") + tcp_stat(edge1, "connect_failed")

    # as the home proxy would send it: the stored Path as Route
    direct = sipp("caller/uac_final.xml", f"{edge1.addr}:{edge1.port}", workdir=workdir, local_ip=CORE,
                  local_port=local_port + 1, timeout=10,
                  keys={"callee": user, "domain": "example.com", "user": "core",
                        "ruri": binding["Address"], "extra": f"Route: {binding['Path']}"})
    assert direct.value("final") == "430"
    # a Request-URI our parser refuses (port 0, as SIPp writes it with -p 0) is no
    # reason for a 400: the Route decides (found by the benchmark, not by a test)
    odd_ruri = sipp("caller/uac_final.xml", f"{edge1.addr}:{edge1.port}", workdir=workdir, local_ip=CORE,
                    local_port=local_port + 3, timeout=10,
                    keys={"callee": user, "domain": "example.com", "user": "core",
                          "ruri": f"sip:{user}@{UA_B}:0", "extra": f"Route: {binding['Path']}"})
    assert odd_ruri.value("final") == "430"

    through_home = call(topology["edge2"], workdir, local_port + 2, user, "uac_final.xml",
                        ruri=f"sip:{user}@example.com", extra="X-Case: via-home")
    assert through_home.value("final") == "480"
    attempts_after = tcp_stat(edge1, "connect_success") + tcp_stat(edge1, "connect_failed")
    assert attempts_after == attempts_before, "the edge tried to connect toward the UA"
    assert "is gone, no new connection opened" in edge1.new_log()


def test_ack_of_a_refusal_is_absorbed_at_each_edge_and_the_refusal_not_repeated(topology, workdir, local_port):
    """RFC 3261 §17.2.1, §16.7 (S13) through edge2, the registrar and edge1: the
    caller hears the callee's 486 once, and the callee's ACK is edge1's own."""
    user = "bob-refuses"
    callee = start_callee(topology["edge1"], workdir, local_port, user, uas="uas_busy.xml")
    wait_binding(topology["registrar"], user, callee)
    result = call(topology["edge2"], workdir, local_port + 1, user, "uac_refused.xml")
    actors.assert_refusal_acked_hop_by_hop(result, callee.wait(20), topology["edge1"].addr)


def one_char_changed(token: str) -> str:
    index = len(token) // 2
    return token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1:]


def test_forged_tokens_get_403(topology, workdir, local_port):
    """RFC 5626 §5.3.1: a tampered token SHOULD get 403; so does one from another key."""
    edge1 = topology["edge1"]
    rogue = start(edge(workdir, "edge-other-key", net(4), topology["registrar"].uri, key=OTHER_KEY))
    try:
        callee = start_callee(rogue, workdir, local_port, "bob-rogue")
        binding = wait_binding(topology["registrar"], "bob-rogue", callee)
        callee.kill()
        callee.wait()
    finally:
        stop(rogue)
    foreign = path_token(binding)
    assert CODEC.decode(foreign).verdict is Verdict.FORGED
    own = sipp("register_expect", f"{edge1.addr}:{edge1.port}", workdir=workdir, local_ip=UA_B,
               local_port=local_port + 1, auth=subscriber("bob-own"),
               keys={"user": "bob-own", "domain": "example.com", "expires": "600", "supported": "path, outbound",
                     "extra": "X-Case: own", "cseq": "1",
                     "contact": f'<sip:bob-own@{UA_B}:{local_port + 1};ob>;+sip.instance="<{instance(1)}>";reg-id=1'})
    own_token = parse_name_addr(own.value("path")).sip_uri.user or ""
    for token in (one_char_changed(own_token), foreign):
        result = sipp("caller/uac_final.xml", f"{edge1.addr}:{edge1.port}", workdir=workdir, local_ip=CORE,
                      local_port=local_port + 2, timeout=10,
                      keys={"callee": "bob", "domain": "example.com", "user": "core",
                            "ruri": f"sip:bob@{UA_B}:{local_port + 1}",
                            "extra": f"Route: <sip:{token}@{net(2)};lr;ob>"})
        assert result.value("final") == "403", token
    assert "forged flow token" in edge1.log()


BAD_ROUTES = [
    pytest.param(f"Route: <sip:abc@{net(2)};lr;ob>", "403", id="garbage-token-is-a-damaged-token"),
    pytest.param(f"Route: <sip:@{net(2)};lr;ob>", "404", id="empty-token"),
    pytest.param("Route: <sip:" + "A" * 1100 + f"@{net(2)};lr;ob>", "400", id="oversized-token"),
    # a Route set leading past the edge to another hop: refused, no longer dropped (issue 13 item 9)
    pytest.param("Route: <sip:" + "A" * 36 + f"@{net(99)};lr>", "403", id="token-in-foreign-route"),
    pytest.param("Route: <sip:" + "A" * 36 + f"@{net(2)}>", "403", id="forged-token-without-lr"),
    pytest.param(f"Route: <sip:abc@{net(2)}>", "403", id="garbage-without-lr-is-a-damaged-token"),
]


@pytest.mark.parametrize(("route", "status"), BAD_ROUTES)
def test_bad_routes_get_a_defined_answer(topology, workdir, local_port, route, status):
    """Garbage, empty, oversized tokens, foreign Routes, Routes without ;lr: a defined
    reply (403 for a Route set leading away from the farm) or ordinary routing
    (here: on to the home proxy, which knows no such user)."""
    edge1 = topology["edge1"]
    result = sipp("caller/uac_final.xml", f"{edge1.addr}:{edge1.port}", workdir=workdir, local_ip=UA_A,
                  local_port=local_port, timeout=10, auth=subscriber("alice"),
                  keys={"callee": "nobody", "domain": "example.com", "user": "alice",
                        "ruri": "sip:nobody@example.com", "extra": route})
    assert result.value("final") == status
    assert "Traceback" not in edge1.new_log()


def read_message(conn, what: str) -> str:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        assert chunk, f"connection closed before {what}: {data!r}"
        data += chunk
    return data.decode()


def header(message: str, name: str) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in message.split("\r\n")[1:]
            if line.split(":", 1)[0].strip().lower() == name.lower()]


def test_strict_router_upstream_request_uri_is_restored_and_sent_over_the_flow(topology):
    """RFC 3261 §16.4 (C1): a strict router upstream puts our Record-Route URI (with
    the flow token) in the Request-URI and the remote target last in Route. The
    edge restores the Request-URI from the last Route and still sends over the
    token's flow (RFC 5626 §5.3): the UA's Contact here is unreachable."""
    edge1 = topology["edge1"]
    contact = f"<sip:strict@{net(99)}:5999;transport=tcp;ob>"
    with socket.create_connection((edge1.addr, edge1.port), timeout=5, source_address=(UA_B, 0)) as flow:
        ip, port = flow.getsockname()
        def register(cseq: int, credentials: str = "") -> str:
            flow.sendall((f"REGISTER sip:example.com SIP/2.0\r\n"
                          f"Via: SIP/2.0/TCP {ip}:{port};branch=z9hG4bK-strict-r{cseq}\r\n"
                          "Max-Forwards: 70\r\nFrom: <sip:strict@example.com>;tag=s1\r\n"
                          "To: <sip:strict@example.com>\r\n"
                          f"Call-ID: strict-reg@{ip}\r\nCSeq: {cseq} REGISTER\r\n{credentials}"
                          f'Contact: {contact};+sip.instance="<{instance(99)}>";reg-id=1\r\n'
                          "Expires: 600\r\nSupported: path, outbound\r\nContent-Length: 0\r\n\r\n").encode())
            return read_message(flow, "the answer to REGISTER")

        answer = register(1)
        assert answer.startswith("SIP/2.0 401 "), answer
        # answer the challenge as a UA would (RFC 3261 §22.2)
        answer = register(2, authorization(challenges(answer)[0], "REGISTER", "sip:example.com",
                                           *subscriber("strict")) + "\r\n")
        assert answer.startswith("SIP/2.0 200 "), answer
        token = parse_name_addr(header(answer, "Path")[0]).sip_uri.user
        target = f"sip:strict@{net(99)}:5999;transport=tcp"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as core:
            core.bind((CORE, 0))
            core.settimeout(5)
            cip, cport = core.getsockname()
            core.sendto((f"INFO sip:{token}@{net(2)};lr SIP/2.0\r\n"
                         f"Via: SIP/2.0/UDP {cip}:{cport};branch=z9hG4bK-strict-i\r\nRoute: <{target}>\r\n"
                         "Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a1\r\n"
                         "To: <sip:strict@example.com>;tag=b1\r\nCall-ID: strict-dialog@core\r\nCSeq: 2 INFO\r\n"
                         "Content-Length: 0\r\n\r\n").encode(), (edge1.addr, edge1.port))
            request = read_message(flow, "the INFO over the flow")
            assert request.startswith(f"INFO {target} SIP/2.0\r\n"), request
            assert header(request, "Route") == [], "the restored target stayed in Route"
            vias = "".join(f"Via: {v}\r\n" for v in header(request, "Via"))
            reply = "".join(f"{n}: {header(request, n)[0]}\r\n" for n in ("From", "To", "Call-ID", "CSeq"))
            flow.sendall(f"SIP/2.0 200 OK\r\n{vias}{reply}Content-Length: 0\r\n\r\n".encode())
            data, _ = core.recvfrom(4096)
            assert data.startswith(b"SIP/2.0 200 "), data


def test_token_whose_connection_id_now_belongs_to_another_ua_gets_430(topology, workdir, local_port):
    """Kamailio sends by connection id alone and numbers connections from 1 again
    after a restart: a stale token (still signed right) whose id now names
    another UA's connection must get 430, never reach that other UA (RFC 5626
    §5.3.1). Built here without a restart: B's flow with C's connection id."""
    edge1 = topology["edge1"]
    b = start_callee(edge1, workdir, local_port, "bob-stale")
    c = actors.start_callee(edge1, workdir, local_port + 1, "carl-now", ua_ip=net(21))
    try:
        b_binding = wait_binding(topology["registrar"], "bob-stale", b)
        c_binding = wait_binding(topology["registrar"], "carl-now", c)
        b_flow = CODEC.decode(path_token(b_binding)).flow
        c_flow = CODEC.decode(path_token(c_binding)).flow
        assert b_flow is not None and c_flow is not None and b_flow.conn_id != c_flow.conn_id
        stale = CODEC.encode(dataclasses.replace(b_flow, conn_id=c_flow.conn_id))
        route = b_binding["Path"].replace(path_token(b_binding), stale)
        direct = sipp("caller/uac_final.xml", f"{edge1.addr}:{edge1.port}", workdir=workdir, local_ip=CORE,
                      local_port=local_port + 2, timeout=10,
                      keys={"callee": "bob-stale", "domain": "example.com", "user": "core",
                            "ruri": b_binding["Address"], "extra": f"Route: {route}"})
        assert direct.value("final") == "430", direct.messages[-2000:]
        assert "is gone, no new connection opened" in edge1.new_log()
    finally:
        b.kill()
        c.kill()
