"""The dnspython adapter without a network: TTL cache, negative answers, budget,
truncation, CNAMEs and every failure turned into an Answer (never an exception)."""

from __future__ import annotations

import dataclasses

import dns.exception
import dns.message
import dns.rcode
import dns.rrset
import pytest

from dns_fakes import SOA, Clock, Server, records, reply, silence
from locator.dns import Resolver, ResolverSettings
from locator.records import Address, Naptr, Query, RType, Srv, Status

SETTINGS = ResolverSettings(("192.0.2.53",), port=5353, timeout=2.0, attempt=0.5, cache_entries=100,
                            max_ttl=3600, negative_ttl=60, failure_ttl=5)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(clock) -> Server:
    return Server(clock)


def resolver(clock, server, **changes) -> Resolver:
    settings = dataclasses.replace(SETTINGS, **changes)
    return Resolver(settings, clock, server)


def ask(res: Resolver, name: str, rtype: RType):
    return res.session()(Query(name, rtype))


def test_srv_answer_is_parsed_and_cached_for_its_ttl(clock, server):
    server.answers["_sip._udp.farm.ko.test", "SRV"] = records(
        "_sip._udp.farm.ko.test. 60 IN SRV 10 5 5070 reg-a.ko.test.",
        "_sip._udp.farm.ko.test. 60 IN SRV 20 0 5070 reg-b.ko.test.",
    )
    res = resolver(clock, server)

    first = ask(res, "_sip._udp.farm.ko.test", RType.SRV)
    assert first.status is Status.OK and first.ttl == 60
    assert set(first.records) == {Srv(10, 5, 5070, "reg-a.ko.test"), Srv(20, 0, 5070, "reg-b.ko.test")}

    clock.now += 59
    again = ask(res, "_SIP._udp.FARM.ko.test.", RType.SRV)
    assert again.records == first.records and again.ttl == 1
    assert len(server.sent) == 1, "served from the cache within the TTL"

    clock.now += 1
    ask(res, "_sip._udp.farm.ko.test", RType.SRV)
    assert len(server.sent) == 2, "asked again once the TTL ran out"


def test_ttl_is_the_lowest_of_the_rrset_and_its_cname_chain_and_capped(clock, server):
    server.answers["alias.ko.test", "A"] = records(
        "alias.ko.test. 30 IN CNAME real.ko.test.",
        "real.ko.test. 90 IN A 192.0.2.1",
    )
    server.answers["long.ko.test", "A"] = records("long.ko.test. 86400 IN A 192.0.2.2")
    res = resolver(clock, server, max_ttl=600)

    alias = ask(res, "alias.ko.test", RType.A)
    assert alias.records == (Address("192.0.2.1"),) and alias.ttl == 30
    assert ask(res, "long.ko.test", RType.A).ttl == 600


def test_nxdomain_is_cached_for_the_soa_minimum_capped_by_negative_ttl(clock, server):
    res = resolver(clock, server)

    answer = ask(res, "nowhere.ko.test", RType.NAPTR)
    assert answer.status is Status.NXDOMAIN and answer.ttl == 20  # min(SOA TTL 300, MINIMUM 20)
    ask(res, "nowhere.ko.test", RType.NAPTR)
    assert len(server.sent) == 1

    capped = resolver(clock, Server(clock), negative_ttl=7)
    assert ask(capped, "nowhere.ko.test", RType.A).ttl == 7


def test_nodata_is_a_negative_answer(clock, server):
    server.answers["reg-a.ko.test", "AAAA"] = lambda request, *_: reply(request, authority=[SOA])
    answer = ask(resolver(clock, server), "reg-a.ko.test", RType.AAAA)

    assert answer.status is Status.NODATA and answer.ttl == 20


def test_naptr_records(clock, server):
    server.answers["farm.ko.test", "NAPTR"] = records(
        'farm.ko.test. 60 IN NAPTR 10 50 "s" "SIP+D2U" "" _sip._udp.farm.ko.test.')

    [record] = ask(resolver(clock, server), "farm.ko.test", RType.NAPTR).records
    assert record == Naptr(10, 50, "s", "SIP+D2U", "", "_sip._udp.farm.ko.test")


def test_servfail_tries_the_next_server_then_is_cached_briefly(clock, server):
    server.answers["broken.ko.test", "A"] = lambda request, *_: reply(request, rcode=dns.rcode.SERVFAIL)
    res = resolver(clock, server, nameservers=("192.0.2.53", "192.0.2.54"))

    answer = ask(res, "broken.ko.test", RType.A)
    assert answer.status is Status.SERVFAIL and answer.ttl == 5
    assert [s[0] for s in server.sent] == ["192.0.2.53", "192.0.2.54"]
    assert "SERVFAIL" in answer.detail
    ask(res, "broken.ko.test", RType.A)
    assert len(server.sent) == 2


def test_refused_is_an_error(clock, server):
    server.answers["elsewhere.org", "A"] = lambda request, *_: reply(request, rcode=dns.rcode.REFUSED)
    answer = ask(resolver(clock, server), "elsewhere.org", RType.A)

    assert answer.status is Status.ERROR and "REFUSED" in answer.detail


def test_a_silent_server_never_holds_a_request_past_the_budget(clock, server):
    """All queries of one request share dns.timeout_ms; each attempt gets at most
    dns.attempt_ms and never more than what is left; then TIMEOUT, no sleeping."""
    server.answers["slow.ko.test", "NAPTR"] = silence(clock)
    server.answers["_sip._udp.slow.ko.test", "SRV"] = silence(clock)
    res = resolver(clock, server, timeout=1.2, attempt=0.5)
    start = clock.now
    lookup = res.session()

    first = lookup(Query("slow.ko.test", RType.NAPTR))
    second = lookup(Query("_sip._udp.slow.ko.test", RType.SRV))

    assert first.status is Status.TIMEOUT and second.status is Status.TIMEOUT
    assert [round(s[3], 3) for s in server.sent] == [0.5, 0.5, 0.2]
    assert clock.now - start == pytest.approx(1.2)
    assert "budget" in second.detail


def test_truncated_udp_answer_is_asked_again_over_tcp(clock, server):
    def truncated_on_udp(request, server_ip, timeout, tcp):
        if not tcp:
            raise dns.message.Truncated()
        return reply(request, answer=[f"_sip._udp.big.ko.test. 60 IN SRV 10 {i} 5070 t{i}.ko.test." for i in range(3)])

    server.answers["_sip._udp.big.ko.test", "SRV"] = truncated_on_udp
    answer = ask(resolver(clock, server), "_sip._udp.big.ko.test", RType.SRV)

    assert answer.status is Status.OK and len(answer.records) == 3
    assert [s[4] for s in server.sent] == [False, True]


def test_truncated_answer_without_tcp_is_an_error_not_a_partial_answer(clock, server):
    def truncated_and_no_tcp(request, server_ip, timeout, tcp):
        if not tcp:
            raise dns.message.Truncated()
        raise ConnectionRefusedError(111, "Connection refused")

    server.answers["_sip._udp.big.ko.test", "SRV"] = truncated_and_no_tcp
    answer = ask(resolver(clock, server), "_sip._udp.big.ko.test", RType.SRV)

    assert answer.status is Status.ERROR and answer.records == ()
    assert "ConnectionRefusedError" in answer.detail


def test_cname_loop_in_one_answer_is_an_error(clock, server):
    server.answers["loop1.ko.test", "A"] = records(
        "loop1.ko.test. 60 IN CNAME loop2.ko.test.",
        "loop2.ko.test. 60 IN CNAME loop1.ko.test.",
    )
    answer = ask(resolver(clock, server), "loop1.ko.test", RType.A)

    assert answer.status is Status.ERROR and "CNAME loop" in answer.detail


def test_cname_loop_across_queries_is_an_error(clock, server):
    server.answers["x.example", "A"] = records("x.example. 60 IN CNAME y.example.")
    server.answers["y.example", "A"] = records("y.example. 60 IN CNAME x.example.")
    answer = ask(resolver(clock, server), "x.example", RType.A)

    assert answer.status is Status.ERROR and "CNAME loop" in answer.detail
    assert len(server.sent) == 2


def test_cname_to_another_zone_is_followed(clock, server):
    server.answers["alias.ko.test", "A"] = records("alias.ko.test. 40 IN CNAME host.example.")
    server.answers["host.example", "A"] = records("host.example. 300 IN A 192.0.2.8")
    answer = ask(resolver(clock, server), "alias.ko.test", RType.A)

    assert answer.records == (Address("192.0.2.8"),) and answer.ttl == 40


@pytest.mark.parametrize(
    "failure",
    [ValueError("bad wire data"), OSError(101, "Network is unreachable"), dns.exception.FormError("garbage")],
    ids=["value-error", "os-error", "form-error"],
)
def test_every_failure_is_an_answer_not_an_exception(clock, server, failure):
    def boom(*_):
        raise failure

    server.answers["odd.ko.test", "A"] = boom
    answer = ask(resolver(clock, server), "odd.ko.test", RType.A)

    assert answer.status is Status.ERROR and type(failure).__name__ in answer.detail


def test_a_name_that_is_not_a_dns_name_is_an_error(clock, server):
    answer = ask(resolver(clock, server), "x" * 70 + ".ko.test", RType.A)

    assert answer.status is Status.ERROR and server.sent == []


def test_least_recently_used_entries_leave_the_cache_first(clock, server):
    for name in ("a", "b", "c"):
        server.answers[f"{name}.ko.test", "A"] = records(f"{name}.ko.test. 60 IN A 192.0.2.1")
    res = resolver(clock, server, cache_entries=2)

    for name in ("a", "b", "a", "c"):
        ask(res, f"{name}.ko.test", RType.A)
    assert [key[0] for key in res.cache] == ["a.ko.test", "c.ko.test"]


def test_no_nameserver_is_an_error(clock, server):
    answer = ask(resolver(clock, server, nameservers=()), "farm.ko.test", RType.A)

    assert answer.status is Status.ERROR and "no name server" in answer.detail
