"""RFC 3263 §4 server location as a pure function.

:func:`plan` turns a SIP URI into the ordered list of (transport, address,
port) targets to try, one after the other, until one answers (RFC 3263 §4.3).
It does no I/O: every DNS answer comes from the ``lookup`` callable it is
given (the dnspython adapter in production, a dict in the tests), and the
RFC 2782 draw uses the ``rng`` it is given.

The steps, with the checklist rule (docs/compliance-dns.md) they implement:

* TARGET is the ``maddr`` parameter if present, else the host (B2).
* Transport: ``transport=`` wins; a numeric TARGET or an explicit port means
  UDP for sip:, TLS for sips: (B3); otherwise NAPTR, keeping only services of
  transports we can send on; a sips: URI keeps only ``SIPS+D2T``, never a
  downgrade (B4, B12); ordered by order, then preference.
* No usable NAPTR: SRV for each supported transport, ``_sip._udp``,
  ``_sip._tcp``, ``_sips._tcp`` (B5). No SRV at all: A/AAAA of TARGET on the
  default port (B5). A numeric TARGET is used as it is; a name with an
  explicit port is looked up as A/AAAA only, never SRV (B6).
* SRV: lowest priority first, weighted draw within a priority (B8, B9); a
  lone "." target means "not available" and stops the fallback to A/AAAA
  (B10); every address of a target before the next target (B10); only the
  address families we can send on, in the configured order (B11).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from outbound.addresses import canonical_ip, ip_family
from outbound.errors import SipSyntaxError
from outbound.sipmsg import SipUri, bracket

from .records import (
    FAMILY_RTYPE,
    Address,
    Answer,
    Naptr,
    Query,
    RType,
    Srv,
    Status,
    normalize_name,
)
from .srv import rfc2782_order, service_unavailable, usable

Lookup = Callable[[Query], Answer]

TRANSPORTS = ("udp", "tcp", "tls", "sctp")
DEFAULT_PORT = {"udp": 5060, "tcp": 5060, "sctp": 5060, "tls": 5061}
# RFC 3263 §4.1: NAPTR service field -> transport (TLS over SCTP is not offered)
NAPTR_SERVICES = {"sip+d2u": "udp", "sip+d2t": "tcp", "sip+d2s": "sctp", "sips+d2t": "tls"}
# RFC 3263 §4.1: SRV service labels per transport
SRV_LABELS = {"udp": "_sip._udp", "tcp": "_sip._tcp", "sctp": "_sip._sctp", "tls": "_sips._tcp"}


@dataclass(frozen=True, slots=True)
class Policy:
    """What this Kamailio can send on: transports in order of preference,
    address families in order of preference, and how many targets at most."""

    transports: tuple[str, ...] = ("udp", "tcp")
    families: tuple[str, ...] = ("ipv4", "ipv6")
    max_targets: int = 8


@dataclass(frozen=True, slots=True)
class Target:
    """One place to send the request: RFC 3263 §4.3's "next element"."""

    transport: str
    address: str
    port: int
    host: str

    @property
    def hostport(self) -> str:
        return f"{bracket(self.address)}:{self.port}"

    @property
    def uri(self) -> str:
        """As a destination URI for Kamailio ($du): an address, never a name."""
        return f"sip:{self.hostport};transport={self.transport}"

    def __str__(self) -> str:
        return f"{self.transport}:{self.hostport}"


@dataclass(frozen=True, slots=True)
class Problem:
    """A DNS answer that did not give targets, kept for the log line."""

    query: str
    why: str
    temporary: bool = False

    def __str__(self) -> str:
        return f"{self.query}: {self.why}"


@dataclass(frozen=True, slots=True)
class Plan:
    uri: str
    domain: str
    targets: tuple[Target, ...]
    problems: tuple[Problem, ...] = ()
    ttl: int | None = None  # None: no DNS answer was used (numeric host)

    @property
    def temporary(self) -> bool:
        """The plan is short because DNS failed (timeout, SERVFAIL, ...), not
        because the records say there is nothing."""
        return any(p.temporary for p in self.problems)

    def describe(self) -> str:
        found = ", ".join(str(t) for t in self.targets) or "no target"
        notes = "; ".join(str(p) for p in self.problems)
        ttl = "" if self.ttl is None else f" (ttl {self.ttl}s)"
        return f"{self.domain}: {found}{ttl}" + (f" [{notes}]" if notes else "")


def plan(uri: str | SipUri, lookup: Lookup, rng: random.Random, policy: Policy) -> Plan:
    """The ordered targets for ``uri`` (RFC 3263 §4.1, §4.2; RFC 2782)."""
    text = uri if isinstance(uri, str) else f"{uri.scheme}:{uri.host}"
    try:
        sip = uri if isinstance(uri, SipUri) else SipUri.parse(uri)
    except SipSyntaxError as exc:
        return Plan(text, "", (), (Problem(text, f"not a SIP URI: {exc}"),))
    planner = _Planner(text, lookup, rng, policy)
    planner.run(sip)
    return planner.result()


@dataclass
class _Planner:
    uri: str
    lookup: Lookup
    rng: random.Random
    policy: Policy
    domain: str = ""
    targets: list[Target] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    ttl: int | None = None

    def result(self) -> Plan:
        return Plan(self.uri, self.domain, tuple(self.targets), tuple(self.problems), self.ttl)

    @property
    def full(self) -> bool:
        return len(self.targets) >= self.policy.max_targets

    def problem(self, query: str, why: str, temporary: bool = False) -> None:
        self.problems.append(Problem(query, why, temporary))

    def ask(self, name: str, rtype: RType) -> Answer:
        query = Query(name, rtype)
        answer = self.lookup(query)
        self.ttl = answer.ttl if self.ttl is None else min(self.ttl, answer.ttl)
        if answer.status is not Status.OK and not (answer.status is Status.NODATA and rtype is not RType.SRV):
            # NODATA for NAPTR/A/AAAA is routine (no NAPTR, IPv4-only host); keep the rest for the log
            self.problem(str(query), answer.describe(), answer.status.temporary)
        return answer

    def run(self, sip: SipUri) -> None:
        secure = sip.scheme == "sips"
        maddr = (sip.params.get("maddr") or "") if "maddr" in sip.params else None
        host = normalize_name((sip.host if maddr is None else maddr).strip("[]"))
        self.domain = host
        if not host:
            self.problem(self.uri, "empty maddr")
            return
        # sips: only over TLS (never downgraded); sip: over anything we have, TLS too (RFC 3263 §4.1)
        allowed = tuple(t for t in self.policy.transports if t == "tls" or not secure)
        if secure and not allowed:
            self.problem(self.uri, "sips: needs TLS, which is not among dns.transports (never downgraded)")
            return
        transport = self.transport_param(sip.params.get("transport"), secure, allowed)
        if transport == "":
            return
        numeric = ip_family(host) is not None
        if numeric or sip.port is not None:
            # RFC 3263 §4.1/§4.2: no NAPTR, no SRV; UDP for sip:, TLS for sips:
            chosen = transport or self.default_transport(secure, allowed)
            if chosen is None:
                self.problem(self.uri, "no default transport among dns.transports")
                return
            self.add_addresses(host, sip.port or DEFAULT_PORT[chosen], chosen)
            return
        if transport:
            self.srv_then_addresses(host, [(transport, f"{SRV_LABELS[transport]}.{host}")], transport)
            return
        naptr = self.ask(host, RType.NAPTR)
        if naptr.status is Status.NXDOMAIN:
            return  # RFC 8020: nothing exists below a name that does not exist
        services = self.naptr_services(naptr, allowed)
        if services:
            self.srv_then_addresses(host, services, services[0][0])
            return
        fallback = self.default_transport(secure, allowed)
        # RFC 3263 §4.1: "_sip" services for a sip: URI, "_sips" for a sips: URI
        pairs = [(t, f"{SRV_LABELS[t]}.{host}") for t in allowed if secure or t != "tls"]
        self.srv_then_addresses(host, pairs, fallback)

    def transport_param(self, value: str | None, secure: bool, allowed: tuple[str, ...]) -> str | None:
        """RFC 3263 §4.1: an explicit transport parameter wins. "" = unusable."""
        if value is None:
            return None
        transport = value.strip().lower()
        if secure and transport == "tcp":
            transport = "tls"  # sips:...;transport=tcp is TLS over TCP (RFC 3261 §26.2.2)
        if transport not in TRANSPORTS or (secure and transport != "tls"):
            self.problem(self.uri, f"transport={value} cannot be used with {'sips' if secure else 'sip'}:")
            return ""
        if transport not in allowed:
            self.problem(self.uri, f"transport={value} is not among dns.transports")
            return ""
        return transport

    @staticmethod
    def default_transport(secure: bool, allowed: tuple[str, ...]) -> str | None:
        """UDP for sip:, TLS for sips: (RFC 3263 §4.1); else the first we have."""
        wanted = "tls" if secure else "udp"
        if wanted in allowed:
            return wanted
        return None if secure else next((t for t in allowed if t != "tls"), None)

    def naptr_services(self, answer: Answer, allowed: tuple[str, ...]) -> list[tuple[str, str]]:
        """(transport, SRV name) from the NAPTR records we can use, in order."""
        records = sorted((r for r in answer.records if isinstance(r, Naptr)), key=lambda r: (r.order, r.preference))
        services: list[tuple[str, str]] = []
        for record in records:
            transport = NAPTR_SERVICES.get(record.service.lower())
            replacement = normalize_name(record.replacement)
            if record.flags.lower() != "s" or record.regexp or not replacement:
                continue  # RFC 3263 §4.1 uses terminal "s" records with a replacement only
            if transport is None or transport not in allowed:
                continue  # RFC 3263 §4.1: discard transports we do not support (and SIP for sips:)
            if (transport, replacement) not in services:
                services.append((transport, replacement))
        return services

    def srv_then_addresses(self, host: str, pairs: Iterable[tuple[str, str]], fallback: str | None) -> None:
        """SRV per (transport, name); A/AAAA of ``host`` when there is no SRV at all."""
        found = False
        uncertain = False
        for transport, name in pairs:
            if self.full:
                return
            answer = self.ask(name, RType.SRV)
            uncertain = uncertain or answer.status.temporary
            if answer.status is not Status.OK:
                continue
            found = True
            records = [r for r in answer.records if isinstance(r, Srv)]
            if service_unavailable(records):
                self.problem(f"{name} SRV", 'target "." (service not available)')
                continue
            for record in rfc2782_order(usable(records), self.rng):
                if self.full:
                    return
                self.add_addresses(normalize_name(record.target), record.port, transport)
        if not found and not uncertain and fallback is not None:
            # RFC 3263 §4.2: no SRV records -> A/AAAA of the domain, default port
            self.add_addresses(host, DEFAULT_PORT[fallback], fallback)

    def add_addresses(self, host: str, port: int, transport: str) -> None:
        """Every address of ``host`` in the families we can send on (B10, B11)."""
        family = ip_family(host)
        if family is not None:
            if family in self.policy.families:
                self.add(Target(transport, canonical_ip(host), port, host))
            else:
                self.problem(host, f"{family} is not among dns.families")
            return
        before = len(self.targets)
        for family in self.policy.families:
            answer = self.ask(host, FAMILY_RTYPE[family])
            for record in answer.records:
                if isinstance(record, Address) and ip_family(record.address) == family:
                    self.add(Target(transport, canonical_ip(record.address), port, host))
        if len(self.targets) == before and not self.full:
            self.problem(host, f"no {'/'.join(self.policy.families)} address")

    def add(self, target: Target) -> None:
        if self.full or any(
            (t.transport, t.address, t.port) == (target.transport, target.address, target.port) for t in self.targets
        ):
            return
        self.targets.append(target)
