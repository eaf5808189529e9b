"""No open relay (issue 10; RFC 3261 §16.3 local policy, RFC 5626 §5.3.1, RFC 3327 §5.3).

An attacker on its own loopback address sends raw requests, as an attacker
would, to a real edge, registrar and single server; a sink on another loopback
address records every message that reaches it. Every variant gets a defined
answer and the sink stays empty; the legitimate ways (device -> farm -> device,
in-dialog both ways) keep working.

Digest authentication is on. What the edge refuses itself (a token from a
device, an in-dialog request toward anything but the farm) is refused before
any credentials matter. What the edge sends on to the farm meets the farm's
challenge first (407 for an initial request, 401 for a REGISTER); the attacker
then answers it as a UA would, with the credentials of its own subscriber
(``mallory``), so that the test still shows the policy behind the challenge:
404 for a user nobody registered, the registrar's Path refusal, the bound on
the AORs of one connection.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from actors import call, instance, start_callee, wait_bindings
from fuzzgen import ack_for, with_credentials
from harness import TEST_KEY, Kamailio, SippRun
from outbound.relay import MAX_AORS_PER_FLOW
from outbound.sipmsg import parse_name_addr
from outbound.tokens import FlowTokenCodec, parse_key
from topology import REGISTRAR_ADDR, net, single, start, stop, subscriber

ATTACKER = net(66)
UA_B = net(67)  # a registered device: the victim
UA_A = net(68)  # a caller
SINK = net(97)
SINK_PORT = 5099
CODEC = FlowTokenCodec([parse_key(TEST_KEY)])


class Sink:
    """Every UDP datagram and TCP connection that reaches SINK:SINK_PORT."""

    def __init__(self) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((SINK, SINK_PORT))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((SINK, SINK_PORT))
        self.tcp.listen(16)
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.udp.settimeout(0.1)
        self.tcp.settimeout(0.1)
        while not self._stop.is_set():
            try:
                data, _ = self.udp.recvfrom(65536)
                self.received.append(data)
            except TimeoutError:
                pass
            try:
                conn, _ = self.tcp.accept()
                self.received.append(b"TCP connection")
                conn.close()
            except TimeoutError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.udp.close()
        self.tcp.close()


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    found = Sink()
    yield found
    found.close()


class RawUA:
    """A UDP socket on ``ip`` that writes requests by hand (as SIPp cannot: LF
    line ends, made-up Vias) and reads the final answer."""

    def __init__(self, ip: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, 0))
        self.ip, self.port = self.sock.getsockname()
        self.n = 0
        self.last = ""  # the last final answer send() read

    def request(self, method: str, ruri: str, *, routes: tuple[str, ...] = (), extra_vias: tuple[str, ...] = (),
                to_tag: str | None = None, headers: tuple[str, ...] = (), eol: str = "\r\n") -> str:
        self.n += 1
        lines = [f"{method} {ruri} SIP/2.0",
                 f"Via: SIP/2.0/UDP {self.ip}:{self.port};rport;branch=z9hG4bK-relay-{self.port}-{self.n}",
                 *(f"Via: {via}" for via in extra_vias),
                 *(f"Route: {route}" for route in routes),
                 "Max-Forwards: 70", f"From: <sip:mallory@example.com>;tag=m{self.n}",
                 f"To: <sip:victim@example.com>{f';tag={to_tag}' if to_tag else ''}",
                 f"Call-ID: relay-{self.port}-{self.n}@{self.ip}", f"CSeq: {self.n} {method}",
                 f"Contact: <sip:mallory@{self.ip}:{self.port}>", *headers, "Content-Length: 0"]
        return eol.join(lines) + eol + eol

    def send(self, kam: Kamailio, message: str, timeout: float = 8.0) -> int:
        """Send ``message`` to ``kam``; the first final status code (0: none)."""
        self.sock.sendto(message.encode(), (kam.addr, kam.port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data, _ = self.sock.recvfrom(65536)
            except TimeoutError:
                break
            text = data.decode(errors="replace")
            if text.startswith("SIP/2.0 ") and not text[8:9] == "1":
                self.last = text
                return int(text[8:11])
        return 0

    def send_authenticated(self, kam: Kamailio, message: str, user: str) -> tuple[int, int]:
        """Send ``message``; when it is challenged (401/407), ACK a challenged INVITE
        and send it again with ``user``'s credentials and CSeq + 1, as a UA does.
        (the first final code, the final code after the credentials: 0 if none)."""
        first = self.send(kam, message)
        if first not in (401, 407):
            return first, 0
        request = message.encode()
        if message.startswith("INVITE "):
            self.sock.sendto(ack_for(request, self.last), (kam.addr, kam.port))
        again = with_credentials(request, self.last, *subscriber(user))
        return first, self.send(kam, again.decode())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def attacker() -> Iterator[RawUA]:
    ua = RawUA(ATTACKER)
    yield ua
    ua.close()


def hostport(kam: Kamailio) -> str:
    return f"{kam.addr}:{kam.port}"


SINK_URI = f"sip:toll@{SINK}:{SINK_PORT}"


ME = "<sip:{edge};lr>"
TO_SINK = f"<sip:{SINK}:{SINK_PORT};lr>"
FAKE_VIA = ("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-made-up",)
# (name, request arguments, the policy's answer) for every way to ask the edge to
# relay to the sink; {edge} and {reg} stand for their host:port. Initial requests
# from a device go to the farm, which challenges them (407) and, with the
# attacker's own valid credentials, knows no such user (404), unless a Route set
# leads on past the edge to another hop (403 at the edge); in-dialog ones
# toward anything but the farm get 403 at the edge, no challenge, and the farm
# relays only along its own sealed Record-Route (403 again).
EDGE_VARIANTS = [
    ("initial-1via-route-edge", {"method": "INVITE", "ruri": SINK_URI, "routes": (ME,)}, 404),
    ("initial-2via-route-edge", {"method": "INVITE", "ruri": SINK_URI, "routes": (ME,), "extra_vias": FAKE_VIA}, 404),
    ("initial-2via-no-route", {"method": "INVITE", "ruri": SINK_URI, "extra_vias": FAKE_VIA}, 404),
    # RFC 3261 §16.4: only our own Route entries come off; a set that goes on past
    # the edge must lead to the farm (issue 13 item 9: it was dropped, then 404)
    ("initial-2via-route-chain", {"method": "INVITE", "ruri": SINK_URI, "extra_vias": FAKE_VIA,
                                  "routes": (ME, TO_SINK)}, 403),
    ("initial-route-chain-to-sink", {"method": "INVITE", "ruri": SINK_URI, "routes": (ME, TO_SINK)}, 403),
    ("initial-route-on-to-the-farm", {"method": "INVITE", "ruri": SINK_URI, "routes": (ME, "<sip:{reg};lr>")}, 404),
    ("initial-2via-hostname", {"method": "INVITE", "ruri": "sip:toll@relay-target.invalid", "routes": (ME,),
                               "extra_vias": FAKE_VIA}, 404),
    ("initial-2via-lf", {"method": "INVITE", "ruri": SINK_URI, "routes": (ME,), "extra_vias": FAKE_VIA,
                         "eol": "\n"}, 404),
    ("dialog-route-to-sink", {"method": "BYE", "ruri": SINK_URI, "to_tag": "t1", "routes": (ME, TO_SINK)}, 403),
    ("dialog-ruri-sink", {"method": "INVITE", "ruri": SINK_URI, "to_tag": "t2", "routes": (ME,)}, 403),
    ("dialog-2via-ruri-sink", {"method": "INFO", "ruri": SINK_URI, "to_tag": "t3", "routes": (ME,),
                               "extra_vias": FAKE_VIA}, 403),
    ("dialog-foreign-top-route", {"method": "BYE", "ruri": SINK_URI, "to_tag": "t4", "routes": (TO_SINK,)}, 403),
    ("dialog-route-to-hostname", {"method": "BYE", "ruri": "sip:toll@relay-target.invalid", "to_tag": "t5",
                                  "routes": (ME, "<sip:relay-target.invalid;lr>")}, 403),
    ("dialog-lf", {"method": "BYE", "ruri": SINK_URI, "to_tag": "t6", "routes": (ME, TO_SINK), "eol": "\n"}, 403),
    ("dialog-via-farm", {"method": "BYE", "ruri": SINK_URI, "to_tag": "t7", "routes": (ME, "<sip:{reg};lr>")}, 403),
    ("dialog-via-farm-forged-seal", {"method": "BYE", "ruri": SINK_URI, "to_tag": "t8",
                                     "routes": (ME, "<sip:{reg};lr;ko=AAAAAAAAAAAA>")}, 403),
]


@pytest.mark.parametrize(("args", "expected"), [pytest.param(a, e, id=n) for n, a, e in EDGE_VARIANTS])
def test_edge_is_no_open_relay(topology, sink, attacker, args, expected):
    """RFC 3261 §16.3: the edge forwards devices' requests to the farm only,
    whatever Vias, Routes, line ends or names they carry; nothing reaches the sink."""
    edge1, registrar = topology["edge1"], topology["registrar"]
    leads_to_farm = any("{reg}" in r for r in args.get("routes", ()))
    routes = tuple(r.format(edge=hostport(edge1), reg=hostport(registrar)) for r in args.get("routes", ()))
    args = {**args, "routes": routes}
    before = len(sink.received)
    if args["method"] == "INVITE" and "to_tag" not in args and expected != 403:
        # the farm's challenge comes first; then the relay policy shows
        assert attacker.send_authenticated(edge1, attacker.request(**args), "mallory") == (407, expected)
    else:
        assert attacker.send(edge1, attacker.request(**args)) == expected
    assert sink.received[before:] == [], "relayed to the sink"
    edge_log, farm_log = edge1.new_log(), registrar.new_log()
    assert "Traceback" not in edge_log + farm_log
    if expected == 403 and leads_to_farm:
        # the edge relays toward the farm; the registrar finds no seal of its own
        assert f"403 Forbidden to {args['method']} from {hostport(edge1)}:" in farm_log, farm_log
        assert "without our sealed Record-Route" in farm_log, farm_log
    elif expected == 403:
        assert f"403 Forbidden to {args['method']} from {ATTACKER}:" in edge_log, edge_log


def test_hostnames_a_device_names_are_never_resolved(topology, attacker):
    """Bounded work: a name chosen by the sender is refused before any lookup
    (the edge of this topology has no name server to ask: a lookup would say so)."""
    edge1 = topology["edge1"]
    request = attacker.request("BYE", "sip:toll@lookup-me.invalid", to_tag="h1",
                               routes=(f"<sip:{hostport(edge1)};lr>", "<sip:lookup-me.invalid;lr>"))
    assert attacker.send(edge1, request) == 403
    assert "lookup-me.invalid" in edge1.new_log() and "cannot locate" not in edge1.log()


@pytest.fixture(scope="module")
def victim(topology, workdir) -> Iterator[tuple[SippRun, str]]:
    """UA B registered through edge1 over TCP; its flow token is visible to
    anyone it calls (Record-Route) and in its own 200 (Path)."""
    proc = start_callee(topology["edge1"], workdir, 14990, "victim", ua_ip=UA_B, who="victim", timeout=120)
    try:
        [binding] = wait_bindings(topology["registrar"], "victim", [proc])
        yield proc, parse_name_addr(binding["Path"]).sip_uri.user or ""
    finally:
        proc.kill()


@pytest.mark.parametrize("in_dialog", [False, True], ids=["initial", "in-dialog"])
def test_token_replayed_by_a_device_gets_403(topology, victim, sink, attacker, in_dialog):
    """RFC 5626 §5.3.1: a valid token sends a request over its flow only when the
    farm sent it; a device replaying another device's token is refused."""
    edge1 = topology["edge1"]
    _, token = victim
    request = attacker.request("INVITE", f"sip:victim@{UA_B}:14990;transport=tcp", to_tag="r1" if in_dialog else None,
                               routes=(f"<sip:{token}@{hostport(edge1)};lr;ob>",))
    assert attacker.send(edge1, request) == 403
    assert "from outside the farm" in edge1.new_log()


def answer_486(sock: socket.socket, timeout: float = 10.0) -> str:
    """Wait for an INVITE on ``sock``, answer it 486; return the INVITE."""
    sock.settimeout(timeout)
    while True:
        data, peer = sock.recvfrom(65536)
        text = data.decode(errors="replace")
        if text.startswith("INVITE "):
            break
    head = text.split("\r\n\r\n", 1)[0].split("\r\n")
    keep = [line for line in head[1:] if line.split(":", 1)[0].strip().lower() in ("via", "from", "call-id", "cseq")]
    to = next(line for line in head[1:] if line.lower().startswith("to:"))
    sock.sendto(("SIP/2.0 486 Busy Here\r\n" + "\r\n".join(keep) + f"\r\n{to};tag=busy\r\n"
                 "Content-Length: 0\r\n\r\n").encode(), peer)
    return text


def test_device_supplied_path_with_another_devices_token_never_steers_calls(topology, victim, workdir,
                                                                             local_port, attacker):
    """RFC 3327 §5.3 / RFC 5626 §5.1: the edge is the first hop and removes the
    Path a device wrote; the AOR's calls go over the registering device's own
    flow, never onto the victim's (the victim would answer 200, we answer 486)."""
    edge1, edge2, registrar = topology["edge1"], topology["edge2"], topology["registrar"]
    _, token = victim
    register = attacker.request(
        "REGISTER", "sip:example.com",
        headers=(f"Path: <sip:{token}@{hostport(edge1)};lr;ob>", "Supported: path, outbound", "Expires: 600"),
    ).replace("To: <sip:victim@example.com>", "To: <sip:mallory@example.com>").replace(
        f"Contact: <sip:mallory@{attacker.ip}:{attacker.port}>",
        f'Contact: <sip:mallory@{attacker.ip}:{attacker.port};ob>;+sip.instance="<{instance(4242)}>";reg-id=1')
    # mallory is a subscriber: her own AOR, her own credentials (the farm's 401 first)
    assert attacker.send_authenticated(edge1, register, "mallory") == (401, 200)
    [binding] = registrar.bindings("mallory")
    assert token not in binding["Path"]
    flow = CODEC.decode(parse_name_addr(binding["Path"]).sip_uri.user or "").flow
    assert flow is not None and flow.remote_ip == ATTACKER
    assert "Path written by" in edge1.new_log()

    result: dict[str, object] = {}

    def place_call() -> None:
        try:
            result["r"] = call(edge2, workdir, local_port, "mallory", ua_ip=UA_A, scenario="uac_final.xml",
                               ruri="sip:mallory@example.com", extra="X-Case: mallory")
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    caller = threading.Thread(target=place_call)
    caller.start()
    try:
        invite = answer_486(attacker.sock)
    except TimeoutError:
        caller.join(30)
        raise AssertionError(f"no INVITE reached mallory's flow; caller: {result}") from None
    caller.join(30)
    assert "error" not in result, result.get("error")
    assert invite.startswith("INVITE sip:mallory@")
    assert result["r"].value("final") == "486", "the call reached another device than mallory's"


def test_registrar_refuses_a_path_the_edge_did_not_write(topology, victim, attacker):
    """RFC 3327 §5.3: a REGISTER straight to the registrar with a Path naming
    edge1 (and the victim's token) is not edge1's word: 403, nothing stored.
    Authentication comes first (401); with trudy's own valid credentials for
    her own AOR the Path is what gets the 403."""
    edge1, registrar = topology["edge1"], topology["registrar"]
    _, token = victim
    register = attacker.request(
        "REGISTER", "sip:example.com",
        headers=(f"Path: <sip:{token}@{hostport(edge1)};lr;ob>", "Supported: path", "Expires: 600"),
    ).replace("To: <sip:victim@example.com>", "To: <sip:trudy@example.com>")
    assert attacker.send_authenticated(registrar, register, "trudy") == (401, 403)
    assert registrar.bindings("trudy") == []
    assert f"but the REGISTER came from {ATTACKER}: not written by that edge" in registrar.new_log()


def test_legitimate_call_through_the_farm_still_works(topology, victim, workdir, local_port):
    """Device -> edge2 -> farm -> edge1 -> device, and the in-dialog requests both
    ways along the sealed Record-Route set (the callee's 200 names who answered)."""
    answered = call(topology["edge2"], workdir, local_port, "victim", ua_ip=UA_A, scenario="uac.xml")
    assert answered.value("who") == "victim" and answered.value("reinvite") == "200"
    assert answered.value("bye") == "200"
    assert f"{REGISTRAR_ADDR}:{topology['registrar'].port};lr;ko=" in answered.messages


# ----- single server -----------------------------------------------------------

@pytest.fixture(scope="module")
def server(workdir) -> Iterator[Kamailio]:
    kam = start(single(workdir, name="relay-single", addr=net(65)))
    yield kam
    stop(kam)


@pytest.mark.parametrize(("name", "route_params"), [("no-seal", ""), ("forged-seal", ";ko=AAAAAAAAAAAA")])
def test_single_server_relays_only_its_own_sealed_dialogs(server, sink, attacker, name, route_params):
    before = len(sink.received)
    request = attacker.request("BYE", SINK_URI, to_tag="s1", routes=(f"<sip:{hostport(server)};lr{route_params}>",))
    assert attacker.send(server, request) == 403
    assert sink.received[before:] == []
    assert "without our sealed Record-Route" in server.new_log()


def test_single_server_ignores_device_path_and_tokens(server, workdir, attacker, callees):
    """The single server trusts only its own Path entry; a device's token in an
    initial request's Route gets 403 (before any challenge: the relay policy
    refuses it, nothing is looked up)."""
    proc = start_callee(server, workdir, 14980, "s-victim", ua_ip=UA_B, who="s-victim")
    callees.append(proc)
    [binding] = wait_bindings(server, "s-victim", [proc])
    token = parse_name_addr(binding["Path"]).sip_uri.user or ""
    invite = attacker.request("INVITE", f"sip:s-victim@{UA_B}:14980;transport=tcp",
                              routes=(f"<sip:{token}@{hostport(server)};lr;ob>",))
    assert attacker.send(server, invite) == 403
    register = attacker.request(
        "REGISTER", "sip:example.com",
        headers=(f"Path: <sip:{token}@{hostport(server)};lr;ob>", "Supported: path", "Expires: 600"),
    ).replace("To: <sip:victim@example.com>", "To: <sip:s-mallory@example.com>")
    assert attacker.send_authenticated(server, register, "s-mallory") == (401, 200)
    [stored] = server.bindings("s-mallory")
    assert token not in stored.get("Path", "")
    assert "Path written by" in server.new_log()


def read_reply(conn: socket.socket) -> bytes:
    """One whole SIP message from a stream (its head and Content-Length body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        assert chunk, "connection closed"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    found = re.search(rb"(?im)^(?:content-length|l)\s*:\s*(\d+)", head)
    length = int(found.group(1)) if found else 0
    while len(body) < length:
        chunk = conn.recv(4096)
        assert chunk, "connection closed"
        body += chunk
    return head + b"\r\n\r\n" + body


def test_one_connection_cannot_grow_the_single_servers_flow_table_without_bound(server):
    """ko_flows keeps the AORs of each connection for §7's "a dead flow invalidates
    every binding on it": at most MAX_AORS_PER_FLOW of them per connection; the
    next AOR over the same connection is refused 403 and nothing of it is stored.
    Each REGISTER is challenged (401) and sent again with the credentials of its
    own AOR's subscriber: the bound holds for authenticated users, after the check."""
    with socket.create_connection((server.addr, server.port), timeout=5, source_address=(ATTACKER, 0)) as conn:
        ip, port = conn.getsockname()
        codes = []
        for n in range(MAX_AORS_PER_FLOW + 1):
            register = (f"REGISTER sip:example.com SIP/2.0\r\n"
                        f"Via: SIP/2.0/TCP {ip}:{port};branch=z9hG4bK-many-{n}\r\nMax-Forwards: 70\r\n"
                        f"From: <sip:many-{n}@example.com>;tag=f{n}\r\nTo: <sip:many-{n}@example.com>\r\n"
                        f"Call-ID: many-{n}@{ip}\r\nCSeq: 1 REGISTER\r\n"
                        f'Contact: <sip:many-{n}@{ip}:{port};transport=tcp;ob>;+sip.instance="<{instance(n)}>"'
                        ";reg-id=1\r\nSupported: path, outbound\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n").encode()
            conn.sendall(register)
            challenge = read_reply(conn)
            assert int(challenge[8:11]) == 401, challenge[:60]
            conn.sendall(with_credentials(register, challenge, *subscriber(f"many-{n}")))
            codes.append(int(read_reply(conn)[8:11]))
        assert codes == [200] * MAX_AORS_PER_FLOW + [403]
        assert server.bindings(f"many-{MAX_AORS_PER_FLOW}") == []
        assert len(server.bindings(f"many-{MAX_AORS_PER_FLOW - 1}")) == 1
    assert f"403 Too Many AORs On This Flow to REGISTER from {ATTACKER}:" in server.new_log()
