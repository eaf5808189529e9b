"""Keepalives on real Kamailio (RFC 5626 §4.4, §5.4, §8; issue 4).

A raw TCP client sends the double-CRLF ping and reads the single-CRLF pong; a
raw UDP client sends a STUN Binding Request (RFC 5389) to the SIP port and reads
the XOR-MAPPED-ADDRESS back.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from actors import start_callee, wait_bindings, wait_until
from digest import authorization, challenges
from harness import Kamailio
from topology import edge, net, registrar, single, start, stop, subscriber

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
XOR_MAPPED_ADDRESS = 0x0020


@pytest.fixture(scope="module")
def single_server(workdir) -> Iterator[Kamailio]:
    kam = start(single(workdir, name="single-ka", addr=net(70)))
    yield kam
    stop(kam)


def servers(topology, single_server) -> dict[str, Kamailio]:
    return {"edge": topology["edge1"], "registrar": topology["registrar"], "single": single_server}


@pytest.mark.parametrize("role", ["edge", "registrar", "single"])
def test_double_crlf_ping_gets_single_crlf_pong(topology, single_server, role):
    """RFC 5626 §5.4 (A2.10, A5.1): answer CRLFCRLF with CRLF at once."""
    kam = servers(topology, single_server)[role]
    with socket.create_connection((kam.addr, kam.port), timeout=5, source_address=(net(71), 0)) as conn:
        conn.sendall(b"\r\n\r\n")
        assert conn.recv(16) == b"\r\n"
        conn.sendall(b"\r\n\r\n")  # and again on the same flow
        assert conn.recv(16) == b"\r\n"


def stun_binding_request(transaction: bytes) -> bytes:
    return struct.pack("!HHI", BINDING_REQUEST, 0, MAGIC_COOKIE) + transaction


def xor_mapped_address(response: bytes, transaction: bytes) -> tuple[str, int]:
    kind, length, cookie = struct.unpack_from("!HHI", response)
    assert kind == BINDING_SUCCESS and cookie == MAGIC_COOKIE
    assert response[8:20] == transaction, "transaction id must be echoed"
    offset = 20
    while offset < 20 + length:
        attr, attr_len = struct.unpack_from("!HH", response, offset)
        value = response[offset + 4: offset + 4 + attr_len]
        if attr == XOR_MAPPED_ADDRESS:
            family, xport = struct.unpack_from("!xBH", value)
            assert family == 0x01, "IPv4 expected"
            (xaddr,) = struct.unpack_from("!I", value, 4)
            return socket.inet_ntoa(struct.pack("!I", xaddr ^ MAGIC_COOKIE)), xport ^ (MAGIC_COOKIE >> 16)
        offset += 4 + attr_len + (-attr_len % 4)
    raise AssertionError("no XOR-MAPPED-ADDRESS in the STUN response")


@pytest.mark.parametrize("role", ["edge", "registrar", "single"])
def test_stun_binding_request_on_the_sip_udp_port(topology, single_server, role):
    """RFC 5626 §5.4 / §8 (A5.3): STUN answered on the SIP UDP port with the
    address the request came from."""
    kam = servers(topology, single_server)[role]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((net(72), 0))
        sock.settimeout(5)
        transaction = os.urandom(12)
        sock.sendto(stun_binding_request(transaction), (kam.addr, kam.port))
        response, _ = sock.recvfrom(2048)
        assert xor_mapped_address(response, transaction) == sock.getsockname()


def register_query(conn: socket.socket, kam: Kamailio, user: str, cseq: int = 1, credentials: str = "") -> bytes:
    """A REGISTER without Contact (fetch the bindings, RFC 3261 §10.2.3) over
    ``conn``; ``credentials``: an Authorization line answering a 401."""
    ip, port = conn.getsockname()
    return (f"REGISTER sip:example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/TCP {ip}:{port};branch=z9hG4bK-crlf-{user}-{cseq}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{user}@example.com>;tag=crlf\r\nTo: <sip:{user}@example.com>\r\n"
            f"Call-ID: crlf-{user}@{ip}\r\nCSeq: {cseq} REGISTER\r\nSupported: path, outbound\r\n"
            + (f"{credentials}\r\n" if credentials else "") + "Content-Length: 0\r\n\r\n").encode()


def read_response(conn: socket.socket) -> bytes:
    data = b""
    while b"SIP/2.0" not in data or b"\r\n\r\n" not in data[data.index(b"SIP/2.0"):]:
        chunk = conn.recv(4096)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


@pytest.mark.parametrize("role", ["edge", "registrar", "single"])
@pytest.mark.parametrize("prefix", [b"\r\n", b"\r\n\r\n", b"\r\n\r\n\r\n"], ids=["crlf", "ping", "ping-crlf"])
def test_crlf_before_a_start_line_is_ignored_on_a_stream(topology, single_server, role, prefix):
    """RFC 3261 §7.5 (C5): CRLFs before a start line on TCP are skipped (a double one
    is a keepalive ping, answered with a CRLF pong, RFC 5626 §4.4.1); the request
    after them is answered."""
    kam = servers(topology, single_server)[role]
    with socket.create_connection((kam.addr, kam.port), timeout=5, source_address=(net(71), 0)) as conn:
        user = f"crlf-{role}-{len(prefix)}"
        conn.sendall(prefix + register_query(conn, kam, user))
        response = read_response(conn)
        pong = b"\r\n" if len(prefix) >= 4 else b""
        # the request after the CRLFs is answered: with the digest challenge (RFC 3261 §22.2) ...
        assert response.startswith(pong + b"SIP/2.0 401 "), response
        [challenge] = challenges(response.decode())
        # ... which a UA answers over the same connection: 200 with the bindings (none)
        conn.sendall(register_query(conn, kam, user, 2, authorization(challenge, "REGISTER", "sip:example.com",
                                                                      *subscriber(user))))
        answered = read_response(conn)
    assert answered.startswith(b"SIP/2.0 200 "), answered


def test_the_edge_keeps_a_flow_by_the_registrars_flow_timer(workdir, local_port, callees):
    """RFC 5626 §5.4 (issue 13 item 9): the device keeps its flow alive by the
    Flow-Timer of the registrar's 2xx, so the edge closes a silent flow after
    that value plus the grace, not after its own configured Flow-Timer (25 s
    here; the edge waited 27 s before the fix, the registrar said 1)."""
    reg = start(registrar(workdir, name="reg-ft", addr=net(123), defines={"KO_FLOW_TIMER": "1"}))
    kam = edge(workdir, "edge-ft", net(124), reg.uri)
    kam.yaml_text = kam.yaml_text.replace("grace_seconds: 20", "grace_seconds: 2")
    start(kam)
    try:
        callee = start_callee(kam, workdir, local_port, "ft-bob", ua_ip=net(125))
        callees.append(callee)
        wait_bindings(reg, "ft-bob", [callee])
        registered = time.monotonic()
        wait_until(lambda: not [c for c in kam.rpc("core.tcp_list") if c["src_ip"] == net(125)],
                   "the edge closed the silent flow", timeout=15)
        idle = time.monotonic() - registered
        print(f"flow closed {idle:.1f}s after registering (registrar's Flow-Timer 1 s + grace 2 s)")
        assert idle >= 2.5, "the flow was closed before Flow-Timer + grace"
    finally:
        stop(kam)
        stop(reg)
