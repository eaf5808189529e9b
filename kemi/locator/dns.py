"""dnspython adapter: answers the planner's queries, with a TTL cache.

One :class:`Resolver` lives in each Kamailio worker process (module state is
per process after the fork), so the cache is per process: no locks, no
shared memory, each worker asks at most once per TTL.

* Time: every lookup of one request shares one budget (``dns.timeout_ms``);
  each query to one server gets at most ``dns.attempt_ms`` and never more
  than what is left. No sleeps, no retries after the budget: a worker is
  never blocked longer than the budget (plus one attempt's rounding).
* Truncated UDP answers (TC bit) are asked again over TCP (RFC 7766 §5).
* CNAMEs are followed, at most ``MAX_CNAME_HOPS`` deep; a loop is an error.
* Cache (RFC 2181 §5.2, RFC 2308): positive answers for the lowest TTL in
  the RRset and its CNAME chain (at most ``max_ttl``); NXDOMAIN / NODATA for
  min(SOA TTL, SOA MINIMUM) (at most ``negative_ttl``); SERVFAIL, timeouts
  and other failures for ``failure_ttl``. Least recently used entries go
  first when ``cache_entries`` is reached.

The clock is passed in (seconds, monotonic); so is the function that sends
one query, so tests can run without a network.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset

from .records import Address, Answer, Naptr, Query, Record, RType, Srv, Status, normalize_name

MAX_CNAME_HOPS = 8

# send(request, server, port, timeout, tcp) -> response; raises on timeout / truncation
Send = Callable[[dns.message.Message, str, int, float, bool], dns.message.Message]


def send_query(request: dns.message.Message, server: str, port: int, timeout: float, tcp: bool) -> dns.message.Message:
    if tcp:
        return dns.query.tcp(request, server, timeout=timeout, port=port)
    return dns.query.udp(request, server, timeout=timeout, port=port, raise_on_truncation=True)


def system_nameservers() -> tuple[str, ...]:
    """The servers of /etc/resolv.conf (used when dns.nameservers is empty)."""
    try:
        return tuple(dns.resolver.Resolver(configure=True).nameservers)
    except (dns.exception.DNSException, OSError):
        return ()


@dataclass(frozen=True, slots=True)
class ResolverSettings:
    nameservers: tuple[str, ...]
    port: int = 53
    timeout: float = 2.0
    attempt: float = 1.0
    cache_entries: int = 1024
    max_ttl: int = 3600
    negative_ttl: int = 60
    failure_ttl: int = 5


class Resolver:
    """Cached, time-bounded answers for :class:`Query` values."""

    def __init__(self, settings: ResolverSettings, clock: Callable[[], float], send: Send = send_query) -> None:
        self.settings = settings
        self.clock = clock
        self.send = send
        self.cache: OrderedDict[tuple[str, RType], tuple[float, Answer]] = OrderedDict()
        self.queries_sent = 0

    def session(self, budget: float | None = None) -> Callable[[Query], Answer]:
        """A lookup function for one request: all its queries share one budget."""
        deadline = self.clock() + (self.settings.timeout if budget is None else budget)
        return lambda query: self.lookup(query, deadline)

    def lookup(self, query: Query, deadline: float) -> Answer:
        key = (normalize_name(query.name), query.rtype)
        now = self.clock()
        cached = self.cache.get(key)
        if cached is not None:
            expires, answer = cached
            if now < expires:
                self.cache.move_to_end(key)
                return answer.with_ttl(max(0, int(expires - now)))
            del self.cache[key]
        if now >= deadline:
            return Answer.failed(Status.TIMEOUT, f"DNS budget of {self.settings.timeout:g}s spent")
        try:
            answer = self._resolve(key[0], query.rtype, deadline)
        except Exception as exc:  # noqa: BLE001 - a DNS problem must never escape into a route
            answer = Answer.failed(Status.ERROR, f"{type(exc).__name__}: {exc}")
        ttl = self._cache_ttl(answer)
        answer = answer.with_ttl(ttl)
        if ttl > 0 and self.settings.cache_entries > 0:
            self.cache[key] = (self.clock() + ttl, answer)
            self.cache.move_to_end(key)
            while len(self.cache) > self.settings.cache_entries:
                self.cache.popitem(last=False)
        return answer

    def _cache_ttl(self, answer: Answer) -> int:
        if answer.status is Status.OK:
            return min(answer.ttl, self.settings.max_ttl)
        if answer.status.negative:
            return min(answer.ttl, self.settings.negative_ttl)
        return self.settings.failure_ttl

    # ----- the network side -----

    def _resolve(self, name: str, rtype: RType, deadline: float) -> Answer:
        """Ask for ``name``/``rtype``, following CNAMEs across queries."""
        seen = [name]
        chain_ttl: int | None = None  # lowest TTL of the CNAMEs followed so far
        current = name
        for _ in range(MAX_CNAME_HOPS):
            response = self._ask(current, rtype, deadline)
            if isinstance(response, Answer):
                return response
            answer, canonical, cname_ttl = self._read(response, current, rtype)
            if cname_ttl is not None:
                chain_ttl = cname_ttl if chain_ttl is None else min(chain_ttl, cname_ttl)
            if answer is not None:
                return answer if chain_ttl is None else answer.with_ttl(min(chain_ttl, answer.ttl))
            if canonical in seen:
                return Answer.failed(Status.ERROR, f"CNAME loop: {' -> '.join([*seen, canonical])}")
            seen.append(canonical)
            current = canonical
        return Answer.failed(Status.ERROR, f"CNAME chain longer than {MAX_CNAME_HOPS}: {' -> '.join(seen)}")

    def _ask(self, name: str, rtype: RType, deadline: float) -> dns.message.Message | Answer:
        """One question to the servers in turn until one answers or time runs out."""
        servers: Sequence[str] = self.settings.nameservers
        if not servers:
            return Answer.failed(Status.ERROR, "no name server configured or in /etc/resolv.conf")
        request = dns.message.make_query(dns.name.from_text(name), dns.rdatatype.from_text(rtype.value))
        request.flags |= dns.flags.RD
        failures: list[str] = []
        hard: set[str] = set()  # servers that answered SERVFAIL / REFUSED / garbage this time
        while len(hard) < len(servers):
            for server in servers:
                if server in hard:
                    continue
                remaining = deadline - self.clock()
                if remaining <= 0:
                    return Answer.failed(Status.TIMEOUT, self._why(failures, "no answer"))
                timeout = min(remaining, self.settings.attempt)
                try:
                    self.queries_sent += 1
                    try:
                        response = self.send(request, server, self.settings.port, timeout, False)
                    except dns.message.Truncated:
                        remaining = deadline - self.clock()
                        if remaining <= 0:
                            return Answer.failed(Status.TIMEOUT, "truncated over UDP, no time left for TCP")
                        self.queries_sent += 1
                        response = self.send(request, server, self.settings.port,
                                             min(remaining, self.settings.attempt), True)
                except dns.exception.Timeout:
                    failures.append(f"{server}: timeout")
                    continue
                except (OSError, dns.exception.DNSException, EOFError) as exc:
                    failures.append(f"{server}: {type(exc).__name__} {exc}".rstrip())
                    hard.add(server)
                    continue
                rcode = response.rcode()
                if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                    return response
                failures.append(f"{server}: {dns.rcode.to_text(rcode)}")
                hard.add(server)
        status = Status.SERVFAIL if any(f.endswith("SERVFAIL") for f in failures) else Status.ERROR
        return Answer.failed(status, self._why(failures, "no server answered"))

    @staticmethod
    def _why(failures: list[str], default: str) -> str:
        unique = list(dict.fromkeys(failures))
        return "; ".join(unique[-3:]) if unique else default

    def _read(self, response: dns.message.Message, name: str,
              rtype: RType) -> tuple[Answer | None, str, int | None]:
        """(answer, "", cname TTL) when ``response`` settles it; (None, target,
        cname TTL) when it only names a CNAME target to ask for next. The
        cname TTL is the lowest TTL of the CNAMEs in the response (None: none)."""
        if response.rcode() == dns.rcode.NXDOMAIN:
            return Answer.failed(Status.NXDOMAIN, "", _negative_ttl(response, self.settings.negative_ttl)), "", None
        wanted = dns.rdatatype.from_text(rtype.value)
        owner = dns.name.from_text(name)
        cname_ttl: int | None = None
        seen = [owner]
        for _ in range(MAX_CNAME_HOPS * 2):
            rrset = _find(response, owner, wanted)
            if rrset is not None:
                return Answer.of(_records(rtype, rrset), rrset.ttl), "", cname_ttl
            cname = _find(response, owner, dns.rdatatype.CNAME)
            if cname is None:
                break
            cname_ttl = cname.ttl if cname_ttl is None else min(cname_ttl, cname.ttl)
            owner = cname[0].target
            if owner in seen:
                chain = " -> ".join(n.to_text(omit_final_dot=True) for n in [*seen, owner])
                return Answer.failed(Status.ERROR, f"CNAME loop: {chain}"), "", None
            seen.append(owner)
        target = normalize_name(owner.to_text())
        if target != normalize_name(name) and not _has_soa(response):
            return None, target, cname_ttl
        return Answer.failed(Status.NODATA, "", _negative_ttl(response, self.settings.negative_ttl)), "", cname_ttl


def _find(response: dns.message.Message, owner: dns.name.Name, rdtype: int) -> dns.rrset.RRset | None:
    for rrset in response.answer:
        if rrset.name == owner and rrset.rdtype == rdtype and rrset.rdclass == dns.rdataclass.IN:
            return rrset
    return None


def _has_soa(response: dns.message.Message) -> bool:
    return any(rrset.rdtype == dns.rdatatype.SOA for rrset in response.authority)


def _negative_ttl(response: dns.message.Message, default: int) -> int:
    """RFC 2308 §5: min(SOA TTL, SOA MINIMUM) of the authority section."""
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return min(rrset.ttl, rrset[0].minimum)
    return default


def _records(rtype: RType, rrset: dns.rrset.RRset) -> list[Record]:
    out: list[Record] = []
    for rdata in rrset:
        if rtype is RType.SRV:
            out.append(Srv(rdata.priority, rdata.weight, rdata.port, rdata.target.to_text(omit_final_dot=True)))
        elif rtype is RType.NAPTR:
            out.append(Naptr(rdata.order, rdata.preference, _text(rdata.flags), _text(rdata.service),
                             _text(rdata.regexp), rdata.replacement.to_text(omit_final_dot=True)))
        else:
            out.append(Address(rdata.address))
    return out


def _text(value: bytes | str) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value
