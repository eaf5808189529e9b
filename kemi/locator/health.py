"""Target health across transactions: hold-downs (RFC 3261 §21.5.4, RFC 3263 §4.3).

RFC 3263 §4.3 makes a client try the next target when one fails (a 503, a
transport error, a timeout with no response). That covers one transaction;
RFC 3261 §21.5.4 adds memory across transactions: a client that got a 503
"SHOULD NOT forward any other requests to that server for the duration
specified in the Retry-After header field, if present". This module is that
memory, pure (the time is passed in, no KSR, no clock):

* :meth:`TargetHealth.fail` holds a ``(transport, address, port)`` target
  down for a number of seconds: the 503's Retry-After (RFC 3261 §20.33)
  capped by ``max_seconds``, else ``default_seconds`` (a timeout, a
  transport error, a 503 without Retry-After).
* :meth:`TargetHealth.order` moves the held-down targets of a plan to the
  end. They are not removed: when every target is held down, they are all
  still tried, in the plan's order (a hold-down must never make a farm
  unreachable). The healthy ones keep the RFC 2782 priority / weighted order
  the planner gave them.
* :meth:`TargetHealth.succeed` clears a target that answered (any response
  but a 503 shows it is serving again).
* At most ``max_entries`` targets are remembered; expired entries go first,
  then those whose hold-down ends soonest.

:meth:`TargetHealth.to_text` / :meth:`TargetHealth.from_text` turn the memory
into one short string, so the adapter can keep it in Kamailio shared memory
(an htable item) where every worker process and tm's timer process see it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from outbound.addresses import canonical_ip, ip_family
from outbound.errors import SipSyntaxError
from outbound.sipmsg import SipUri

Key = tuple[str, str, int]  # (transport, address, port) as the planner's Target has them
T = TypeVar("T")

# RFC 3261 §20.33: Retry-After = delta-seconds [ comment ] *( SEMI retry-param )
_RETRY_AFTER = re.compile(r"\s*(\d{1,10})(?=\s|\(|;|$)")


@dataclass(frozen=True, slots=True)
class HoldPolicy:
    """How long failed targets are avoided (YAML ``dns.hold_down*``)."""

    default_seconds: int = 30  # timeout, transport error, 503 without Retry-After
    max_seconds: int = 300  # cap on any hold-down, Retry-After included (0: no memory)
    max_entries: int = 64  # targets remembered at most

    def seconds(self, retry_after: int | None) -> int:
        """The hold-down for a failure: Retry-After when the 503 had one
        (RFC 3261 §21.5.4), else the default; never above ``max_seconds``."""
        wanted = self.default_seconds if retry_after is None else retry_after
        return max(0, min(wanted, self.max_seconds))


def retry_after_seconds(value: object) -> int | None:
    """The delta-seconds of a Retry-After header value (RFC 3261 §20.33),
    e.g. ``"60 (maintenance);duration=600"`` -> 60; None when absent or not
    a number."""
    if not isinstance(value, str):
        return None
    found = _RETRY_AFTER.match(value)
    return int(found.group(1)) if found else None


def key_of(transport: str, address: str, port: int) -> Key:
    address = address.strip("[]")
    return (transport.lower(), canonical_ip(address) if ip_family(address) else address.lower(), port)


@functools.lru_cache(maxsize=1024)  # a process sees the few URIs its plans write
def key_of_uri(uri: str) -> Key | None:
    """The target key of a ``$du`` URI as the planner writes it
    (``sip:192.0.2.1:5070;transport=udp``); None when it is not one."""
    try:
        sip = SipUri.parse(uri)
    except SipSyntaxError:
        return None
    transport = sip.params.get("transport") or ("tls" if sip.scheme == "sips" else "udp")
    default_port = 5061 if transport == "tls" else 5060
    return key_of(transport, sip.host, sip.port or default_port)


class TargetHealth:
    """Hold-downs of failed targets (see module docstring)."""

    def __init__(self, policy: HoldPolicy, held: dict[Key, float] | None = None) -> None:
        self.policy = policy
        self.held: dict[Key, float] = dict(held or {})  # key -> end of the hold-down (s, the caller's clock)

    def fail(self, key: Key, now: float, retry_after: int | None = None) -> int:
        """Hold ``key`` down from ``now``; the number of seconds (0: not held).
        The latest failure decides: a newer, shorter Retry-After wins too."""
        seconds = self.policy.seconds(retry_after)
        if seconds <= 0 or self.policy.max_entries <= 0:
            self.held.pop(key, None)
            return 0
        self.held[key] = now + seconds
        self.prune(now)
        return seconds

    def succeed(self, key: Key) -> bool:
        """``key`` answered: no longer held down. True when it was."""
        return self.held.pop(key, None) is not None

    def is_held(self, key: Key, now: float) -> bool:
        until = self.held.get(key)
        return until is not None and now < until

    def remaining(self, key: Key, now: float) -> float:
        return max(0.0, self.held.get(key, now) - now)

    def prune(self, now: float) -> None:
        """Forget expired hold-downs; then keep the ``max_entries`` that last longest."""
        self.held = {k: until for k, until in self.held.items() if now < until}
        if len(self.held) > self.policy.max_entries:
            kept = sorted(self.held.items(), key=lambda item: item[1], reverse=True)[: self.policy.max_entries]
            self.held = dict(kept)

    def order(self, targets: Sequence[T], now: float, key: Callable[[T], Key]) -> list[T]:
        """Healthy targets first, in the order given (RFC 2782's); the held-down
        ones after them, in the order given too: all held down = order unchanged."""
        if not self.held:
            return list(targets)
        healthy = [t for t in targets if not self.is_held(key(t), now)]
        held = [t for t in targets if self.is_held(key(t), now)]
        return healthy + held

    def to_text(self) -> str:
        """One line: ``transport/address/port/until`` entries, space-separated."""
        return " ".join(f"{t}/{a}/{p}/{until:.3f}" for (t, a, p), until in self.held.items())

    @classmethod
    def from_text(cls, policy: HoldPolicy, text: object) -> TargetHealth:
        """The memory :meth:`to_text` wrote; malformed entries are ignored."""
        return cls(policy, dict(_entries(text.split() if isinstance(text, str) else ())))


def _entries(items: Iterable[str]) -> Iterable[tuple[Key, float]]:
    for item in items:
        parts = item.rsplit("/", 2)
        head = parts[0].split("/", 1)
        if len(parts) != 3 or len(head) != 2:
            continue
        try:
            yield (head[0], head[1], int(parts[1])), float(parts[2])
        except ValueError:
            continue
