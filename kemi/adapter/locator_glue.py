"""KSR glue for locating servers by DNS (RFC 3263): relay with failover, peers.

Three pieces, each usable from any role's routes object:

* :class:`Locator` - one per worker process: the policy (transports and
  address families this Kamailio can send on), the dnspython resolver with
  its per-process TTL cache, and the RFC 2782 randomness.
  ``Locator.resolve_next_hop(uri)`` is the plain function: the ordered
  ``$du`` URIs for a SIP URI.
* :class:`FailoverRelay` - ``relay(uri)`` in a request route resolves the
  URI, relays to the first target and arms a failure route; ``on_failure()``
  in that failure route sends a new branch to the next target on 503, a
  transport error or silence, and on nothing else (locator.failover).
* :class:`PeerGate` - "is this source address one of the trusted peer
  farms?" by the farms' DNS sets, refreshed as their TTLs expire.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable

import KSR

from locator.dns import Resolver, ResolverSettings, send_query, system_nameservers
from locator.failover import BranchOutcome, failover_verdict
from locator.peers import PeerTrust, peer_addresses
from locator.plan import Plan, Policy, plan
from locator.records import ip_family
from outbound.config import Config, ConfigError, DnsConfig
from outbound.decisions import Reply

from .runtime import define, send_reply

# The targets still to try for the current transaction, space-separated $du
# URIs; and the one being tried. Transaction AVPs reach the failure route.
REMAINING_AVP = "$avp(ko_dns_remaining)"
CURRENT_AVP = "$avp(ko_dns_current)"
LOG = "kemi-outbound: dns:"


def listen_families(addresses: Iterable[str | None]) -> set[str]:
    """Families of the listen addresses we know (KO_ADDR); names tell nothing."""
    return {family for a in addresses if a and (family := ip_family(a)) is not None}


def effective_families(dns: DnsConfig, listening: set[str], source: str) -> tuple[str, ...]:
    """dns.families, minus the families Kamailio has no socket for (B11)."""
    if not listening:
        return dns.families
    kept = tuple(f for f in dns.families if f in listening)
    if not kept:
        raise ConfigError(source, "dns.families",
                          f"{', '.join(dns.families)}: Kamailio listens only on {', '.join(sorted(listening))}")
    return kept


class Locator:
    """RFC 3263 resolution for one worker process (see module docstring)."""

    def __init__(self, dns: DnsConfig, families: tuple[str, ...], *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, send: Callable[..., object] = send_query) -> None:
        self.dns = dns
        self.policy = Policy(dns.transports, families, dns.max_targets)
        settings = ResolverSettings(
            nameservers=dns.nameservers or system_nameservers(), port=dns.port,
            timeout=dns.timeout_ms / 1000, attempt=dns.attempt_ms / 1000, cache_entries=dns.cache_entries,
            max_ttl=dns.max_ttl, negative_ttl=dns.negative_ttl, failure_ttl=dns.failure_ttl,
        )
        self.resolver = Resolver(settings, clock, send)  # type: ignore[arg-type]
        self.clock = clock
        # SystemRandom: workers forked from one parent must not share a seed
        self.rng = rng if rng is not None else random.SystemRandom()

    @classmethod
    def for_kamailio(cls, config: Config) -> Locator:
        """Families narrowed to what the cfg listens on (define KO_ADDR)."""
        families = effective_families(config.dns, listen_families([define("KO_ADDR")]), config.source)
        return cls(config.dns, families)

    def plan(self, uri: str) -> Plan:
        return plan(uri, self.resolver.session(), self.rng, self.policy)

    def resolve_next_hop(self, uri: str) -> list[str]:
        """The ``$du`` URIs to try for ``uri``, best first (empty: nothing found;
        call :meth:`plan` for the reasons)."""
        return [target.uri for target in self.plan(uri).targets]


def no_target_reply(found: Plan) -> Reply:
    """503 when nothing can be reached; the log line names the domain and why."""
    return Reply(503, "Service Unavailable", f"cannot locate {found.uri}: {found.describe()}")


class FailoverRelay:
    """Relay to the targets of a URI one after the other (RFC 3263 §4.3)."""

    def __init__(self, locator: Locator, failure_route: str,
                 no_target: Callable[[Plan], Reply] = no_target_reply) -> None:
        self.locator = locator
        self.failure_route = failure_route
        self.no_target = no_target
        self._last_plan: dict[str, tuple[object, ...]] = {}

    def _log_plan(self, found: Plan) -> None:
        """At info level when the targets of a URI change (per process), else debug."""
        if found.ttl is None and not found.problems:
            return  # a numeric URI: nothing was looked up
        line = f"{LOG} {found.uri} -> {found.describe()}\n"
        key = (found.targets, found.problems)
        if self._last_plan.get(found.uri) != key:
            self._last_plan[found.uri] = key
            KSR.info(line)
        else:
            KSR.dbg(line)

    def relay(self, uri: str) -> bool:
        """Request route: resolve ``uri``, relay to the first target that takes
        the request; answer 503 when there is none. True when relayed."""
        found = self.locator.plan(uri)
        if not found.targets:
            send_reply(self.no_target(found))
            return False
        self._log_plan(found)
        # we answer ourselves when no target takes the request
        KSR.tm.t_set_disable_internal_reply(1)
        if len(found.targets) > 1:
            KSR.tm.t_set_fr(0, self.locator.dns.branch_timeout_ms)
        if self._relay_next([t.uri for t in found.targets]):
            return True
        if KSR.tm.t_reply(503, "Service Unavailable") < 0:
            KSR.sl.send_reply(503, "Service Unavailable")
        KSR.notice(f"{LOG} no target of {found.uri} took the request\n")
        return False

    def on_failure(self) -> bool:
        """Failure route: a new branch to the next target when the failed one
        gave a 503, a transport error or no response at all. True when a new
        branch went out; otherwise tm relays the best reply it has."""
        failed = _avp(CURRENT_AVP)
        outcome = BranchOutcome(
            status=_int(KSR.pv.get("$T_reply_code")),
            timed_out=KSR.tm.t_branch_timeout() > 0,
            replied_before=KSR.tm.t_branch_replied() > 0,
            canceled=KSR.tm.t_is_canceled() > 0,
        )
        verdict = failover_verdict(outcome)
        remaining = _avp(REMAINING_AVP).split()
        if not verdict.retry:
            KSR.info(f"{LOG} {failed}: {verdict.why}; no failover\n")
            return False
        if not remaining:
            KSR.notice(f"{LOG} {failed}: {verdict.why}; no target left\n")
            return False
        KSR.notice(f"{LOG} {failed}: {verdict.why}; trying {remaining[0]}\n")
        return self._relay_next(remaining)

    def _relay_next(self, remaining: list[str]) -> bool:
        """t_relay to the first target that takes the request (a failed send is
        a transport error: on to the next one)."""
        while remaining:
            target = remaining.pop(0)
            _set_avp(CURRENT_AVP, target)
            _set_avp(REMAINING_AVP, " ".join(remaining))
            # $du through pv, not KSR.setdsturi: it also marks the R-URI as new, which
            # a failure route needs for t_relay to make a new branch (serial forking)
            KSR.pv.sets("$du", target)
            KSR.tm.t_on_failure(self.failure_route)
            if KSR.tm.t_relay() > 0:
                return True
            KSR.notice(f"{LOG} sending to {target} failed (transport error)\n")
        return False


def claims_core(via_count: int, to_flow: bool) -> bool:
    """At an edge, a request claims to come from the core (a peer) when another
    proxy handled it (more than one Via, RFC 5626 §5.1's first-hop test) or
    when it asks to be sent over a UA's flow (RFC 5626 §5.3.1 incoming)."""
    return via_count > 1 or to_flow


class PeerGate:
    """Trusted peers by DNS name: the configured farms' address sets."""

    def __init__(self, locator: Locator, uris: Iterable[str]) -> None:
        self.locator = locator
        self.trust = PeerTrust(tuple(uris), self._resolve)
        self._lookup = locator.resolver.session()

    @property
    def enabled(self) -> bool:
        return self.trust.enabled

    def _resolve(self, uri: str) -> tuple[frozenset[str], Plan]:
        addresses, found = peer_addresses(uri, self._lookup, self.locator.policy)
        if not addresses:
            KSR.notice(f"{LOG} trusted peer {uri} has no address now: {found.describe()}\n")
        return addresses, found

    def peer_of(self, source_ip: str) -> str | None:
        now = self.locator.clock()
        # one DNS budget for this request, however many peer sets need a refresh
        self._lookup = self.locator.resolver.session()
        for changed in self.trust.refresh(now):
            KSR.info(f"{LOG} trusted peer {changed.uri} = {', '.join(sorted(changed.addresses)) or 'nobody'}\n")
        return self.trust.peer_of(source_ip, now)

    def refusal(self, source_ip: str) -> Reply | None:
        """403 for a request claiming to come from a peer from elsewhere."""
        if self.peer_of(source_ip) is not None:
            return None
        return Reply(403, "Forbidden",
                     f"{source_ip} claims to be a peer but is not in the DNS set of {', '.join(self.trust.uris)}")


def _avp(name: str) -> str:
    value = KSR.pv.get(name)
    return value if isinstance(value, str) else ""


def _set_avp(name: str, value: str) -> None:
    KSR.pv.unset(name)
    KSR.pv.sets(name, value)


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0
