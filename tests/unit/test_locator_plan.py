"""RFC 3263 §4 planner: transport, NAPTR, SRV, A/AAAA, every address, families."""

import random

import pytest

from locator.plan import Policy, Target, plan
from locator.records import Answer, RType, Status
from locator_zone import Zone, a, naptr, srv

UDP_TCP = Policy(("udp", "tcp"), ("ipv4", "ipv6"), 16)
WITH_TLS = Policy(("udp", "tcp", "tls"), ("ipv4", "ipv6"), 16)
V4_ONLY = Policy(("udp", "tcp"), ("ipv4",), 16)

# RFC 3263 §4.1's example: TLS preferred, then TCP, then UDP
RFC3263_EXAMPLE = {
    "example.com": {
        RType.NAPTR: [
            naptr(50, 50, "SIPS+D2T", "_sips._tcp.example.com."),
            naptr(90, 50, "SIP+D2T", "_sip._tcp.example.com"),
            naptr(100, 50, "SIP+D2U", "_sip._udp.example.com."),
        ],
    },
    "_sips._tcp.example.com": {RType.SRV: [srv(0, 0, 5061, "tls.example.com")]},
    "_sip._tcp.example.com": {RType.SRV: [srv(0, 0, 5060, "tcp.example.com")]},
    "_sip._udp.example.com": {RType.SRV: [srv(0, 0, 5060, "udp.example.com")]},
    "tls.example.com": {RType.A: a("192.0.2.3")},
    "tcp.example.com": {RType.A: a("192.0.2.2")},
    "udp.example.com": {RType.A: a("192.0.2.1")},
}


def run(uri, zone, policy=UDP_TCP, seed=0):
    return plan(uri, zone, random.Random(seed), policy)


def strs(found):
    return [str(t) for t in found.targets]


def test_rfc3263_example_client_without_tls_prefers_tcp_then_udp():
    """§4.1: discard services we cannot use; order by order, then preference."""
    found = run("sip:example.com", Zone(RFC3263_EXAMPLE))

    assert strs(found) == ["tcp:192.0.2.2:5060", "udp:192.0.2.1:5060"]


def test_rfc3263_example_client_with_tls_takes_sips_first_for_a_sip_uri():
    """§4.1: a client resolving a sip: URI SHOULD keep SIPS records if it has TLS."""
    found = run("sip:example.com", Zone(RFC3263_EXAMPLE), WITH_TLS)

    assert strs(found) == ["tls:192.0.2.3:5061", "tcp:192.0.2.2:5060", "udp:192.0.2.1:5060"]


def test_sips_uri_keeps_only_sips_d2t():
    found = run("sips:example.com", Zone(RFC3263_EXAMPLE), WITH_TLS)

    assert strs(found) == ["tls:192.0.2.3:5061"]


def test_sips_uri_is_never_downgraded_when_tls_is_missing():
    zone = Zone(RFC3263_EXAMPLE)
    found = run("sips:example.com", zone, UDP_TCP)

    assert found.targets == ()
    assert "never downgraded" in found.describe()
    assert zone.asked == []


def test_sips_without_sips_naptr_tries_sips_srv_then_tls_on_5061():
    zone = Zone({"example.net": {RType.NAPTR: [naptr(10, 10, "SIP+D2U", "_sip._udp.example.net")],
                                 RType.A: a("192.0.2.9")}})
    found = run("sips:example.net", zone, WITH_TLS)

    assert strs(found) == ["tls:192.0.2.9:5061"]
    assert ("_sips._tcp.example.net", "SRV") in zone.asked_types()
    assert ("_sip._udp.example.net", "SRV") not in zone.asked_types()


def test_transport_parameter_wins_and_skips_naptr():
    zone = Zone(RFC3263_EXAMPLE)
    found = run("sip:example.com;transport=udp", zone)

    assert strs(found) == ["udp:192.0.2.1:5060"]
    assert ("example.com", "NAPTR") not in zone.asked_types()


def test_transport_parameter_without_srv_uses_a_records_on_default_port():
    zone = Zone({"host.example.org": {RType.A: a("192.0.2.50")}})

    assert strs(run("sip:host.example.org;transport=tcp", zone)) == ["tcp:192.0.2.50:5060"]
    assert zone.asked_types()[0] == ("_sip._tcp.host.example.org", "SRV")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sip:192.0.2.7", "udp:192.0.2.7:5060"),
        ("sip:192.0.2.7:5080", "udp:192.0.2.7:5080"),
        ("sip:192.0.2.7;transport=tcp", "tcp:192.0.2.7:5060"),
        ("sips:192.0.2.7", "tls:192.0.2.7:5061"),
        ("sip:[2001:db8::7]:5090", "udp:[2001:db8::7]:5090"),
        ("sip:alice@192.0.2.7:5070;lr", "udp:192.0.2.7:5070"),
    ],
)
def test_numeric_host_uses_no_dns(uri, expected):
    zone = Zone({})
    found = run(uri, zone, WITH_TLS)

    assert strs(found) == [expected]
    assert zone.asked == [] and found.ttl is None


def test_explicit_port_skips_naptr_and_srv():
    """RFC 3263 §4.2: a name with a port is looked up as A/AAAA only, on that port."""
    zone = Zone({**RFC3263_EXAMPLE, "example.com": {**RFC3263_EXAMPLE["example.com"], RType.A: a("192.0.2.99")}})
    found = run("sip:example.com:5080", zone)

    assert strs(found) == ["udp:192.0.2.99:5080"]
    assert {rtype for _, rtype in zone.asked_types()} == {"A", "AAAA"}


def test_no_naptr_queries_srv_per_transport_in_preference_order():
    zone = Zone({
        "example.org": {},
        "_sip._udp.example.org": {RType.SRV: [srv(10, 0, 5060, "u.example.org")]},
        "_sip._tcp.example.org": {RType.SRV: [srv(10, 0, 5070, "t.example.org")]},
        "u.example.org": {RType.A: a("192.0.2.1")},
        "t.example.org": {RType.A: a("192.0.2.2")},
    })

    assert strs(run("sip:example.org", zone)) == ["udp:192.0.2.1:5060", "tcp:192.0.2.2:5070"]
    tcp_first = Policy(("tcp", "udp"), ("ipv4",), 8)
    assert strs(run("sip:example.org", zone, tcp_first)) == ["tcp:192.0.2.2:5070", "udp:192.0.2.1:5060"]
    assert ("_sips._tcp.example.org", "SRV") not in zone.asked_types()


def test_no_naptr_no_srv_falls_back_to_a_and_aaaa_on_the_default_port():
    zone = Zone({"example.org": {RType.A: a("192.0.2.1"), RType.AAAA: a("2001:db8::1")}})

    assert strs(run("sip:example.org", zone)) == ["udp:192.0.2.1:5060", "udp:[2001:db8::1]:5060"]


def test_lone_dot_target_means_not_available_and_no_a_fallback():
    zone = Zone({
        "example.org": {RType.NAPTR: [naptr(10, 10, "SIP+D2U", "_sip._udp.example.org")], RType.A: a("192.0.2.1")},
        "_sip._udp.example.org": {RType.SRV: [srv(0, 0, 0, ".")]},
    })
    found = run("sip:example.org", zone)

    assert found.targets == ()
    assert "not available" in found.describe()
    assert ("example.org", "A") not in zone.asked_types()


def test_priority_order_then_every_address_of_a_target_before_the_next():
    zone = Zone({
        "farm.example": {},
        "_sip._udp.farm.example": {RType.SRV: [srv(20, 0, 5070, "b.farm.example"), srv(10, 0, 5070, "a.farm.example")]},
        "a.farm.example": {RType.A: a("192.0.2.11", "192.0.2.12"), RType.AAAA: a("2001:db8::11")},
        "b.farm.example": {RType.A: a("192.0.2.21")},
    })

    assert strs(run("sip:farm.example", zone)) == [
        "udp:192.0.2.11:5070", "udp:192.0.2.12:5070", "udp:[2001:db8::11]:5070", "udp:192.0.2.21:5070",
    ]


def test_family_order_follows_policy():
    zone = Zone({"h.example": {RType.A: a("192.0.2.1"), RType.AAAA: a("2001:db8::1")}})

    v6_first = Policy(("udp",), ("ipv6", "ipv4"), 8)
    assert strs(run("sip:h.example:5060", zone, v6_first)) == ["udp:[2001:db8::1]:5060", "udp:192.0.2.1:5060"]


def test_ipv6_only_target_is_skipped_without_ipv6_and_aaaa_never_asked():
    zone = Zone({
        "farm.example": {},
        "_sip._udp.farm.example": {
            RType.SRV: [srv(10, 0, 5070, "v6.farm.example"), srv(20, 0, 5070, "v4.farm.example")],
        },
        "v6.farm.example": {RType.AAAA: a("2001:db8::6")},
        "v4.farm.example": {RType.A: a("192.0.2.4")},
    })
    found = run("sip:farm.example", zone, V4_ONLY)

    assert strs(found) == ["udp:192.0.2.4:5070"]
    assert "v6.farm.example: no ipv4 address" in found.describe()
    assert all(rtype != "AAAA" for _, rtype in zone.asked_types())


def test_numeric_ipv6_host_without_ipv6_gives_no_target():
    found = run("sip:[2001:db8::1]", Zone({}), V4_ONLY)

    assert found.targets == () and "ipv6 is not among dns.families" in found.describe()


def test_maddr_is_the_target():
    zone = Zone({"proxy.example": {RType.A: a("192.0.2.77")}})
    found = run("sip:bob@example.com;maddr=proxy.example;transport=udp", zone)

    assert strs(found) == ["udp:192.0.2.77:5060"]
    assert all(name != "example.com" for name, _ in zone.asked_types())


def test_nxdomain_stops_at_the_naptr_query_and_names_the_domain():
    zone = Zone({})
    found = run("sip:nowhere.example", zone)

    assert found.targets == () and not found.temporary
    assert zone.asked_types() == [("nowhere.example", "NAPTR")]
    assert "nowhere.example NAPTR: NXDOMAIN" in found.describe()


def test_srv_target_without_addresses_is_skipped():
    zone = Zone({
        "farm.example": {},
        "_sip._udp.farm.example": {
            RType.SRV: [srv(10, 0, 5070, "ghost.farm.example"), srv(20, 0, 5070, "b.farm.example")],
        },
        "ghost.farm.example": {},
        "b.farm.example": {RType.A: a("192.0.2.21")},
    })
    found = run("sip:farm.example", zone)

    assert strs(found) == ["udp:192.0.2.21:5070"]
    assert "ghost.farm.example: no ipv4/ipv6 address" in found.describe()


def test_every_srv_target_without_addresses_gives_no_target():
    zone = Zone({
        "farm.example": {},
        "_sip._udp.farm.example": {RType.SRV: [srv(10, 0, 5070, "ghost.farm.example")]},
    })
    found = run("sip:farm.example", zone)

    assert found.targets == () and "ghost.farm.example" in found.describe()


def test_timeouts_are_temporary_and_do_not_fall_back_to_a_records():
    timeout = Answer.failed(Status.TIMEOUT, "budget spent")
    zone = Zone({
        "farm.example": {RType.NAPTR: timeout, RType.A: a("192.0.2.1")},
        "_sip._udp.farm.example": {RType.SRV: timeout},
    })
    found = run("sip:farm.example", zone, Policy(("udp",), ("ipv4",), 4))

    assert found.targets == () and found.temporary
    assert ("farm.example", "A") not in zone.asked_types()
    assert "timeout" in found.describe()


def test_naptr_servfail_still_tries_srv():
    zone = Zone({
        "farm.example": {RType.NAPTR: Answer.failed(Status.SERVFAIL, "127.0.0.1: SERVFAIL")},
        "_sip._udp.farm.example": {RType.SRV: [srv(10, 0, 5070, "a.farm.example")]},
        "a.farm.example": {RType.A: a("192.0.2.1")},
    })

    assert strs(run("sip:farm.example", zone, V4_ONLY)) == ["udp:192.0.2.1:5070"]


def test_naptr_with_unsupported_or_non_terminal_services_is_ignored():
    zone = Zone({
        "example.org": {RType.NAPTR: [
            naptr(10, 10, "SIP+D2S", "_sip._sctp.example.org"),
            naptr(20, 10, "SIP+D2U", "_sip._udp.example.org", flags=""),
            naptr(30, 10, "E2U+sip", "_sip._udp.example.org"),
        ]},
        "_sip._udp.example.org": {RType.SRV: [srv(1, 0, 5062, "u.example.org")]},
        "u.example.org": {RType.A: a("192.0.2.1")},
    })
    found = run("sip:example.org", zone, V4_ONLY)

    # nothing usable in NAPTR: the SRV queries of §4.1 follow
    assert strs(found) == ["udp:192.0.2.1:5062"]
    assert ("_sip._sctp.example.org", "SRV") not in zone.asked_types()


def test_max_targets_caps_the_plan_and_the_lookups():
    records = [srv(10, 0, 5060, f"h{i}.example") for i in range(10)]
    zone = Zone({"many.example": {}, "_sip._udp.many.example": {RType.SRV: records},
                 **{f"h{i}.example": {RType.A: a(f"192.0.2.{i + 1}")} for i in range(10)}})
    found = run("sip:many.example", zone, Policy(("udp",), ("ipv4",), 3))

    assert len(found.targets) == 3
    assert sum(1 for _, rtype in zone.asked_types() if rtype == "A") == 3


def test_duplicate_targets_are_listed_once():
    zone = Zone({
        "dup.example": {},
        "_sip._udp.dup.example": {RType.SRV: [srv(10, 0, 5060, "x.example"), srv(20, 0, 5060, "x.example")]},
        "x.example": {RType.A: a("192.0.2.1")},
    })

    assert strs(run("sip:dup.example", zone, V4_ONLY)) == ["udp:192.0.2.1:5060"]


def test_plan_ttl_is_the_lowest_ttl_used():
    zone = Zone({"example.org": {RType.A: a("192.0.2.1")}}, ttl=42)

    assert run("sip:example.org", zone).ttl == 30  # the negative NAPTR/SRV answers carry 30 s


@pytest.mark.parametrize(
    ("uri", "policy", "why"),
    [
        ("sips:example.com;transport=udp", WITH_TLS, "cannot be used with sips"),
        ("sip:example.com;transport=carrier-pigeon", UDP_TCP, "cannot be used with sip"),
        ("sip:example.com;transport=tls", UDP_TCP, "not among dns.transports"),
        ("mailto:bob@example.com", UDP_TCP, "not a SIP URI"),
        ("sip:example.com;maddr=", UDP_TCP, "empty maddr"),
    ],
)
def test_unusable_uris_give_no_target_and_say_why(uri, policy, why):
    zone = Zone({})
    found = run(uri, zone, policy)

    assert found.targets == ()
    assert why in found.describe()
    assert zone.asked == []


def test_target_uri_for_kamailio():
    assert Target("udp", "192.0.2.1", 5070, "a").uri == "sip:192.0.2.1:5070;transport=udp"
    assert Target("tls", "2001:db8::1", 5061, "b").uri == "sip:[2001:db8::1]:5061;transport=tls"
