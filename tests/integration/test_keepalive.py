"""Keepalives on real Kamailio (RFC 5626 §4.4, §5.4, §8; issue 4).

A raw TCP client sends the double-CRLF ping and reads the single-CRLF pong; a
raw UDP client sends a STUN Binding Request (RFC 5389) to the SIP port and reads
the XOR-MAPPED-ADDRESS back.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator

import pytest

from harness import Kamailio
from topology import net, single, start, stop

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
