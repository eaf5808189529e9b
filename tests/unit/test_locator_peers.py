"""Trusted peers by DNS name: the whole SRV/A/AAAA set, refreshed by TTL."""

from locator.peers import PeerTrust, peer_addresses
from locator.plan import Policy
from locator.records import Answer, RType, Status
from locator_zone import Zone, a, srv

POLICY = Policy(("udp", "tcp"), ("ipv4", "ipv6"), 2)


def farm(*hosts: tuple[int, int, str, list], ttl: int = 60) -> Zone:
    data = {"farm.example": {}}
    data["_sip._udp.farm.example"] = {RType.SRV: [srv(p, w, 5070, name) for p, w, name, _ in hosts]}
    for _, _, name, addresses in hosts:
        data[name] = {RType.A: [x for x in addresses if ":" not in x.address],
                      RType.AAAA: [x for x in addresses if ":" in x.address]}
    return Zone(data, ttl=ttl)


def test_every_address_of_every_target_is_in_the_set_whatever_max_targets():
    zone = farm((10, 1, "a.example", a("192.0.2.1", "192.0.2.2")), (20, 0, "b.example", a("2001:db8::3")))

    addresses, found = peer_addresses("sip:farm.example", zone, POLICY)

    assert addresses == {"192.0.2.1", "192.0.2.2", "2001:db8::3"}
    assert found.ttl == 30  # the negative NAPTR / _sip._tcp answers of the scripted zone


def test_trust_by_address_and_refresh_when_the_ttl_runs_out():
    zone = farm((10, 0, "a.example", a("192.0.2.1")))
    trust = PeerTrust(["sip:farm.example"], lambda uri: peer_addresses(uri, zone, POLICY))

    assert trust.peer_of("192.0.2.1", now=0) == "sip:farm.example"
    assert trust.peer_of("192.0.2.9", now=0) is None

    zone.data["a.example"][RType.A] = a("192.0.2.9")
    assert trust.peer_of("192.0.2.9", now=29) is None, "still the cached set before the TTL ends"
    assert trust.peer_of("192.0.2.9", now=30) == "sip:farm.example"
    assert trust.peer_of("192.0.2.1", now=30) is None, "a removed address is no longer trusted"


def test_ipv6_spellings_compare_equal_and_names_are_never_trusted():
    zone = farm((10, 0, "a.example", a("2001:db8::3")))
    trust = PeerTrust(["sip:farm.example"], lambda uri: peer_addresses(uri, zone, POLICY))

    assert trust.peer_of("2001:0db8:0:0::3", now=0) == "sip:farm.example"
    assert trust.peer_of("[2001:db8::3]", now=0) == "sip:farm.example"
    assert trust.peer_of("a.example", now=0) is None


def test_a_dns_failure_keeps_the_last_good_set_a_definite_empty_answer_clears_it():
    zone = farm((10, 0, "a.example", a("192.0.2.1")))
    trust = PeerTrust(["sip:farm.example"], lambda uri: peer_addresses(uri, zone, POLICY))
    assert trust.peer_of("192.0.2.1", now=0)

    zone.data["_sip._udp.farm.example"][RType.SRV] = Answer.failed(Status.TIMEOUT, "budget spent", ttl=5)
    zone.data["farm.example"][RType.NAPTR] = Answer.failed(Status.TIMEOUT, "budget spent", ttl=5)
    assert trust.peer_of("192.0.2.1", now=100) == "sip:farm.example", "serve stale while DNS fails"

    del zone.data["farm.example"]  # NXDOMAIN: the farm is gone
    assert trust.peer_of("192.0.2.1", now=200) is None


def test_numeric_peer_needs_no_dns_and_never_expires():
    zone = Zone({})
    trust = PeerTrust(["sip:192.0.2.7:5060"], lambda uri: peer_addresses(uri, zone, POLICY))

    assert trust.peer_of("192.0.2.7", now=0) == "sip:192.0.2.7:5060"
    assert trust.peer_of("192.0.2.7", now=10**9) == "sip:192.0.2.7:5060"
    assert zone.asked == []


def test_no_peers_configured_means_disabled():
    assert not PeerTrust([], lambda uri: (frozenset(), None)).enabled
