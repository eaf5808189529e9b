"""KDMQ (the registrar pair's replication, cfg WITH_DMQ) only from the farm:
outbound.relay.replication_refusal, the peer set it is asked about, and the
order in adapter.replication.ReplicationBus.

``KSR`` exists only inside Kamailio: a stand-in records the calls and returns
scripted answers (it implements none of Kamailio's behaviour). That a real
registrar answers a stranger's KDMQ 403 and takes the peer's is shown by
tests/integration/test_registrar_pair.py.
"""

from __future__ import annotations

import sys
import types

import pytest

from ksr_script import Script

KSR = sys.modules.setdefault("KSR", types.ModuleType("KSR"))

from adapter.replication import ReplicationBus  # noqa: E402
from locator.peers import PeerTrust, peer_addresses  # noqa: E402
from locator.plan import Policy  # noqa: E402
from locator.records import RType  # noqa: E402
from locator_zone import Zone, a, srv  # noqa: E402
from outbound.config import parse_config  # noqa: E402
from outbound.errors import ConfigError  # noqa: E402
from outbound.relay import replication_refusal  # noqa: E402

SOURCE = "/etc/kamailio/outbound.yaml"
POLICY = Policy(("udp", "tcp"), ("ipv4", "ipv6"), 2)


# ----- the rule ----------------------------------------------------------------------


@pytest.mark.parametrize("source", ["192.0.2.22", "2001:db8::22"])
def test_kdmq_from_the_farm_is_handed_to_dmq(source):
    assert replication_refusal(source, from_farm=True) is None


@pytest.mark.parametrize("source", ["203.0.113.7", "2001:db8::99"])
def test_kdmq_from_anyone_else_is_403_naming_the_source(source):
    refusal = replication_refusal(source, from_farm=False)

    assert refusal is not None
    assert (refusal.code, refusal.reason) == (403, "Forbidden")
    assert source in refusal.log and "not a registrar of this farm" in refusal.log


# ----- who the farm is: KO_DMQ_PEER plus registrar.replication_peers ----------------------


def test_replication_peers_are_sip_uris_domains_or_addresses():
    cfg = parse_config({"registrar": {"replication_peers": ["sip:192.0.2.23:5070", "farm.example", "192.0.2.24"]}},
                       SOURCE)

    assert cfg.replication_peers == ("sip:192.0.2.23:5070", "sip:farm.example", "sip:192.0.2.24")
    assert parse_config({}, SOURCE).replication_peers == ()


@pytest.mark.parametrize("bad", [5, "", "sip:", None])
def test_a_replication_peer_that_is_no_uri_is_an_error_naming_the_key(bad):
    with pytest.raises(ConfigError) as info:
        parse_config({"registrar": {"replication_peers": [bad]}}, SOURCE)

    assert "registrar.replication_peers" in str(info.value) and SOURCE in str(info.value)


def farm_zone() -> Zone:
    return Zone({"farm.example": {},
                 "_sip._udp.farm.example": {RType.SRV: [srv(10, 0, 5070, "reg-c.example")]},
                 "reg-c.example": {RType.A: a("192.0.2.25")}})


def test_the_peer_is_trusted_by_address_from_any_port_and_a_neighbour_is_not():
    """The bus's set: the cfg's KO_DMQ_PEER first, then the YAML's peers (here a
    farm by DNS name). A source is one of them by its address alone."""
    zone = farm_zone()
    trust = PeerTrust(("sip:192.0.2.22:5070", "sip:farm.example"), lambda uri: peer_addresses(uri, zone, POLICY))

    assert trust.peer_of("192.0.2.22", now=0) == "sip:192.0.2.22:5070"
    assert trust.peer_of("192.0.2.25", now=0) == "sip:farm.example"
    assert trust.peer_of("192.0.2.21", now=0) is None
    assert trust.peer_of("203.0.113.7", now=0) is None


# ----- the order in the request prologue (adapter.replication) ------------------------


class Gate:
    """PeerGate's one question, answered from a fixed set."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = set(addresses)

    def contains(self, source: str) -> bool:
        return source in self.addresses


def bus(*farm: str) -> ReplicationBus:
    made = ReplicationBus.__new__(ReplicationBus)  # no Locator: the gate is scripted
    made.gate = Gate(*farm)
    return made


@pytest.fixture
def script(monkeypatch) -> Script:
    s = Script(**{"kx.get_method": "KDMQ", "kx.get_srcip": "203.0.113.7", "kx.get_srcport": 5070,
                  "kx.get_callid": "kdmq-1", "dmq.is_from_node": -1, "is_ACK": False})
    monkeypatch.setattr(KSR, "kx", s.namespace("kx.", "get_method", "get_srcip", "get_srcport", "get_callid"),
                        raising=False)
    monkeypatch.setattr(KSR, "dmq", s.namespace("dmq.", "is_from_node", "handle_message"), raising=False)
    monkeypatch.setattr(KSR, "sl", s.namespace("sl.", "send_reply"), raising=False)
    monkeypatch.setattr(KSR, "hdr", s.namespace("hdr.", "append_to_reply"), raising=False)
    for name in ("is_ACK", "notice", "info"):
        monkeypatch.setattr(KSR, name, s.recorder(name), raising=False)
    return s


def test_a_request_other_than_kdmq_is_not_the_bus_s(script):
    script.answers["kx.get_method"] = "INVITE"

    assert bus("192.0.2.22").handles() is False
    assert script.names() == ["kx.get_method"]


def test_a_stranger_s_kdmq_is_answered_403_and_never_reaches_dmq(script):
    assert bus("192.0.2.22").handles() is True

    assert ("sl.send_reply", (403, "Forbidden")) in script.calls
    assert "dmq.handle_message" not in script.names()


def test_the_peer_s_kdmq_is_handed_to_dmq_unanswered_by_us(script):
    script.answers["kx.get_srcip"] = "192.0.2.22"

    assert bus("192.0.2.22").handles() is True

    assert "dmq.handle_message" in script.names() and "sl.send_reply" not in script.names()


def test_a_node_dmq_learnt_is_taken_though_not_configured(script):
    """dmq_is_from_node: a source address in dmq's own node list (another
    registrar of the farm that the peer told us about)."""
    script.answers["kx.get_srcip"] = "192.0.2.26"
    script.answers["dmq.is_from_node"] = 1

    assert bus("192.0.2.22").handles() is True

    assert "dmq.handle_message" in script.names() and "sl.send_reply" not in script.names()
