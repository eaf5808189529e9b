"""A scripted DNS for planner tests: answers from a dict, records every query."""

from __future__ import annotations

from dataclasses import dataclass, field

from locator.records import Address, Answer, Naptr, Query, Record, RType, Srv, Status, normalize_name


def naptr(order: int, pref: int, service: str, replacement: str, flags: str = "s", regexp: str = "") -> Naptr:
    return Naptr(order, pref, flags, service, regexp, replacement)


def srv(priority: int, weight: int, port: int, target: str) -> Srv:
    return Srv(priority, weight, port, target)


def a(*addresses: str) -> list[Record]:
    return [Address(x) for x in addresses]


@dataclass
class Zone:
    """name -> {rtype: records | Answer}. A name not listed is NXDOMAIN, a
    listed name without the type is NODATA; an Answer value is returned as is
    (for timeouts, SERVFAIL, ...)."""

    data: dict[str, dict[RType, list[Record] | Answer]]
    ttl: int = 300
    asked: list[Query] = field(default_factory=list)

    def __call__(self, query: Query) -> Answer:
        self.asked.append(query)
        names = {normalize_name(n): v for n, v in self.data.items()}
        node = names.get(normalize_name(query.name))
        if node is None:
            return Answer.failed(Status.NXDOMAIN, "", 30)
        value = node.get(query.rtype)
        if value is None:
            return Answer.failed(Status.NODATA, "", 30)
        if isinstance(value, Answer):
            return value
        return Answer.of(value, self.ttl)

    def asked_types(self) -> list[tuple[str, str]]:
        return [(q.name, q.rtype.value) for q in self.asked]
