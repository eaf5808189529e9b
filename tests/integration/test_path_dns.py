"""The home proxy finds an edge named in Path by hostname (RFC 3327, RFC 3263).

An edge started with KO_ADVERTISE=edge-p1.ko.test puts that name (not its
address) in Path, Via and Record-Route. The registrar stores the Path as it is;
to reach the UA the home proxy resolves the name with our RFC 3263 locator,
which asks the test nsd named in the registrar's YAML (tests/dns/ko.test.zone).

Kamailio resolves an advertised name itself once at start (core
socket_info.c), so each edge runs in a private mount namespace whose
/etc/hosts knows its own name (harness ``etc_files``). Every Kamailio here gets
an /etc/resolv.conf naming an address on the test net where no DNS server
listens: a lookup by Kamailio's own resolver fails there, on loopback, so a
name that is reached was resolved by our code through nsd.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from actors import call, instance, ob_params, start_callee, wait_bindings
from dns_setup import NS, NS_PORT, dns_yaml
from harness import Kamailio
from nsd import Nsd
from outbound.sipmsg import parse_name_addr
from topology import edge, net, registrar, start, stop

REG = net(90)
EDGE_P1, EDGE_P2, EDGE_GONE = net(91), net(92), net(93)  # the zone: edge-p1 .91, edge-p2 .92
CALLER_EDGE = net(94)
CALLEE_UA, CALLER_UA = net(95), net(96)
EDGE_TWO, DEAD = net(97), net(45)  # the zone: edge-two .45 (nothing listens there), then .97
# Kamailio's own resolver asks here: nothing listens on port 53 (nsd is on NS_PORT)
RESOLV_CONF = f"nameserver {NS}\noptions timeout:1 attempts:1\n"
NSD_VALUES = {"MOVING": net(45)}  # test_dns.py moves it; an address where nothing listens


def private_etc(names: dict[str, str] | None = None) -> dict[str, str]:
    """/etc/resolv.conf pointing nowhere, /etc/hosts with the edge's own name."""
    hosts = Path("/etc/hosts").read_text() + "".join(f"{ip} {name}\n" for name, ip in (names or {}).items())
    return {"hosts": hosts, "resolv.conf": RESOLV_CONF}


@pytest.fixture(scope="module")
def home(workdir: Path, nsd: Nsd) -> Iterator[Kamailio]:
    """Registrar + home proxy asking the test nsd; no DNS cache, so every
    lookup reaches nsd and a zone change counts at once."""
    kam = registrar(workdir, name="pd-registrar", addr=REG)
    data = yaml.safe_load(dns_yaml(cache_entries=0))
    # the edges by address: a Path naming a host that does not resolve now
    # (edge-gone) is still the word of a trusted edge (outbound.relay.path_refusal)
    data["registrar"]["trusted_edges"] = [EDGE_P1, EDGE_P2, EDGE_GONE, EDGE_TWO, CALLER_EDGE]
    kam.yaml_text = yaml.safe_dump(data)
    kam.etc_files = private_etc()
    try:
        yield start(kam)
    finally:
        stop(kam)


@pytest.fixture(scope="module")
def caller_edge(workdir: Path, home: Kamailio) -> Iterator[Kamailio]:
    """The caller's edge, known by its address."""
    kam = edge(workdir, "pd-caller-edge", CALLER_EDGE, home.uri)
    kam.etc_files = private_etc()
    try:
        yield start(kam)
    finally:
        stop(kam)


@pytest.fixture
def named_edge(workdir: Path, home: Kamailio) -> Iterator[Callable[[str, str], Kamailio]]:
    """Start an edge advertising a hostname (KO_ADVERTISE); stopped after the test."""
    started: list[Kamailio] = []

    def make(name: str, addr: str) -> Kamailio:
        kam = edge(workdir, f"pd-{name.split('.')[0]}", addr, home.uri)
        kam.defines["KO_ADVERTISE"] = name
        kam.etc_files = private_etc({name: addr})
        started.append(start(kam))
        return kam

    yield make
    for kam in started:
        stop(kam)


def path_uri(binding: dict):
    return parse_name_addr(binding["Path"]).sip_uri


@pytest.mark.parametrize(("advertise", "ok"), [(None, True), ("edge-p1.ko.test", True), ("edge-x.ko.test", False)],
                         ids=["without", "with", "unresolvable"])
def test_edge_cfg_checks_with_and_without_advertise(workdir, advertise, ok):
    """`kamailio -c` passes both ways; an advertised name must resolve where the
    edge starts (here: the private /etc/hosts knows edge-p1 only)."""
    kam = edge(workdir, f"pd-check-{advertise}", EDGE_P1, "sip:farm.ko.test", port=5099)
    if advertise:
        kam.defines["KO_ADVERTISE"] = advertise
    kam.etc_files = private_etc({"edge-p1.ko.test": EDGE_P1})
    result = kam.check()
    problems = [line for line in result.stderr.splitlines() if "ERROR" in line or "CRITICAL" in line]
    if ok:
        assert result.returncode == 0 and not problems, result.stderr
    else:
        assert "unable to resolve advertised name edge-x.ko.test" in result.stderr


def test_home_proxy_resolves_the_edge_named_in_path_and_skips_it_once_the_name_is_gone(
        home, caller_edge, named_edge, nsd, workdir, local_port, callees):
    """RFC 3327: the Path keeps the edge's hostname; RFC 3263: the home proxy
    resolves it through nsd to reach the UA, and the BYE follows the edge's
    hostname Record-Route the same way. With the name out of the zone the
    binding is skipped (and kept): the caller gets 480."""
    settings = yaml.safe_load((workdir / f"{home.name}.yaml").read_text())["dns"]
    assert settings["nameservers"] == [NS] and settings["port"] == NS_PORT
    edge_p1 = named_edge("edge-p1.ko.test", EDGE_P1)
    callee = start_callee(edge_p1, workdir, local_port, "pia", ua_ip=CALLEE_UA)
    callees.append(callee)
    [binding] = wait_bindings(home, "pia", [callee])
    hop = path_uri(binding)
    assert (hop.host, hop.port) == ("edge-p1.ko.test", 5060) and "ob" in hop.params

    answered = call(caller_edge, workdir, local_port + 1, "pia", ua_ip=CALLER_UA)
    assert answered.value("who") == "pia" and answered.value("bye") == "200"
    callee_log = callee.wait(10)
    assert callee_log.returncode == 0
    assert callee_log.value("incoming").startswith("SIP/2.0/TCP edge-p1.ko.test:5060;")
    assert "cannot locate" not in home.log()

    nsd.reload(EDGE_P1_OFF=";")
    try:
        refused = call(caller_edge, workdir, local_port + 2, "pia", ua_ip=CALLER_UA, scenario="uac_final.xml",
                       ruri="sip:pia@example.com", extra="X-Case: name-gone")
        assert refused.value("final") == "480"
        log = home.log()
        assert f"kemi-outbound: cannot locate edge-p1.ko.test (Path of {binding['Ruid']}); skipped" in log
        assert re.search(r"kemi-outbound decision=no_usable_flow code=480 call-id=\S+ 480 Temporarily Unavailable "
                         r"to INVITE", log), log[-3000:]
        assert "no usable flow for sip:pia@example.com" in log
        assert [b["Ruid"] for b in home.bindings("pia")] == [binding["Ruid"]], "the binding is kept"
    finally:
        nsd.reload(EDGE_P1_OFF="")


def test_flow_through_an_edge_that_cannot_be_located_is_skipped_for_the_next_flow(
        home, caller_edge, named_edge, workdir, local_port, callees):
    """One instance, two flows (RFC 5626 §7): the newest goes through
    edge-gone.ko.test, a name nsd does not know; the home proxy skips that flow,
    keeps its binding and reaches the UA over the flow through edge-p2."""
    edge_p2 = named_edge("edge-p2.ko.test", EDGE_P2)
    edge_gone = named_edge("edge-gone.ko.test", EDGE_GONE)
    ua = instance(9100)
    via_p2 = start_callee(edge_p2, workdir, local_port, "quinn", ua_ip=CALLEE_UA, who="via-p2",
                          cparams=ob_params(ua, 2))
    callees.append(via_p2)
    wait_bindings(home, "quinn", [via_p2])
    via_gone = start_callee(edge_gone, workdir, local_port + 1, "quinn", ua_ip=CALLEE_UA, who="via-gone",
                            cparams=ob_params(ua, 1))
    callees.append(via_gone)
    bindings = wait_bindings(home, "quinn", [via_p2, via_gone], count=2)
    by_edge = {path_uri(b).host: b["Ruid"] for b in bindings}
    assert set(by_edge) == {"edge-p2.ko.test", "edge-gone.ko.test"}

    answered = call(caller_edge, workdir, local_port + 2, "quinn", ua_ip=CALLER_UA)
    assert answered.value("who") == "via-p2" and answered.value("bye") == "200"
    assert f"cannot locate edge-gone.ko.test (Path of {by_edge['edge-gone.ko.test']}); skipped" in home.log()
    assert sorted(b["Ruid"] for b in home.bindings("quinn")) == sorted(by_edge.values()), "both bindings kept"
    assert via_p2.wait(10).returncode == 0
    assert via_gone.alive, "no call came over edge-gone: its UA still waits"


def test_every_address_of_the_edge_named_in_path_before_the_flow_fails(
        home, caller_edge, named_edge, nsd, workdir, local_port, callees):
    """RFC 3263 §4.3 (B10): edge-two.ko.test has two addresses, the first where
    nothing listens. The branch there ends in the home proxy's own 408 (no
    reply before home.first_reply_timeout_ms); the same binding then goes to
    the edge's second address, which holds the flow: the call is answered over
    it and the binding is kept (the flow never failed). The dead address is held
    down (registrar's htable ko_health): the ACK and BYE of that call, and the
    next call, go to the live address first."""
    edge_two = named_edge("edge-two.ko.test", EDGE_TWO)
    callee = start_callee(edge_two, workdir, local_port, "rhea", ua_ip=CALLEE_UA, who="via-two")
    callees.append(callee)
    [binding] = wait_bindings(home, "rhea", [callee])
    assert path_uri(binding).host == "edge-two.ko.test"

    answered = call(caller_edge, workdir, local_port + 1, "rhea", ua_ip=CALLER_UA)
    assert answered.value("who") == "via-two" and answered.value("bye") == "200"
    log = home.log()
    dead, live = f"sip:{DEAD}:5060;transport=udp", f"sip:{EDGE_TWO}:5060;transport=udp"
    assert (f"kemi-outbound: edge of {binding['Ruid']} of sip:rhea@example.com unreachable at {dead} "
            f"(408 local); trying {live}") in log
    assert f"flow {binding['Ruid']} of sip:rhea@example.com failed" not in log
    assert [b["Ruid"] for b in home.bindings("rhea")] == [binding["Ruid"]], "the binding is kept"
    assert re.search(rf"kemi-outbound decision=hold_down code=0 call-id=\S+ {re.escape(dead)} held down for 30s "
                     r"\(408 local\)", log), log[-3000:]
    assert callee.wait(10).returncode == 0

    again = start_callee(edge_two, workdir, local_port + 2, "rhea2", ua_ip=CALLEE_UA, who="again")
    callees.append(again)
    wait_bindings(home, "rhea2", [again])
    before = home.log().count("unreachable at")
    second = call(caller_edge, workdir, local_port + 3, "rhea2", ua_ip=CALLER_UA)
    assert second.value("who") == "again" and second.value("bye") == "200"
    assert home.log().count("unreachable at") == before, "the held-down address was not tried first"
