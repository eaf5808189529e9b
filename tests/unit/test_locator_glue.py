"""The KSR glue's pure parts: failure-route names, families, resolve_next_hop.

``KSR`` exists only inside Kamailio; an empty module stands in for it so the
adapter modules import. Nothing here calls it: behaviour inside Kamailio is
shown by tests/integration/test_dns.py.
"""

from __future__ import annotations

import sys
import types

import pytest

from dns_fakes import Clock, Server, records

sys.modules.setdefault("KSR", types.ModuleType("KSR"))

from adapter.locator_glue import Locator, effective_families, listen_families  # noqa: E402
from outbound.config import DnsConfig  # noqa: E402
from outbound.errors import ConfigError  # noqa: E402


def test_families_follow_the_listen_address():
    dns = DnsConfig(families=("ipv6", "ipv4"))

    assert listen_families(["127.0.1.30"]) == {"ipv4"}
    assert listen_families(["edge.example.com", None]) == set()
    assert effective_families(dns, {"ipv4"}, "f.yaml") == ("ipv4",)
    assert effective_families(dns, set(), "f.yaml") == ("ipv6", "ipv4"), "unknown listen family: keep the config"
    with pytest.raises(ConfigError) as info:
        effective_families(DnsConfig(families=("ipv6",)), {"ipv4"}, "f.yaml")
    assert info.value.key == "dns.families" and "f.yaml" in str(info.value)


def test_resolve_next_hop_gives_du_uris_in_rfc3263_order():
    """What the home proxy calls for a Path hostname (see docs/dns.md)."""
    clock = Clock()
    server = Server(clock)
    server.answers["edges.ko.test", "NAPTR"] = records(
        'edges.ko.test. 60 IN NAPTR 10 10 "s" "SIP+D2T" "" _sip._tcp.edges.ko.test.')
    server.answers["_sip._tcp.edges.ko.test", "SRV"] = records(
        "_sip._tcp.edges.ko.test. 60 IN SRV 20 0 5060 edge2.ko.test.",
        "_sip._tcp.edges.ko.test. 60 IN SRV 10 0 5060 edge1.ko.test.",
    )
    server.answers["edge1.ko.test", "A"] = records("edge1.ko.test. 60 IN A 192.0.2.1")
    server.answers["edge2.ko.test", "A"] = records("edge2.ko.test. 60 IN A 192.0.2.2")
    locator = Locator(DnsConfig(nameservers=("192.0.2.53",)), ("ipv4",), clock=clock, send=server)

    assert locator.resolve_next_hop("sip:TOKEN@edges.ko.test;lr;ob") == [
        "sip:192.0.2.1:5060;transport=tcp", "sip:192.0.2.2:5060;transport=tcp",
    ]
    assert locator.resolve_next_hop("sip:nowhere.ko.test;lr") == []
    assert locator.resolve_next_hop("sip:192.0.2.9:5070;lr") == ["sip:192.0.2.9:5070;transport=udp"]


def test_a_numeric_uri_is_planned_once_and_a_name_is_asked_again_when_its_ttl_ends():
    """RFC 3263 §4.2: a numeric URI needs no lookup, so its plan never changes and a
    worker keeps it; a name's plan follows the DNS (the resolver's cache and TTLs)."""
    clock = Clock()
    server = Server(clock)
    server.answers["reg.ko.test", "A"] = records("reg.ko.test. 5 IN A 192.0.2.7")
    locator = Locator(DnsConfig(nameservers=("192.0.2.53",)), ("ipv4",), clock=clock, send=server)

    first = locator.plan("sip:192.0.2.9:5070;lr")
    assert locator.plan("sip:192.0.2.9:5070;lr") is first
    assert server.sent == []
    assert [t.uri for t in locator.plan("sip:reg.ko.test:5070").targets] == ["sip:192.0.2.7:5070;transport=udp"]
    asked = len(server.sent)
    clock.now += 10
    server.answers["reg.ko.test", "A"] = records("reg.ko.test. 5 IN A 192.0.2.8")
    assert [t.uri for t in locator.plan("sip:reg.ko.test:5070").targets] == ["sip:192.0.2.8:5070;transport=udp"]
    assert len(server.sent) > asked


def test_the_memory_of_logged_plans_is_bounded_whatever_hosts_requests_name(monkeypatch):
    """A plan is logged at info level only when it changes (per URI and worker);
    requests can name any number of hosts, so that memory is bounded."""
    from adapter import locator_glue
    from locator.plan import Plan

    lines: list[str] = []
    monkeypatch.setattr(sys.modules["KSR"], "info", lines.append, raising=False)
    monkeypatch.setattr(sys.modules["KSR"], "dbg", lambda line: None, raising=False)
    relay = locator_glue.FailoverRelay(Locator(DnsConfig(nameservers=("192.0.2.53",)), ("ipv4",)), "failure")
    for i in range(locator_glue.LOGGED_URIS_MAX * 2 + 5):
        relay._log_plan(Plan(uri=f"sip:host{i}.ko.test", domain=f"host{i}.ko.test", targets=(), ttl=60))
    assert len(relay._last_plan) <= locator_glue.LOGGED_URIS_MAX
    logged = len(lines)
    relay._log_plan(Plan(uri="sip:host0.ko.test", domain="host0.ko.test", targets=(), ttl=60))
    relay._log_plan(Plan(uri="sip:host0.ko.test", domain="host0.ko.test", targets=(), ttl=60))
    assert len(lines) == logged + 1, "logged again after the memory started over, then not again"
