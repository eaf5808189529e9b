"""RFC 4475 torture messages (tests/data/rfc4475/, tests/rfc4475.py) against every role.

Every message goes over UDP to an edge (with its registrar), a registrar and a
single server; the framing ones (Content-Length) go over TCP as well. A valid
message must be processed: a final answer that is not 400 or 500 (404, 403,
420, 483, 200 ... as the role's policy says; with digest authentication on, a
REGISTER's 401 or an initial request's 407 is such a defined answer too). An invalid one must get a 4xx, or
be dropped by Kamailio's core before the script (its log then says so). A
response is never answered. Never a 500, never a Python traceback, and every
Kamailio still answers an OPTIONS after the set.

RFC 4475 §2: the messages name example domains and addresses. Everything here
goes to our own Kamailios on loopback, whose /etc/resolv.conf (a private copy)
names a DNS sink on loopback that records every query and answers REFUSED: a
role that tries to resolve a name a message wrote is caught, and no query
leaves the machine. Between two messages the bindings a REGISTER left are
removed, so each message meets the same empty location table.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from digest import challenges
from fuzzgen import ack_for, with_credentials
from harness import Kamailio, ProcessError
from outbound.errors import CredentialError
from rfc4475 import BY_NAME, ROLES, TORTURE, Torture, load
from topology import edge as edge_role
from topology import net, registrar, single, start, stop, subscriber

CLIENT = net(133)
SINGLE = net(134)
REGISTRAR = net(135)
EDGE = net(136)
DNS_SINK = net(137)
GUARD = 15.0  # seconds: only bounds a failure (an awaited answer or log line that never comes)
STATUS = re.compile(rb"^SIP/2\.0 (\d{3})", re.M)
CORE_REJECTS = ("core parsing of SIP message failed", "required headers not found in request",
                "no via found in request", "alas, parse_headers failed", "bad header field")
STRAY_REPLY = "matches no transaction"  # base.ksr_reply_route's line for a reply of no transaction


class DnsSink:
    """A DNS server on DNS_SINK:53 that answers every query REFUSED and keeps its name."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((DNS_SINK, 53))
        self.sock.settimeout(0.2)
        self.names: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def qname(query: bytes) -> str:
        labels, at = [], 12
        while at < len(query) and query[at]:
            labels.append(query[at + 1:at + 1 + query[at]].decode(errors="replace"))
            at += 1 + query[at]
        return ".".join(labels)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            if len(query) < 12:
                continue
            self.names.append(self.qname(query))
            # same id and question, QR=1 RD=1 RA=1, RCODE=5 (REFUSED), no records
            self.sock.sendto(query[:2] + b"\x81\x85" + query[4:6] + b"\0" * 6 + query[12:], peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture(scope="module")
def dns_sink() -> Iterator[DnsSink]:
    sink = DnsSink()
    yield sink
    sink.close()


@pytest.fixture(scope="module")
def roles(workdir: Path, dns_sink: DnsSink) -> Iterator[dict[str, Kamailio]]:
    etc = {"resolv.conf": f"nameserver {DNS_SINK}\n"}
    reg = registrar(workdir, name="registrar-4475", addr=REGISTRAR, etc_files=etc)
    kams = {"registrar": reg,
            "edge": edge_role(workdir, "edge-4475", EDGE, reg.uri, etc_files=etc),
            "single": single(workdir, name="single-4475", addr=SINGLE, etc_files=etc)}
    started: list[Kamailio] = []
    try:
        for kam in kams.values():
            started.append(start(kam))
        yield kams
    finally:
        for kam in started:
            stop(kam)


def watched(roles: dict[str, Kamailio], role: str) -> list[Kamailio]:
    """The Kamailios a message to ``role`` reaches: an edge relays to its registrar."""
    return [roles["edge"], roles["registrar"]] if role == "edge" else [roles[role]]


def clear_bindings(roles: dict[str, Kamailio]) -> None:
    for kam in (roles["registrar"], roles["single"]):
        for aor in {b["AoR"] for b in kam.bindings()}:
            try:
                kam.rpc("ul.rm", "location", aor)
            except ProcessError:
                pass  # gone meanwhile (expired)


class Marks:
    """Where the logs of some Kamailios stood; what they said since."""

    def __init__(self, kams: list[Kamailio]) -> None:
        self.kams = kams
        self.at = {kam.name: len(kam.log()) for kam in kams}

    def since(self) -> str:
        return "".join(kam.log()[self.at[kam.name]:] for kam in self.kams)

    def wait_for(self, needles: tuple[str, ...]) -> str:
        deadline = time.monotonic() + GUARD
        while True:
            log = self.since()
            if any(needle in log for needle in needles) or time.monotonic() > deadline:
                return log
            time.sleep(0.02)  # polling a log file for an awaited line, not a sync sleep


def call_id(data: bytes) -> bytes | None:
    found = re.search(rb"^(?:Call-ID|i)[ \t]*:[ \t]*(\S+)", data, re.M | re.I)
    return found.group(1) if found else None


def final_answer(sock: socket.socket, wanted: bytes | None) -> bytes | None:
    """The first final answer on ``sock`` whose Call-ID is ``wanted``."""
    deadline = time.monotonic() + GUARD
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            reply = sock.recv(65535)
        except TimeoutError:
            return None
        codes = [int(c) for c in STATUS.findall(reply)]
        if codes and codes[0] >= 200 and (wanted is None or call_id(reply) == wanted):
            return reply
    return None


def final_reply(sock: socket.socket, wanted: bytes | None) -> int | None:
    reply = final_answer(sock, wanted)
    return int(STATUS.findall(reply)[0]) if reply else None


def expected(torture: Torture, role: str, code: int | None, log: str) -> str:
    """What is wrong with answer ``code`` to ``torture`` at ``role`` ("" if nothing)."""
    said = f"{torture.title_line}, {'valid' if torture.valid else 'invalid'}, at {role}: "
    if torture.response or torture.core_drops:
        if code is not None:
            return said + f"answered {code}; a {'response' if torture.response else 'core drop'} gets no answer"
        if torture.response:
            return "" if STRAY_REPLY in log or any(line in log for line in CORE_REJECTS) else \
                said + "no log line says the response was handled"
        return "" if any(line in log for line in CORE_REJECTS) else \
            said + f"no answer and no core log line ({torture.core_drops})"
    if code is None:
        return said + "no final answer"
    if code == 500:
        return said + "500"
    if torture.rfc_code is not None:
        return "" if code == torture.rfc_code else said + f"{code}, RFC 4475 says {torture.rfc_code}"
    if torture.registrar_refuses and code == 400:
        # documented: Kamailio's registrar module (at the edge: the registrar's
        # answer relayed, since a REGISTER without Supported: path is served)
        return ""
    if torture.sanity_refuses and code == 400:
        return ""  # documented: Kamailio's sanity module
    if torture.valid:
        return "" if code != 400 or torture.rfc_allows_400 else said + "400 to a valid message"
    return "" if 400 <= code < 500 else said + f"{code}, an invalid message needs a 4xx"


def cases() -> list:
    out = []
    for role in ROLES:
        for torture in TORTURE:
            out.append(pytest.param(role, torture, id=f"{role}-{torture.name}"))
    return out


@pytest.mark.parametrize(("role", "torture"), cases())
def test_torture_message_over_udp(roles, dns_sink, role, torture):
    clear_bindings(roles)
    kams = watched(roles, role)
    marks = Marks(kams)
    queries = len(dns_sink.names)
    data = load(torture.name)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((CLIENT, 0))
        sock.sendto(data, (roles[role].addr, roles[role].port))
        if torture.response or torture.core_drops:
            log = marks.wait_for(CORE_REJECTS + (STRAY_REPLY,))
            sock.setblocking(False)
            try:
                got = sock.recv(65535)
                code = int(STATUS.findall(got)[0]) if STATUS.findall(got) else 0
            except BlockingIOError:
                code = None
        else:
            reply = final_answer(sock, call_id(data))
            code = int(STATUS.findall(reply)[0]) if reply else None
            if code in (401, 407):
                # the challenge is a defined answer; the message again with credentials
                # shows what the role's policy says of it (regbadct's 400, escnull's ...)
                authenticated = answer_challenge(sock, roles[role], data, reply)
                if authenticated is not None:
                    again = final_reply(sock, call_id(data))
                    problem = expected(torture, role, again, marks.since())
                    assert not problem, problem + " (with credentials)"
            log = marks.since()
    finally:
        sock.close()
    assert "Traceback" not in log, f"{torture.title_line} at {role}: a Python traceback"
    assert dns_sink.names[queries:] == [], f"{torture.title_line} at {role}: DNS queries for a name it wrote"
    problem = expected(torture, role, code, log)
    assert not problem, problem


def answer_challenge(sock: socket.socket, target: Kamailio, data: bytes, reply: bytes) -> bytes | None:
    """Send ``data`` again with credentials for its challenge (401: the To user,
    407: the From user, as subscribers of the challenge's realm), after the ACK
    of a 407 to an INVITE; None when the user is no name a subscriber can have
    (escnull's ``null-%00-null``): then the challenge is all there is to see."""
    [challenge, *_] = challenges(reply.decode(errors="replace"))
    field = rb"To|t" if int(reply[8:11]) == 401 else rb"From|f"
    found = re.search(rb"^(?:" + field + rb")[ \t]*:[^\r\n]*?sips?:([^@;>\s]+)@", data, re.M | re.I)
    if found is None:
        return None
    try:
        credentials = subscriber(found.group(1).decode(errors="replace"), challenge.realm)
    except CredentialError:
        return None
    if data.startswith(b"INVITE "):
        sock.sendto(ack_for(data, reply), (target.addr, target.port))
    again = with_credentials(data, reply, *credentials)
    sock.sendto(again, (target.addr, target.port))
    return again


MARKER = ("OPTIONS sip:marker@{host} SIP/2.0\r\nVia: SIP/2.0/TCP {client};branch=z9hG4bK-marker-{tag}\r\n"
          "Max-Forwards: 0\r\nTo: <sip:marker@{host}>\r\nFrom: <sip:marker@{client}>;tag={tag}\r\n"
          "Call-ID: marker-{tag}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


def marker(target: Kamailio, tag: str) -> bytes:
    """A request the role answers itself (483, Max-Forwards 0): it follows a
    message on the same TCP connection, so its answer says the message before
    it has been read and handled (one connection is read in order)."""
    return MARKER.format(host=target.addr, client=CLIENT, tag=tag).encode()


def read_stream(conn: socket.socket) -> tuple[bytes, bool]:
    """What arrives on ``conn`` until the peer closes it (then True)."""
    buf = b""
    deadline = time.monotonic() + GUARD
    while (left := deadline - time.monotonic()) > 0:
        conn.settimeout(left)
        try:
            data = conn.recv(65535)
        except TimeoutError:
            break
        except ConnectionResetError:
            return buf, True
        if not data:
            return buf, True
        buf += data
    return buf, False


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name", [t.name for t in TORTURE if t.tcp])
def test_content_length_framing_over_tcp(roles, role, name):
    """clerr: the INVITE is complete only when 9999 octets of body have come;
    then it is answered and the next request on the connection too. ncl, mcl01:
    the framing cannot be recovered; a request follows on the connection, and
    Kamailio must close the connection rather than find a message in what
    follows (it does so once the next header block ends: with the body alone it
    waits)."""
    torture = BY_NAME[name]
    target = roles[role]
    marks = Marks(watched(roles, role))
    data = load(name)
    with socket.create_connection((target.addr, target.port), timeout=GUARD, source_address=(CLIENT, 0)) as conn:
        if torture.tcp == "waits":
            body = data.split(b"\r\n\r\n", 1)[1]
            declared = int(re.search(rb"^Content-Length: (\d+)", data, re.M).group(1))
            conn.sendall(data + b"x" * (declared - len(body)) + marker(target, name))
            answers: dict[bytes, int] = {}
            buf = b""
            deadline = time.monotonic() + GUARD
            while len(answers) < 2 and time.monotonic() < deadline:
                conn.settimeout(max(deadline - time.monotonic(), 0.01))
                try:
                    chunk = conn.recv(65535)
                except TimeoutError:
                    break
                if not chunk:
                    break
                buf += chunk
                for part in re.split(rb"(?=^SIP/2\.0 )", buf, flags=re.M):
                    codes = STATUS.findall(part)
                    if codes and int(codes[0]) >= 200 and call_id(part):
                        answers[call_id(part)] = int(codes[0])
            assert answers.get(f"marker-{name}".encode()) == 483, f"{name} at {role}: the stream lost step: {answers}"
            code = answers.get(call_id(data))
            assert code is not None and code not in (400, 500), \
                f"{name} at {role}: the completed INVITE got {code}"
        else:
            conn.sendall(data + marker(target, name))
            got, closed = read_stream(conn)
            assert closed, f"{name} at {role}: the connection stays open after a framing error"
            assert f"marker-{name}".encode() not in got, \
                f"{name} at {role}: the stream was resynchronised onto the bytes after the message"
            codes = [int(c) for c in STATUS.findall(got)]
            assert all(400 <= c < 500 for c in codes), f"{name} at {role}: answered {codes}"
    assert "Traceback" not in marks.since()


@pytest.mark.parametrize("role", ROLES)
def test_broadcast_via_reply_is_dropped(roles, role):
    """bcast (§3.3.10): a 200 OK whose second Via is 255.255.255.255 must be
    dropped, never forwarded there. Sent over TCP with a marker behind it on the
    same connection: when the marker is answered, the 200 has been handled."""
    target = roles[role]
    marks = Marks(watched(roles, role))
    with socket.create_connection((target.addr, target.port), timeout=GUARD, source_address=(CLIENT, 0)) as conn:
        conn.sendall(load("bcast") + marker(target, "bcast"))
        got = b""
        deadline = time.monotonic() + GUARD
        while b"marker-bcast" not in got and time.monotonic() < deadline:
            conn.settimeout(max(deadline - time.monotonic(), 0.01))
            chunk = conn.recv(65535)
            if not chunk:
                break
            got += chunk
    assert b"marker-bcast" in got, f"bcast at {role}: the marker was not answered"
    log = marks.since()
    assert "Traceback" not in log
    assert "matches no transaction: dropped, its next Via names 255.255.255.255, no unicast address" in log
    sent = [line for line in log.splitlines() if "255.255.255.255" in line and "dropped" not in line]
    assert not sent, f"bcast at {role}: forwarded toward the broadcast address: {sent[0]}"


@pytest.mark.parametrize("role", ["registrar", "single"])
def test_registered_hostnames_are_never_resolved(roles, dns_sink, role):
    """regescrt (§3.3.14) registers sip:user@example.com with a hostname
    Contact; sdp01 (§3.3.15) then asks for that user. The Contact's name is the
    device's: docs/security.md says no role resolves it. Both are challenged
    first (401, 407) and sent again with credentials (user@example.com, the
    caller@example.net of sdp01's From), as a UA would: the REGISTER is saved and
    the INVITE looked up, so the binding with the name is really there to call."""
    clear_bindings(roles)
    target = roles[role]
    queries = len(dns_sink.names)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((CLIENT, 0))
        for name, user, domain, challenge in (("regescrt", "user", "example.com", 401),
                                              ("sdp01", "caller", "example.net", 407)):
            data = load(name)
            sock.sendto(data, (target.addr, target.port))
            reply = final_answer(sock, call_id(data))
            assert reply is not None and int(reply[8:11]) == challenge, f"{name} at {role}: {reply and reply[:40]}"
            if name == "sdp01":
                sock.sendto(ack_for(data, reply), (target.addr, target.port))
            sock.sendto(with_credentials(data, reply, *subscriber(user, domain)), (target.addr, target.port))
            code = final_reply(sock, call_id(data))
            assert code is not None and code != 500, f"{name} at {role}: {code}"
            if name == "regescrt":
                assert code == 200 and target.bindings("user"), f"regescrt at {role}: {code}, nothing stored"
    clear_bindings(roles)
    assert dns_sink.names[queries:] == [], f"{role} resolved {sorted(set(dns_sink.names[queries:]))}"


def test_every_role_still_answers_after_the_set(roles):
    """After all of the above, every Kamailio process group is alive and answers."""
    for role, kam in roles.items():
        assert kam.proc is not None and kam.proc.poll() is None, f"{role} exited"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((CLIENT, 0))
            ping = marker(kam, f"alive-{role}").replace(b"SIP/2.0/TCP", b"SIP/2.0/UDP")
            sock.sendto(ping, (kam.addr, kam.port))
            assert final_reply(sock, f"marker-alive-{role}".encode()) == 483, f"{role} does not answer"
    for kam in roles.values():
        assert "Traceback" not in kam.log(), f"{kam.name} logged a Python traceback"
