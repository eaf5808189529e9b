"""RFC 2782 target selection: priority order, then the weighted draw."""

from __future__ import annotations

import random
from collections.abc import Sequence
from itertools import groupby

from .records import Srv, normalize_name


def service_unavailable(records: Sequence[Srv]) -> bool:
    """RFC 2782: a lone SRV record whose target is "." says the service is
    decidedly not available at this domain."""
    return len(records) == 1 and normalize_name(records[0].target) == ""


def usable(records: Sequence[Srv]) -> list[Srv]:
    """Records that name a host ("." among other records is ignored)."""
    return [r for r in records if normalize_name(r.target)]


def weighted_order(records: Sequence[Srv], rng: random.Random) -> list[Srv]:
    """Order records of one priority by RFC 2782's selection algorithm.

    Arrange the records not yet ordered in any order (here: shuffled) with
    every weight-0 record at the beginning; compute the running sum of the
    weights; draw ``r`` uniformly from [0, sum] *inclusive*; take the first
    record whose running sum is >= r; remove it and repeat. A weight-0
    record is thus chosen first only when r == 0: rarely, but possible.
    """
    remaining = list(records)
    ordered: list[Srv] = []
    while remaining:
        rng.shuffle(remaining)
        remaining.sort(key=lambda r: r.weight != 0)  # stable: weight 0 first
        total = sum(r.weight for r in remaining)
        pick = rng.randint(0, total)
        running = 0
        for index, record in enumerate(remaining):
            running += record.weight
            if running >= pick:
                ordered.append(remaining.pop(index))
                break
    return ordered


def rfc2782_order(records: Sequence[Srv], rng: random.Random) -> list[Srv]:
    """Lowest priority first (a client MUST try the lowest-numbered priority it
    can reach); within one priority, :func:`weighted_order`."""
    ordered: list[Srv] = []
    by_priority = sorted(records, key=lambda r: r.priority)
    for _, group in groupby(by_priority, key=lambda r: r.priority):
        ordered.extend(weighted_order(list(group), rng))
    return ordered
