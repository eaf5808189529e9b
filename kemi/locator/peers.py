"""Trusted peers by DNS name: a peer domain is every address of its
NAPTR/SRV/A/AAAA set (RFC 3263 §4), kept as long as the answers' TTLs allow.

An edge trusts requests that come from the core (the registrar farm) only
when their source address is in the farm's set; a registrar can trust its edge
farm the same way. The set is refreshed when it expires; when a refresh
fails for a DNS reason (timeout, SERVFAIL) the last good set is kept until
the next retry (serve-stale, RFC 8767 §4), and a definite "this name has no
servers" empties it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from outbound.addresses import canonical_ip, ip_family

from .plan import Lookup, Plan, Policy, plan

# how long a set lives when its answers carried TTL 0 or DNS failed (seconds)
MIN_REFRESH = 1


def peer_addresses(uri: str, lookup: Lookup, policy: Policy) -> tuple[frozenset[str], Plan]:
    """Every address RFC 3263 resolution of ``uri`` can reach, whatever the
    weighted order (a fixed seed: the order does not matter for a set)."""
    everything = replace(policy, max_targets=1 << 16)
    found = plan(uri, lookup, random.Random(0), everything)
    return frozenset(t.address for t in found.targets), found


@dataclass(slots=True)
class PeerSet:
    uri: str
    addresses: frozenset[str] = frozenset()
    expires_at: float = float("-inf")
    last: Plan | None = None


@dataclass(slots=True)
class PeerTrust:
    """Which configured peer, if any, an address belongs to.

    ``resolve(uri)`` gives the addresses and the plan (for its TTL and
    problems); ``now`` is passed in by the caller (seconds, monotonic)."""

    uris: Sequence[str]
    resolve: Callable[[str], tuple[frozenset[str], Plan]]
    sets: list[PeerSet] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sets = [PeerSet(uri) for uri in self.uris]

    @property
    def enabled(self) -> bool:
        return bool(self.sets)

    def refresh(self, now: float) -> list[PeerSet]:
        """Re-resolve the sets whose TTL ran out; return those that changed."""
        changed = []
        for peer in self.sets:
            if now < peer.expires_at:
                continue
            addresses, found = self.resolve(peer.uri)
            # no DNS involved (a numeric peer): never expires
            peer.expires_at = float("inf") if found.ttl is None else now + max(MIN_REFRESH, found.ttl)
            peer.last = found
            if not addresses and found.temporary:
                continue  # keep the last good set (serve-stale) until the next try
            if addresses != peer.addresses:
                peer.addresses = addresses
                changed.append(peer)
        return changed

    def peer_of(self, source_ip: str, now: float) -> str | None:
        """The peer URI whose set holds ``source_ip``, None when untrusted."""
        self.refresh(now)
        if ip_family(source_ip) is None:
            return None
        address = canonical_ip(source_ip)
        for peer in self.sets:
            if address in peer.addresses:
                return peer.uri
        return None
