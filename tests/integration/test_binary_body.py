"""A body that is not UTF-8 is forwarded byte for byte (docs/parsing.md: the
body of a message is never read by our Python).

A raw UDP "device" registers an outbound flow (RFC 5626: ``Supported: path,
outbound``, ``+sip.instance``, ``reg-id=1``); another raw socket sends it a
MESSAGE whose body is every byte value 0..255 (NULs, CR, LF, bytes that are no
UTF-8), ``Content-Type: application/octet-stream``, the right Content-Length.
The device must receive the very same body and its 200 must reach the sender:
(a) edge (cfg/edge.cfg) in front of a registrar, (b) the single server.

Digest authentication is on: both raw sockets answer the challenge as a UA
would (the REGISTER's 401 in the realm of its To domain, the MESSAGE's 407 in
that of its From domain), sending the request again with credentials and CSeq
+ 1; the MESSAGE that is forwarded is the authenticated one, its credentials
consumed (the device never sees them).
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fuzzgen import with_credentials
from harness import Kamailio
from topology import edge, net, registrar, single, start, stop, subscriber

BODY = bytes(range(256))
AOR_USER = "binary"
GUARD = 15.0  # seconds: only bounds a failure (an awaited message that never comes)


@pytest.fixture(scope="module")
def edge_and_registrar(workdir: Path) -> Iterator[list[Kamailio]]:
    reg = registrar(workdir, name="registrar-binary", addr=net(140))
    front = edge(workdir, "edge-binary", net(141), reg.uri)
    started: list[Kamailio] = []
    try:
        for kam in (reg, front):
            started.append(start(kam))
        yield [front, reg]
    finally:
        for kam in started:
            stop(kam)


@pytest.fixture(scope="module")
def single_server(workdir: Path) -> Iterator[list[Kamailio]]:
    kam = start(single(workdir, name="single-binary", addr=net(144)))
    yield [kam]
    stop(kam)


class RawSocket:
    """A UDP socket on ``ip`` that writes SIP by hand and reads what comes."""

    def __init__(self, ip: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, 0))
        self.ip, self.port = self.sock.getsockname()

    def send(self, kam: Kamailio, data: bytes) -> None:
        self.sock.sendto(data, (kam.addr, kam.port))

    def receive(self, wanted) -> tuple[bytes, tuple[str, int]]:
        """The first datagram for which ``wanted(data)`` holds."""
        deadline = time.monotonic() + GUARD
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data, peer = self.sock.recvfrom(65536)
            except TimeoutError:
                break
            if wanted(data):
                return data, peer
        raise AssertionError(f"{self.ip}:{self.port}: nothing wanted arrived in {GUARD}s")

    def close(self) -> None:
        self.sock.close()


def final_answer_to(call_id: str):
    def wanted(data: bytes) -> bool:
        found = re.match(rb"SIP/2\.0 (\d{3})", data)
        return bool(found) and int(found.group(1)) >= 200 and f"Call-ID: {call_id}".encode() in data
    return wanted


def status(data: bytes) -> int:
    return int(data[8:11])


def register(device: RawSocket, kam: Kamailio) -> None:
    call_id = f"binary-reg-{device.port}@{device.ip}"
    request = "\r\n".join([
        f"REGISTER sip:{kam.addr}:{kam.port} SIP/2.0",
        f"Via: SIP/2.0/UDP {device.ip}:{device.port};rport;branch=z9hG4bK-binary-reg-{device.port}",
        "Max-Forwards: 70",
        f"From: <sip:{AOR_USER}@{kam.addr}>;tag=reg{device.port}",
        f"To: <sip:{AOR_USER}@{kam.addr}>",
        f"Call-ID: {call_id}",
        "CSeq: 1 REGISTER",
        "Supported: path, outbound",
        f'Contact: <sip:{AOR_USER}@{device.ip}:{device.port};ob>;+sip.instance="<urn:uuid:'
        f'00000000-0000-4000-8000-{device.port:012d}>";reg-id=1',
        "Expires: 600",
        "Content-Length: 0", "", ""]).encode()
    device.send(kam, request)
    challenge, _ = device.receive(final_answer_to(call_id))
    assert status(challenge) == 401, challenge.split(b"\r\n", 1)[0]
    device.send(kam, with_credentials(request, challenge, *subscriber(AOR_USER, kam.addr)))
    answer, _ = device.receive(final_answer_to(call_id))
    assert status(answer) == 200, answer.split(b"\r\n", 1)[0]


def message(sender: RawSocket, kam: Kamailio) -> tuple[bytes, str]:
    call_id = f"binary-msg-{sender.port}@{sender.ip}"
    head = "\r\n".join([
        f"MESSAGE sip:{AOR_USER}@{kam.addr} SIP/2.0",
        f"Via: SIP/2.0/UDP {sender.ip}:{sender.port};rport;branch=z9hG4bK-binary-msg-{sender.port}",
        "Max-Forwards: 70",
        f"From: <sip:sender@{sender.ip}>;tag=msg{sender.port}",
        f"To: <sip:{AOR_USER}@{kam.addr}>",
        f"Call-ID: {call_id}",
        "CSeq: 1 MESSAGE",
        "Content-Type: application/octet-stream",
        f"Content-Length: {len(BODY)}", "", ""]).encode()
    return head + BODY, call_id


def answer_200(device: RawSocket, request: bytes, peer: tuple[str, int]) -> None:
    head = request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    keep = [line for line in head if re.match(rb"(?i)(via|record-route|from|call-id|cseq)\s*:", line)]
    to = next(line for line in head if re.match(rb"(?i)to\s*:", line))
    device.sock.sendto(b"SIP/2.0 200 OK\r\n" + b"\r\n".join(keep) + b"\r\n" + to + b";tag=device\r\n"
                       b"Content-Length: 0\r\n\r\n", peer)


@pytest.mark.parametrize("topology_name", ["edge-registrar", "single"])
def test_binary_body_is_forwarded_unchanged(request, topology_name):
    """RFC 3261 §16.6: a proxy forwards the body as it came; every octet of
    a non-UTF-8 body reaches the registered device, and its 200 comes back."""
    if topology_name == "single":
        kams = request.getfixturevalue("single_server")
        device, sender = RawSocket(net(145)), RawSocket(net(146))
    else:
        kams = request.getfixturevalue("edge_and_registrar")
        device, sender = RawSocket(net(142)), RawSocket(net(143))
    kam = kams[0]  # where devices send: the edge, or the single server
    try:
        register(device, kam)
        data, call_id = message(sender, kam)
        sender.send(kam, data)
        challenge, _ = sender.receive(final_answer_to(call_id))
        assert status(challenge) == 407, challenge.split(b"\r\n", 1)[0]
        sender.send(kam, with_credentials(data, challenge, *subscriber("sender", sender.ip)))
        received, peer = device.receive(lambda d: d.startswith(b"MESSAGE ") and call_id.encode() in d)
        assert peer == (kam.addr, kam.port), f"the MESSAGE came from {peer}, not over the device's flow"
        head, _, body = received.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^(?:Content-Length|l)\s*:\s*(\d+)\s*$", head)
        assert length and int(length.group(1)) == len(BODY), head.decode(errors="replace")
        assert re.search(rb"(?im)^(?:Content-Type|c)\s*:\s*application/octet-stream\s*$", head)
        assert not re.search(rb"(?im)^Proxy-Authorization\s*:", head), "the caller's credentials reached the device"
        first_difference = next((i for i, (a, b) in enumerate(zip(body, BODY, strict=False)) if a != b),
                                min(len(body), len(BODY)))
        assert body == BODY, f"body changed: {len(body)} octets, first difference at octet {first_difference}"
        answer_200(device, received, peer)
        answer, _ = sender.receive(final_answer_to(call_id))
        assert status(answer) == 200, answer.split(b"\r\n", 1)[0]
    finally:
        device.close()
        sender.close()
    for each in kams:
        assert "Traceback" not in each.log(), f"{each.name} logged a Python traceback"
