"""Plain values exchanged between the planner and the DNS adapter.

A :class:`Query` asks for one RRset (RFC 1035 §3.2.2 types A, RFC 3596
AAAA, RFC 2782 SRV, RFC 3403 NAPTR); an :class:`Answer` is what came back,
already reduced to what RFC 3263 needs, with the number of seconds it may
still be used (RFC 1035 §3.2.1 TTL; RFC 2308 for negative answers).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum


class RType(StrEnum):
    NAPTR = "NAPTR"
    SRV = "SRV"
    A = "A"
    AAAA = "AAAA"


FAMILY_RTYPE = {"ipv4": RType.A, "ipv6": RType.AAAA}


def normalize_name(name: str) -> str:
    """Lower case, no trailing dot: DNS names compare case-insensitively (RFC 4343)."""
    return name.strip().rstrip(".").lower()


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    rtype: RType

    def __str__(self) -> str:
        return f"{self.name} {self.rtype.value}"


@dataclass(frozen=True, slots=True)
class Naptr:
    """RFC 3403 §4.1; RFC 3263 §4.1 uses flags "s" and services SIP(S)+D2x."""

    order: int
    preference: int
    flags: str
    service: str
    regexp: str
    replacement: str


@dataclass(frozen=True, slots=True)
class Srv:
    """RFC 2782: a target host and port with priority and weight."""

    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True)
class Address:
    """One A (RFC 1035) or AAAA (RFC 3596) record."""

    address: str


Record = Naptr | Srv | Address


class Status(Enum):
    OK = "ok"  # NOERROR with records
    NXDOMAIN = "NXDOMAIN"  # the name does not exist (RFC 8020: nor any name below it)
    NODATA = "no data"  # the name exists, not this type (RFC 2308 §2.2)
    TIMEOUT = "timeout"  # no answer within the budget
    SERVFAIL = "SERVFAIL"  # the server could not answer (RFC 2308 §7.1)
    ERROR = "error"  # anything else: refused, malformed, truncated over TCP, CNAME loop

    @property
    def negative(self) -> bool:
        """A definite "there is nothing here" (cacheable per RFC 2308)."""
        return self in (Status.NXDOMAIN, Status.NODATA)

    @property
    def temporary(self) -> bool:
        """DNS itself failed; trying again later may work."""
        return self in (Status.TIMEOUT, Status.SERVFAIL, Status.ERROR)


@dataclass(frozen=True, slots=True)
class Answer:
    status: Status
    records: tuple[Record, ...] = ()
    ttl: int = 0
    detail: str = ""

    @classmethod
    def of(cls, records: tuple[Record, ...] | list[Record], ttl: int) -> Answer:
        records = tuple(records)
        return cls(Status.OK if records else Status.NODATA, records, ttl)

    @classmethod
    def failed(cls, status: Status, detail: str, ttl: int = 0) -> Answer:
        return cls(status, (), ttl, detail)

    def with_ttl(self, ttl: int) -> Answer:
        return Answer(self.status, self.records, ttl, self.detail)

    def describe(self) -> str:
        return self.status.value + (f" ({self.detail})" if self.detail else "")
