"""Edges find the registrar farm by DNS (issue 5; RFC 3263, RFC 2782).

Everything is real: Debian's nsd serves tests/dns/ko.test.zone on the test
network, Kamailio 5.6 runs our KEMI Python (which asks nsd itself, through
dnspython; Kamailio's resolver is never used: $du is always an address), and
SIPp plays the UAs and, where a test needs a server that misbehaves on
purpose, one home-proxy target (tests/sipp/dns_home).
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.message
import dns.query
import pytest

from actors import start_callee, wait_bindings
from dns_setup import NS, NS_PORT, dns_yaml
from harness import TEST_KEY, Kamailio, SippResult, SippRun, describe, sipp, start_sipp
from nsd import Nsd
from outbound.tokens import Flow, FlowTokenCodec, parse_key
from topology import edge, net, registrar, start, stop, subscriber

UA = net(11)
CALLEE = net(12)
FAKE_CORE = net(50)
REG = {"a": net(21), "b": net(22), "c": net(23), "d": net(24)}
UAS = {"a": net(41), "b": net(42)}
UAS_PORT = 5080
DEAD = net(45)
EDGE_ADDRS = itertools.count(60)
NSD_VALUES = {"MOVING": REG["a"]}  # the zone's @MOVING@ at the start (conftest's nsd fixture)
# the registrars of a farm share the nonce secret (cfg KO_AUTH_SECRET), as they must in
# production: a REGISTER challenged by one may bring its credentials to another
FARM_SECRET = {"KO_AUTH_SECRET": '"dns-farm-nonce-secret-for-the-tests"'}


@pytest.fixture(scope="module")
def registrars(workdir: Path, nsd: Nsd) -> Iterator[dict[str, Kamailio]]:
    """Registrars A (priority 10 in farm.ko.test) and B (priority 20)."""
    started = {}
    try:
        for name in ("a", "b"):
            started[name] = start(registrar(workdir, name=f"dns-reg-{name}", addr=REG[name], defines=FARM_SECRET))
        yield started
    finally:
        for kam in started.values():
            stop(kam)


@pytest.fixture
def make_edge(workdir: Path, nsd: Nsd) -> Iterator[Callable[..., Kamailio]]:
    """Start an edge whose edge.registrar is a domain; stopped after the test."""
    started: list[Kamailio] = []

    def make(registrar_uri: str, **dns_changes: object) -> Kamailio:
        addr = net(next(EDGE_ADDRS))
        kam = edge(workdir, f"dns-edge-{addr}", addr, registrar_uri)
        kam.yaml_text = dns_yaml(**dns_changes)
        started.append(start(kam))
        return kam

    yield make
    for kam in started:
        stop(kam)


@pytest.fixture
def servers(workdir: Path) -> Iterator[Callable[..., SippRun]]:
    """SIPp standing in for a home target (tests/sipp/dns_home); killed after the test."""
    running: list[SippRun] = []

    def serve(name: str, scenario: str, calls: int = 1) -> SippRun:
        server = start_sipp(f"dns_home/{scenario}", f"{UA}:5060", workdir=workdir, local_ip=UAS[name],
                            local_port=UAS_PORT, timeout=30, calls=calls,
                            name=f"dns-home-{name}-{time.monotonic_ns()}")
        running.append(server)
        wait_udp_bound(UAS[name], UAS_PORT, server)
        return server

    yield serve
    for server in running:
        server.kill()


def wait_udp_bound(ip: str, port: int, server: SippRun, timeout: float = 10.0) -> None:
    """Readiness of a SIPp server: its UDP socket shows in /proc/net/udp."""
    want = f"{int.from_bytes(bytes(int(x) for x in ip.split('.')), 'little'):08X}:{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/net/udp") as table:
            if any(line.split()[1] == want for line in table.readlines()[1:]):
                return
        if not server.alive:
            ended = server.wait(1)
            raise AssertionError(f"SIPp server exited {ended.returncode}:\n{describe(ended)}")
        time.sleep(0.02)
    raise AssertionError(f"SIPp server not bound on {ip}:{port} after {timeout}s")


def received(server: SippRun) -> list[str]:
    """Requests a SIPp server took (its log), after stopping it if still running."""
    return server.wait(0 if server.alive else 5).values("received")


def register(kam: Kamailio, workdir: Path, port: int, user: str) -> SippResult:
    return sipp("dns_ua/register.xml", f"{kam.addr}:{kam.port}", workdir=workdir, local_ip=UA, local_port=port,
                keys={"user": user, "domain": "ko.test", "expires": "600"}, timeout=20,
                auth=subscriber(user, "ko.test"))


def bound_at(registrars: dict[str, Kamailio], user: str) -> list[str]:
    return [name for name, kam in registrars.items() if kam.bindings(user)]


def test_register_goes_to_the_lowest_priority_registrar(registrars, make_edge, workdir, local_port):
    """NAPTR -> SRV -> A; RFC 2782: priority 10 (A) before priority 20 (B)."""
    kam = make_edge("sip:farm.ko.test")

    assert register(kam, workdir, local_port, "alice-farm").value("final") == "200"
    assert bound_at(registrars, "alice-farm") == ["a"]
    assert f"farm.ko.test: udp:{REG['a']}:5070, udp:{REG['b']}:5070" in kam.log()


def test_registrar_a_stopped_registrations_go_to_b(workdir, make_edge, nsd, local_port):
    """RFC 3263 §4.3: no response at all from A: a new branch to B."""
    regs = {name: start(registrar(workdir, name=f"dns-reg-{name}", addr=REG[name], defines=FARM_SECRET))
            for name in ("c", "d")}
    try:
        kam = make_edge("sip:cdfarm.ko.test")
        assert register(kam, workdir, local_port, "bob-before").value("final") == "200"
        assert bound_at(regs, "bob-before") == ["c"]

        stop(regs["c"])
        assert register(kam, workdir, local_port + 1, "bob-after").value("final") == "200"
        assert regs["d"].bindings("bob-after")
        assert f"no response at all before the timeout; trying sip:{REG['d']}:5070;transport=udp" in kam.log()
    finally:
        for reg in regs.values():
            stop(reg)


def test_every_address_of_a_target_before_the_next_srv_target(registrars, make_edge, workdir, local_port):
    """twoaddr.ko.test (priority 10) has a dead address, then B's; reg-a is priority 20."""
    kam = make_edge("sip:pair.ko.test")

    assert register(kam, workdir, local_port, "carol-pair").value("final") == "200"
    assert bound_at(registrars, "carol-pair") == ["b"]
    log = kam.log()
    assert f"pair.ko.test: udp:{DEAD}:5070, udp:{REG['b']}:5070, udp:{REG['a']}:5070" in log
    assert f"sip:{DEAD}:5070;transport=udp: no response at all before the timeout; trying sip:{REG['b']}" in log


def test_refused_tcp_connection_is_a_transport_error_and_fails_over(registrars, make_edge, workdir, local_port):
    """NAPTR SIP+D2T: the dead priority-10 target refuses TCP; A (priority 20) takes it."""
    kam = make_edge("sip:tcpfarm.ko.test")

    assert register(kam, workdir, local_port, "tcp-tom").value("final") == "200"
    assert bound_at(registrars, "tcp-tom") == ["a"]
    log = kam.log()
    assert f"tcpfarm.ko.test: tcp:{DEAD}:5070, tcp:{REG['a']}:5070" in log
    assert f"sending to sip:{DEAD}:5070;transport=tcp failed (transport error)" in log


def test_ipv6_only_target_is_skipped_when_kamailio_has_only_ipv4(registrars, make_edge, workdir, local_port):
    """RFC 3263 §4.2 / RFC 6157: only families we can send on; AAAA is not even asked."""
    kam = make_edge("sip:v6first.ko.test")  # families [ipv4, ipv6] in YAML, KO_ADDR is IPv4

    assert register(kam, workdir, local_port, "dave-v6").value("final") == "200"
    assert bound_at(registrars, "dave-v6") == ["a"]
    log = kam.log()
    assert f"v6first.ko.test: udp:{REG['a']}:5070" in log and "v6only.ko.test: no ipv4 address" in log
    assert "::1" not in log and "trying sip:" not in log


def test_503_fails_over_to_the_next_target(registrars, make_edge, servers, workdir, local_port):
    server_a = servers("a", "register_503.xml")
    kam = make_edge("sip:busy.ko.test")

    assert register(kam, workdir, local_port, "erin-busy").value("final") == "200"
    assert received(server_a) == ["REGISTER"]
    assert bound_at(registrars, "erin-busy") == ["b"]
    assert "503 from the server; trying" in kam.log()


def test_503_retry_after_holds_the_server_down_for_the_next_transactions(registrars, make_edge, servers, workdir,
                                                                        local_port):
    """RFC 3261 §21.5.4: after a 503 with Retry-After: 60 from SIPp A (priority 10)
    the edge fails over to registrar B, and the REGISTERs that follow go straight
    to B: A, still listening, receives nothing more. The hold-down lives in the
    edge's htable, so whichever worker takes the next REGISTER knows it."""
    server_a = servers("a", "register_503_retry.xml", calls=5)
    kam = make_edge("sip:busy.ko.test")

    assert register(kam, workdir, local_port, "liz-0").value("final") == "200"
    for n in range(1, 5):
        assert register(kam, workdir, local_port + n, f"liz-{n}").value("final") == "200"

    assert received(server_a) == ["REGISTER"], "only the first REGISTER reached the server that said 503"
    assert all(bound_at(registrars, f"liz-{n}") == ["b"] for n in range(5))
    log = kam.log()
    a_uri = f"sip:{UAS['a']}:5080;transport=udp"
    assert f"{a_uri} held down for 60s (503 from the server, Retry-After 60)" in log
    assert f"sip:busy.ko.test: held down, tried last: udp:{UAS['a']}:5080" in log
    assert log.count("503 from the server; trying") == 1


def test_retry_after_is_capped_and_the_hold_down_expires(registrars, make_edge, servers, workdir, local_port):
    """dns.max_hold_down: 1 caps Retry-After: 60; a second later A is tried first again."""
    server_a = servers("a", "register_503_retry.xml", calls=5)
    kam = make_edge("sip:busy.ko.test", hold_down=1, max_hold_down=1)

    assert register(kam, workdir, local_port, "max-0").value("final") == "200"
    assert f"sip:{UAS['a']}:5080;transport=udp held down for 1s (503 from the server, Retry-After 60)" in kam.log()
    deadline = time.monotonic() + 10
    attempt = 0
    while kam.log().count("503 from the server; trying") < 2:
        assert time.monotonic() < deadline, "A was never tried again after its hold-down ended"
        attempt += 1
        assert register(kam, workdir, local_port + attempt, f"max-{attempt}").value("final") == "200"
        time.sleep(0.2)
    assert received(server_a) == ["REGISTER", "REGISTER"]


def test_a_silent_target_is_held_down_by_the_timer_process_for_every_worker(registrars, make_edge, workdir,
                                                                           local_port):
    """pair.ko.test: the dead address (priority 10) times out once; tm's timer
    process runs that failure route, and the workers' next REGISTERs skip it."""
    kam = make_edge("sip:pair.ko.test")

    for n in range(4):
        assert register(kam, workdir, local_port + n, f"mo-{n}").value("final") == "200"

    log = kam.log()
    assert log.count("no response at all before the timeout; trying") == 1
    assert f"sip:{DEAD}:5070;transport=udp held down for 30s (no response at all before the timeout)" in log
    assert f"sip:pair.ko.test: held down, tried last: udp:{DEAD}:5070" in log
    assert all(bound_at(registrars, f"mo-{n}") == ["b"] for n in range(4))


def test_when_every_target_is_held_down_they_are_tried_and_an_answer_clears_the_hold_down(make_edge, servers,
                                                                                         workdir, local_port):
    """uas.ko.test: SIPp A (priority 10) and B (priority 20) both say 503 with
    Retry-After: 60, so both are held down. The next REGISTER still goes to A
    first (plan order, nothing removed), where a new SIPp now answers 200: the
    reply route armed for a held-down target clears A's hold-down."""
    first_a = servers("a", "register_503_retry.xml")
    first_b = servers("b", "register_503_retry.xml")
    kam = make_edge("sip:uas.ko.test")

    assert register(kam, workdir, local_port, "nia-0").value("final") == "500", "tm remaps the last 503"
    assert received(first_a) == ["REGISTER"] and received(first_b) == ["REGISTER"]
    second_a = servers("a", "register_200.xml")
    assert register(kam, workdir, local_port + 1, "nia-1").value("final") == "200"
    assert received(second_a) == ["REGISTER"]

    log = kam.log()
    a_uri, b_uri = f"sip:{UAS['a']}:5080;transport=udp", f"sip:{UAS['b']}:5080;transport=udp"
    assert f"{b_uri} held down for 60s (503 from the server, Retry-After 60)" in log
    assert "every target is, plan order kept" in log
    assert f"{a_uri} answered 200: hold-down cleared" in log


def test_in_dialog_route_to_an_unresolvable_hostname_gets_503_and_a_log_line(make_edge, workdir, local_port):
    """After loose_route the next hop of a request from the farm is a Route
    naming a host that does not exist: our locator (never Kamailio's resolver)
    finds nothing, the BYE gets 503 and the ACK is dropped, each with a log
    line. (From a device the same request is refused 403 before any lookup:
    tests/integration/test_no_open_relay.py.)"""
    kam = make_edge("sip:farm.ko.test")
    route = f"<sip:{kam.addr}:{kam.port};lr>, <sip:edge-gone.ko.test;lr>"

    result = sipp("dns_ua/in_dialog.xml", f"{kam.addr}:{kam.port}", workdir=workdir, local_ip=REG["a"],
                  local_port=local_port, keys={"ruri": f"sip:bob@{net(99)}", "route": route, "user": "alice",
                                               "domain": "ko.test"}, timeout=15)
    assert result.value("final") == "503"
    deadline = time.monotonic() + 5
    while "ACK dropped, cannot locate the next hop" not in kam.log():
        assert time.monotonic() < deadline, "no log line for the dropped ACK"
        time.sleep(0.05)
    log = kam.log()
    assert re.search(rf"kemi-outbound decision=locate_failed code=503 call-id=\S+ 503 Service Unavailable to BYE "
                     rf"from {re.escape(REG['a'])}:", log), log[-3000:]
    assert "cannot locate the next hop sip:edge-gone.ko.test;lr" in log and "NXDOMAIN" in log
    assert "Traceback" not in log


def test_100_trying_then_silence_does_not_fail_over(registrars, make_edge, servers, workdir, local_port):
    """A provisional is a response: the timeout that follows is not a failover signal."""
    server_a = servers("a", "register_trying.xml")
    kam = make_edge("sip:busy.ko.test")

    assert register(kam, workdir, local_port, "frank-trying").value("final") == "408"
    assert received(server_a)[:1] == ["REGISTER"]
    assert bound_at(registrars, "frank-trying") == []
    assert "the server had answered provisionally; no failover" in kam.log()


def invite_uas(kam: Kamailio, workdir: Path, local_port: int, case: str) -> SippResult:
    """An INVITE for bob@ko.test through ``kam`` (its targets: the dns_home servers of uas.ko.test)."""
    return sipp("caller/uac_final.xml", f"{kam.addr}:{kam.port}", workdir=workdir, local_ip=UA,
                local_port=local_port, keys={"ruri": "sip:bob@ko.test", "extra": f"X-Case: {case}", "user": "alice",
                                             "callee": "bob", "domain": "ko.test"}, timeout=15,
                auth=subscriber("alice", "ko.test"))


def test_486_does_not_fail_over(make_edge, servers, workdir, local_port):
    server_a = servers("a", "invite_486.xml")
    server_b = servers("b", "invite_480.xml")
    result = invite_uas(make_edge("sip:uas.ko.test"), workdir, local_port, "busy")
    assert result.value("final") == "486"
    assert received(server_a) == ["INVITE", "ACK"], "tm acknowledges the 486 to the server that sent it"
    assert received(server_b) == []


def test_503_after_100_trying_fails_over(make_edge, servers, workdir, local_port):
    """RFC 3263 §4.3 counts any 503 (issue 13 item 6): a home proxy answers 100
    at once, so a 503 that follows it still moves the INVITE to the next target
    (before the fix the caller got 500, tm's answer for a lone 503)."""
    server_a = servers("a", "invite_503.xml")
    server_b = servers("b", "invite_486.xml")
    result = invite_uas(make_edge("sip:uas.ko.test"), workdir, local_port, "503-late")
    assert result.value("final") == "486"
    assert received(server_a) == ["INVITE", "ACK"]
    assert received(server_b) == ["INVITE", "ACK"]


def test_cancel_and_ack_go_to_the_server_that_was_chosen(make_edge, servers, workdir, local_port):
    """The dead priority-10 target times out, B rings; the caller's CANCEL and tm's
    ACK for the 487 go to B, the server chosen for this transaction (checklist B1)."""
    server_b = servers("b", "invite_cancel.xml")
    kam = make_edge("sip:deadfirst.ko.test")

    result = sipp("dns_ua/cancel.xml", f"{kam.addr}:{kam.port}", workdir=workdir, local_ip=UA,
                  local_port=local_port, keys={"ruri": "sip:bob@ko.test", "user": "alice", "domain": "ko.test"},
                  timeout=15, auth=subscriber("alice", "ko.test"))
    assert result.value("cancel") == "200" and result.value("final") == "487"
    assert received(server_b) == ["INVITE", "CANCEL", "ACK"]


def test_zone_change_with_short_ttl_is_picked_up_after_expiry(registrars, make_edge, nsd, workdir, local_port):
    """moving-host.ko.test has TTL 2: once it points at B, registrations follow."""
    kam = make_edge("sip:moving.ko.test")
    assert register(kam, workdir, local_port, "gina-moving").value("final") == "200"
    assert bound_at(registrars, "gina-moving") == ["a"]

    nsd.reload(MOVING=REG["b"])
    try:
        deadline = time.monotonic() + 20
        attempt = 0
        while not registrars["b"].bindings("gina-moving"):
            assert time.monotonic() < deadline, "the edge never followed the zone change"
            attempt += 1
            assert register(kam, workdir, local_port, "gina-moving").value("final") == "200"
            time.sleep(0.2)
        assert registrars["b"].bindings("gina-moving")
    finally:
        nsd.reload(MOVING=REG["a"])


def test_truncated_udp_answer_is_read_over_tcp(registrars, make_edge, nsd, workdir, local_port):
    query = dns.message.make_query("_sip._udp.big.ko.test", "SRV")
    with pytest.raises(dns.message.Truncated):
        dns.query.udp(query, NS, port=NS_PORT, timeout=2, raise_on_truncation=True)
    kam = make_edge("sip:big.ko.test")

    assert register(kam, workdir, local_port, "hank-big").value("final") == "200"
    assert bound_at(registrars, "hank-big") == ["a"]


BAD_DOMAINS = [
    pytest.param("sip:nowhere.ko.test", "nowhere.ko.test NAPTR: NXDOMAIN", id="nxdomain"),
    pytest.param("sip:farm.broken.test", "SERVFAIL", id="servfail"),
    pytest.param("sip:dot.ko.test", '_sip._udp.dot.ko.test SRV: target "." (service not available)', id="dot-target"),
    pytest.param("sip:noaddr.ko.test", "ghost.ko.test: no ipv4 address", id="srv-target-without-address"),
    pytest.param("sip:loop.ko.test", "CNAME loop", id="cname-loop"),
]


@pytest.mark.parametrize(("uri", "why"), BAD_DOMAINS)
def test_unresolvable_registrar_gets_503_and_a_log_line_naming_the_domain(make_edge, workdir, local_port, uri, why):
    kam = make_edge(uri)

    for attempt in range(2):  # the second is answered from the cache: same reply, no crash
        result = register(kam, workdir, local_port + attempt, f"ivan-{attempt}")
        assert result.value("final") == "503"
    log = kam.log()
    assert len(re.findall(rf"kemi-outbound decision=locate_failed code=503 call-id=\S+ 503 Service Unavailable "
                          rf"to REGISTER from {re.escape(UA)}:", log)) == 2, log[-3000:]
    assert f"cannot locate {uri}" in log and why in log
    assert "Traceback" not in log
    assert kam.rpc("core.uptime")


def test_dns_timeout_gets_503_within_the_budget_then_recovers(registrars, make_edge, nsd, workdir, local_port):
    """A silent server: the worker gives up when dns.timeout_ms is spent (the
    budget is in the log line), answers 503, and DNS works again once back."""
    kam = make_edge("sip:farm.ko.test")
    nsd.pause()
    try:
        result = register(kam, workdir, local_port, "judy-timeout")
        assert result.value("final") == "503"
    finally:
        nsd.resume()
    log = kam.log()
    assert "cannot locate sip:farm.ko.test" in log and "farm.ko.test NAPTR: timeout" in log
    assert "DNS budget of 1s spent" in log

    deadline = time.monotonic() + 15  # failure_ttl is 1 s
    while register(kam, workdir, local_port, "judy-timeout").value("final") != "200":
        assert time.monotonic() < deadline, "DNS never recovered"
        time.sleep(0.2)
    assert bound_at(registrars, "judy-timeout") == ["a"]


def test_requests_claiming_to_be_from_the_core_must_come_from_the_farm(registrars, make_edge, workdir, local_port):
    """dns.peers = the registrar farm: an incoming request over a UA's flow from
    an address outside farm.ko.test's SRV/A set is refused (403); the same
    request through registrar A (in the set) reaches the UA."""
    kam = make_edge("sip:farm.ko.test", peers=["sip:farm.ko.test"])
    callee = start_callee(kam, workdir, local_port, "kate", ua_ip=CALLEE)
    wait_bindings(registrars["a"], "kate", [callee])
    [binding] = registrars["a"].bindings("kate")

    forged = sipp("caller/uac_final.xml", f"{kam.addr}:{kam.port}", workdir=workdir, local_ip=FAKE_CORE,
                  local_port=local_port + 1, keys={"ruri": binding["Address"], "extra": f"Route: {binding['Path']}",
                                                   "user": "mallory", "callee": "kate", "domain": "example.com"},
                  timeout=15)
    assert forged.value("final") == "403"
    assert f"403 Forbidden to INVITE from {FAKE_CORE}:" in kam.log()
    assert "from outside the farm" in kam.log()

    call = sipp("caller/uac.xml", f"{kam.addr}:{kam.port}", workdir=workdir, local_ip=UA, local_port=local_port + 2,
                keys={"callee": "kate", "domain": "example.com", "user": "alice"}, timeout=15,
                auth=subscriber("alice"))
    assert call.value("who") == "kate" and call.value("bye") == "200"
    assert f"trusted peer sip:farm.ko.test = {REG['a']}, {REG['b']}" in kam.log()
    callee.wait(10)


def test_trusted_peer_set_follows_the_zone_when_its_ttl_runs_out(make_edge, nsd, workdir, local_port):
    """dns.peers = moving.ko.test (TTL 2 s). A request to a UA's flow from the
    fake core is refused while the set is registrar A; once the zone names the
    fake core, the same request is trusted and routed (430: that flow is gone)."""
    kam = make_edge("sip:farm.ko.test", peers=["sip:moving.ko.test"])
    gone = Flow("tcp", kam.addr, kam.port, net(99), 40000, conn_id=987654)
    token = FlowTokenCodec([parse_key(TEST_KEY)]).encode(gone)
    keys = {"ruri": f"sip:kate@{net(99)}:40000;transport=tcp", "user": "core", "callee": "kate", "domain": "ko.test",
            "extra": f"Route: <sip:{token}@{kam.addr}:{kam.port};lr>"}

    def from_fake_core(port: int) -> str:
        result = sipp("caller/uac_final.xml", f"{kam.addr}:{kam.port}", workdir=workdir, local_ip=FAKE_CORE,
                      local_port=port, keys=keys, timeout=15)
        return result.value("final")

    assert from_fake_core(local_port) == "403"
    nsd.reload(MOVING=FAKE_CORE)
    try:
        deadline = time.monotonic() + 20
        port = local_port
        while (final := from_fake_core(port := port + 1)) == "403":
            assert time.monotonic() < deadline, "the peer set never followed the zone"
            time.sleep(0.2)
        assert final == "430"
        assert f"trusted peer sip:moving.ko.test = {FAKE_CORE}" in kam.log()
    finally:
        nsd.reload(MOVING=REG["a"])
