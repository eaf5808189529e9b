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
  With a :class:`HealthMemory` it also remembers failed targets across
  transactions (locator.health, RFC 3261 §21.5.4): they are tried last
  until their hold-down ends or they answer again.
* :class:`HealthMemory` - the hold-downs in Kamailio shared memory (the
  htable ``ko_health`` of cfg/edge.cfg), seen by every worker and by tm's
  timer process (which runs the failure route after a timeout).
* :class:`PeerGate` - "is this source address one of the farm's?" by the
  farms' DNS sets, refreshed as their TTLs expire (outbound.relay: the edge's
  farm is its registrar URI plus ``dns.peers``).
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import KSR

from locator.dns import Resolver, ResolverSettings, send_query, system_nameservers
from locator.failover import BranchOutcome, failover_verdict
from locator.health import HoldPolicy, Key, TargetHealth, key_of, key_of_uri, retry_after_seconds
from locator.peers import PeerTrust, peer_addresses
from locator.plan import Plan, Policy, Target, plan
from outbound.addresses import ip_family, is_ip_literal
from outbound.config import Config, DnsConfig
from outbound.decisions import Reply
from outbound.errors import ConfigError, SipSyntaxError
from outbound.memo import remember
from outbound.metrics import HOLD_DOWNS, REGISTRAR_FAILOVERS
from outbound.sipmsg import SipUri, is_hostname

from .names import ADDR_DEFINE, DNS_CURRENT_AVP, DNS_REMAINING_AVP, HEALTH_ITEM, HEALTH_TABLE
from .observe import OBSERVER
from .runtime import define, own_socket, send_reply

# The targets still to try for the current transaction, space-separated $du
# URIs; and the one being tried. Transaction AVPs reach the failure route.
LOG = "kemi-outbound: dns:"
# Shared memory for the hold-downs (cfg/edge.cfg: modparam("htable", "htable", "ko_health=>...")):
# one item holds the whole memory as text (locator.health.TargetHealth.to_text), bounded by
# dns.hold_down_entries; read and written under the htable's slot lock.
# The reply from the target, in a failure route (tmx $T_rpl)
RETRY_AFTER_PV = "$T_rpl($hdr(Retry-After))"
R = TypeVar("R")


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


# numeric URIs whose plan a worker keeps (a registrar URI, a Path's edge address)
FIXED_PLANS_MAX = 1024
# URIs whose last logged plan / held-down set a worker remembers, to log only a change
# (a request can name any host: never more than this many, a full memo starts again)
LOGGED_URIS_MAX = 1024


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
        self.hold_policy = HoldPolicy(dns.hold_down, dns.max_hold_down, dns.hold_down_entries)
        # SystemRandom: workers forked from one parent must not share a seed
        self.rng = rng if rng is not None else random.SystemRandom()
        # plans that looked nothing up (a numeric URI) are the same every time
        self._fixed_plans: dict[str, Plan] = {}

    @classmethod
    def for_kamailio(cls, config: Config) -> Locator:
        """Families narrowed to what the cfg listens on (define KO_ADDR)."""
        families = effective_families(config.dns, listen_families([define(ADDR_DEFINE)]), config.source)
        return cls(config.dns, families)

    def plan(self, uri: str) -> Plan:
        found = self._fixed_plans.get(uri)
        if found is not None:
            return found
        found = plan(uri, self.resolver.session(), self.rng, self.policy)
        if found.ttl is None and not found.problems and found.targets:
            remember(self._fixed_plans, uri, found, FIXED_PLANS_MAX)
        return found

    def resolve_next_hop(self, uri: str) -> list[str]:
        """The ``$du`` URIs to try for ``uri``, best first (empty: nothing found;
        call :meth:`plan` for the reasons)."""
        return [target.uri for target in self.plan(uri).targets]


def target_key(target: Target) -> Key:
    return key_of(target.transport, target.address, target.port)


class HealthMemory:
    """Hold-downs of failed targets where every Kamailio process sees them.

    With the htable module loaded (``KSR.htable``; cfg/edge.cfg defines the
    table ``ko_health``) the memory is one shared-memory item: a failure seen
    by tm's timer process (a timeout) or by any worker (a 503) steers the next
    transaction of every worker. Without htable it falls back to this process
    alone (said once in the log): then a timeout, handled in the timer
    process, is not seen by the workers at all.
    """

    def __init__(self, policy: HoldPolicy, clock: Callable[[], float]) -> None:
        self.policy = policy
        self.clock = clock  # time.monotonic: CLOCK_MONOTONIC is one clock for all processes
        self.local = TargetHealth(policy)
        self._shared: bool | None = None

    @property
    def shared(self) -> bool:
        if self._shared is None:
            self._shared = hasattr(KSR, "htable")
            if not self._shared:
                KSR.notice(f"{LOG} htable not loaded: hold-downs are remembered per process\n")
        return self._shared

    def current(self) -> TargetHealth:
        """The memory as it is now (a copy when shared)."""
        if not self.shared:
            return self.local
        return TargetHealth.from_text(self.policy, KSR.htable.sht_gete(HEALTH_TABLE, HEALTH_ITEM))

    def change(self, edit: Callable[[TargetHealth], R]) -> R:
        """Read, ``edit`` and write back the memory under the slot lock."""
        if not self.shared:
            return edit(self.local)
        KSR.htable.sht_lock(HEALTH_TABLE, HEALTH_ITEM)
        try:
            health = self.current()
            before = dict(health.held)
            result = edit(health)
            if health.held != before:
                if health.held:
                    KSR.htable.sht_sets(HEALTH_TABLE, HEALTH_ITEM, health.to_text())
                else:
                    KSR.htable.sht_rm(HEALTH_TABLE, HEALTH_ITEM)
            return result
        finally:
            KSR.htable.sht_unlock(HEALTH_TABLE, HEALTH_ITEM)

    def failed(self, target: str, retry_after: int | None, why: str) -> None:
        """``target`` (a ``$du`` URI) failed: hold it down, say so in the log."""
        key = key_of_uri(target)
        if key is None:
            return
        now = self.clock()
        seconds = self.change(lambda health: health.fail(key, now, retry_after))
        if seconds > 0:
            asked = "" if retry_after is None else f", Retry-After {retry_after}"
            OBSERVER.event("hold_down", HOLD_DOWNS, (), f"{target} held down for {seconds}s ({why}{asked})")

    def order(self, uris: list[str]) -> list[str]:
        """``$du`` URIs with the held-down ones last (TargetHealth.order)."""
        if len(uris) < 2:
            return uris
        memory = self.current()
        if not memory.held:
            return uris
        return memory.order(uris, self.clock(), lambda uri: key_of_uri(uri) or ("", uri, 0))

    def answered(self, target: str, status: int) -> None:
        """``target`` answered (anything but a 503): no longer held down."""
        key = key_of_uri(target)
        if key is None or not self.current().held.get(key):
            return  # the common case: nothing to clear, no lock taken
        if self.change(lambda health: health.succeed(key)):
            KSR.info(f"{LOG} {target} answered {status}: hold-down cleared\n")


def no_target_reply(found: Plan) -> Reply:
    """503 when nothing can be reached; the log line names the domain and why."""
    return Reply(503, "Service Unavailable", f"cannot locate {found.uri}: {found.describe()}", cause="locate_failed")


class FailoverRelay:
    """Relay to the targets of a URI one after the other (RFC 3263 §4.3)."""

    def __init__(self, locator: Locator, failure_route: str,
                 no_target: Callable[[Plan], Reply] = no_target_reply,
                 health: HealthMemory | None = None, reply_route: str = "") -> None:
        self.locator = locator
        self.failure_route = failure_route
        self.no_target = no_target
        # hold-downs across transactions; reply_route (armed only for a held-down
        # target) is where its answer clears the hold-down
        self.health = health
        self.reply_route = reply_route
        self._last_plan: dict[str, tuple[object, ...]] = {}
        self._last_held: dict[str, tuple[Target, ...]] = {}

    def _log_plan(self, found: Plan) -> None:
        """At info level when the targets of a URI change (per process), else debug."""
        if found.ttl is None and not found.problems:
            return  # a numeric URI: nothing was looked up
        line = f"{LOG} {found.uri} -> {found.describe()}\n"
        key = (found.targets, found.problems)
        if self._last_plan.get(found.uri) != key:
            remember(self._last_plan, found.uri, key, LOGGED_URIS_MAX)
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
        targets, memory = self._healthy_first(found)
        # we answer ourselves when no target takes the request
        KSR.tm.t_set_disable_internal_reply(1)
        if len(targets) > 1:
            KSR.tm.t_set_fr(0, self.locator.dns.branch_timeout_ms)
        if self._relay_next([t.uri for t in targets], memory):
            return True
        if KSR.tm.t_reply(503, "Service Unavailable") < 0:
            KSR.sl.send_reply(503, "Service Unavailable")
        KSR.notice(f"{LOG} no target of {found.uri} took the request\n")
        return False

    def _healthy_first(self, found: Plan) -> tuple[list[Target], TargetHealth | None]:
        """The plan's targets with the held-down ones last (locator.health);
        logged at info level when the held-down set of a URI changes."""
        targets = list(found.targets)
        if self.health is None or len(targets) < 2:
            return targets, None
        memory = self.health.current()
        now = self.locator.clock()
        ordered = memory.order(targets, now, target_key)
        held = tuple(t for t in targets if memory.is_held(target_key(t), now))
        if self._last_held.get(found.uri, ()) != held:
            remember(self._last_held, found.uri, held, LOGGED_URIS_MAX)
            if held:
                down = ", ".join(f"{t} ({memory.remaining(target_key(t), now):.0f}s)" for t in held)
                every = "; every target is, plan order kept" if len(held) == len(targets) else ""
                KSR.info(f"{LOG} {found.uri}: held down, tried last: {down}{every}\n")
            else:
                KSR.info(f"{LOG} {found.uri}: no target held down\n")
        return ordered, memory

    def on_failure(self) -> bool:
        """Failure route: a new branch to the next target when the failed one
        gave a 503, a transport error or no response at all. True when a new
        branch went out; otherwise tm relays the best reply it has."""
        failed = _avp(DNS_CURRENT_AVP)
        outcome = BranchOutcome(
            status=_int(KSR.pv.get("$T_reply_code")),
            timed_out=KSR.tm.t_branch_timeout() > 0,
            replied_before=KSR.tm.t_branch_replied() > 0,
            canceled=KSR.tm.t_is_canceled() > 0,
        )
        verdict = failover_verdict(outcome)
        remaining = _avp(DNS_REMAINING_AVP).split()
        self._remember(failed, outcome, verdict.retry, verdict.why)
        if not verdict.retry:
            KSR.info(f"{LOG} {failed}: {verdict.why}; no failover\n")
            return False
        if not remaining:
            KSR.notice(f"{LOG} {failed}: {verdict.why}; no target left\n")
            return False
        cause = "timeout" if outcome.timed_out else "503" if outcome.status == 503 else "transport_error"
        OBSERVER.event("registrar_failover", REGISTRAR_FAILOVERS, (cause,),
                       f"{failed}: {verdict.why}; trying {remaining[0]}")
        return self._relay_next(remaining, self.health.current() if self.health is not None else None)

    def _remember(self, failed: str, outcome: BranchOutcome, retry: bool, why: str) -> None:
        """Failure route: hold the target down when it failed (RFC 3261
        §21.5.4: a 503's Retry-After), clear it when it answered."""
        if self.health is None or not failed:
            return
        if retry:
            received_503 = outcome.status == 503 and not outcome.timed_out
            retry_after = retry_after_seconds(KSR.pv.get(RETRY_AFTER_PV)) if received_503 else None
            self.health.failed(failed, retry_after, why)
        elif not outcome.canceled:
            self.health.answered(failed, outcome.status)

    def on_reply(self) -> None:
        """Reply route (armed only when a held-down target was tried): any
        answer but a 503 shows the target serves again."""
        if self.health is None:
            return
        status = _int(KSR.kx.get_status())
        target = _avp(DNS_CURRENT_AVP)
        if status != 503 and target:
            self.health.answered(target, status)

    def _relay_next(self, remaining: list[str], memory: TargetHealth | None = None) -> bool:
        """t_relay to the first target that takes the request (a failed send is
        a transport error: on to the next one, and held down)."""
        now = self.locator.clock()
        while remaining:
            target = remaining.pop(0)
            _set_avp(DNS_CURRENT_AVP, target)
            _set_avp(DNS_REMAINING_AVP, " ".join(remaining))
            # $du through pv, not KSR.setdsturi: it also marks the R-URI as new, which
            # a failure route needs for t_relay to make a new branch (serial forking)
            KSR.pv.sets("$du", target)
            socket = own_socket_toward(target)
            if socket:
                KSR.pv.sets("$fs", socket)  # the farm knows us by our listen address
            KSR.tm.t_on_failure(self.failure_route)
            key = key_of_uri(target)
            if self.reply_route and memory is not None and key is not None and memory.is_held(key, now):
                KSR.tm.t_on_reply(self.reply_route)  # its answer may clear the hold-down
            if KSR.tm.t_relay() > 0:
                return True
            if remaining:
                OBSERVER.event("registrar_failover", REGISTRAR_FAILOVERS, ("transport_error",),
                               f"sending to {target} failed (transport error); trying {remaining[0]}")
            else:
                KSR.notice(f"{LOG} sending to {target} failed (transport error)\n")
            if self.health is not None:
                self.health.failed(target, None, "transport error")
        return False


class NextHopLocator:
    """The next hop of an in-dialog request (after loose_route) when a Route
    entry names it by host name: an edge that advertises a hostname (RFC 3327,
    RFC 3261 §16.12) is located by our locator, like the Path at the first
    request (RFC 3263), never by Kamailio's own resolver; addresses that did
    not answer lately (``health``) go last."""

    def __init__(self, locator: Locator, health: HealthMemory | None = None) -> None:
        self.locator = locator
        self.health = health

    def locate(self) -> bool:
        """Set ``$du`` to the best address of a named next hop. False (after a
        reply and a log line) when nothing is found or the name is no host."""
        next_hop = str(KSR.pv.get("$du") or "") or KSR.kx.get_ruri()
        if not next_hop:
            return True
        try:
            uri = SipUri.parse(next_hop)
        except SipSyntaxError:
            return True  # tm answers what it cannot send to
        host = uri.params.get("maddr") or uri.host
        if is_ip_literal(host):
            return True
        if not is_hostname(host):
            # neither an IP nor a host name (RFC 3261 §25.1): nothing to ask DNS about
            send_reply(Reply(400, "Bad Route", f"next hop {next_hop[:80]!r} names no host", cause="bad_route"))
            return False
        found = self.locator.plan(next_hop)
        if not found.targets:
            send_reply(Reply(503, "Service Unavailable", f"cannot locate the next hop {next_hop}: {found.describe()}",
                             cause="locate_failed"))
            return False
        uris = [target.uri for target in found.targets]
        if self.health is not None:
            uris = self.health.order(uris)
        KSR.setdsturi(uris[0])
        return True


class PeerGate:
    """Trusted peers by DNS name: the configured farms' address sets."""

    def __init__(self, locator: Locator, uris: Iterable[str]) -> None:
        self.locator = locator
        self.trust = PeerTrust(tuple(uris), self._resolve)
        self._lookup = locator.resolver.session()
        # the host names of the farm's URIs (lower case, no trailing dot): next
        # hops a device may name, resolved by us (outbound.relay)
        self.names = frozenset(SipUri.parse(uri).host.rstrip(".") for uri in self.trust.uris)

    @property
    def enabled(self) -> bool:
        return self.trust.enabled

    def _resolve(self, uri: str) -> tuple[frozenset[str], Plan]:
        addresses, found = peer_addresses(uri, self._lookup, self.locator.policy)
        if not addresses:
            KSR.notice(f"{LOG} trusted peer {uri} has no address now: {found.describe()}\n")
        return addresses, found

    def peer_of(self, source_ip: str) -> str | None:
        """Asked for every request at an edge: DNS (one budget for this request,
        however many sets need it) only when a set's TTL ran out."""
        now = self.locator.clock()
        if any(now >= peer.expires_at for peer in self.trust.sets):
            self._lookup = self.locator.resolver.session()
            for changed in self.trust.refresh(now):
                KSR.info(f"{LOG} trusted peer {changed.uri} = {', '.join(sorted(changed.addresses)) or 'nobody'}\n")
        return self.trust.peer_of(source_ip, now)

    def contains(self, source_ip: str) -> bool:
        """``source_ip`` (a request's transport source) is an address of a farm."""
        return self.peer_of(source_ip) is not None


@functools.lru_cache(maxsize=1)
def _own_family() -> str | None:
    return ip_family(define(ADDR_DEFINE) or "")


def own_socket_toward(uri: str) -> str:
    """Our listen socket (runtime.own_socket) for sending to ``uri``, a numeric
    ``$du``: "" when the families differ or the URI is no IP destination."""
    try:
        parsed = SipUri.parse(uri)
    except SipSyntaxError:
        return ""
    family = ip_family(parsed.host.strip("[]"))
    if family is None or family != _own_family():
        return ""
    return own_socket((parsed.params.get("transport") or "udp").lower())


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
