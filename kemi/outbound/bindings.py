"""Which bindings to fork to, and in which order (RFC 5626 §7, RFC 3261 §16.6).

The authoritative proxy never puts two flows of one (AOR, instance) into the
target set at once (§7); the other flows of that instance are kept for
failover on 430 or a locally generated 408/503 (§7, §9.3), tried most
recently refreshed first (§15 credits "most recent registration first").
Instances fork in parallel within one q-value and serially across q-values,
highest first (RFC 3261 §16.6). Bindings without +sip.instance are each an
"instance" of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_Q = 1.0

InstanceKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Binding:
    """One usrloc contact, as the adapter read it (``instance`` already
    normalized, :func:`normalize_instance`)."""

    ruid: str
    contact: str
    path: str = ""
    instance: str = ""
    reg_id: int = 0
    q: float = DEFAULT_Q
    modified: int = 0
    outbound: bool = False
    received: str = ""  # where a first-hop REGISTER came from (sip:ip:port;transport=...)
    callid: str = ""
    cseq: int = 0

    @property
    def group(self) -> str:
        """Flows of one device share the key; a binding without instance is alone."""
        return f"instance:{self.instance}" if self.instance else f"ruid:{self.ruid}"

    @property
    def key(self) -> InstanceKey:
        """(instance, reg-id): how Kamailio 5.6's usrloc matches an instance binding."""
        return (self.instance, self.reg_id)


@dataclass(frozen=True, slots=True)
class InstanceQueue:
    """The flows of one instance, the one to try first at the front."""

    group: str
    flows: tuple[Binding, ...]

    @property
    def first(self) -> Binding:
        return self.flows[0]

    @property
    def q(self) -> float:
        return self.flows[0].q


@dataclass(frozen=True, slots=True)
class ForkPlan:
    """Waves of parallel branches: wave 0 first, the next wave only after the
    previous one failed. Every wave holds at most one flow per instance."""

    waves: tuple[tuple[InstanceQueue, ...], ...]

    @property
    def empty(self) -> bool:
        return not self.waves


def normalize_instance(raw: str) -> str:
    """+sip.instance compares as a URN (RFC 5626 §4.1): drop quotes and <>."""
    text = raw.strip().strip('"').strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    return text.strip().lower()


def _flow_order(binding: Binding) -> tuple[int, int, str]:
    return (-binding.modified, binding.reg_id, binding.ruid)


def plan_forks(
    bindings: list[Binding] | tuple[Binding, ...],
    *,
    max_parallel: int,
    below_q: float | None = None,
    max_q: float | None = None,
    skip_groups: frozenset[str] = frozenset(),
) -> ForkPlan:
    """Order bindings into waves.

    ``below_q`` keeps only instances whose q is lower; ``max_q`` those whose q
    is not higher (with ``skip_groups``: what is left after a wave failed,
    including same-q instances that spilled over ``max_parallel``);
    ``skip_groups`` drops instances already tried in this transaction.
    A q-group larger than ``max_parallel`` spills into further waves.
    """
    groups: dict[str, list[Binding]] = {}
    for binding in bindings:
        if binding.group in skip_groups:
            continue
        groups.setdefault(binding.group, []).append(binding)
    queues = [InstanceQueue(g, tuple(sorted(flows, key=_flow_order))) for g, flows in groups.items()]
    if below_q is not None:
        queues = [q for q in queues if q.q < below_q]
    if max_q is not None:
        queues = [q for q in queues if q.q <= max_q]
    queues.sort(key=lambda queue: (-queue.q, _flow_order(queue.first)))
    waves: list[tuple[InstanceQueue, ...]] = []
    current: list[InstanceQueue] = []
    for queue in queues:
        if current and (queue.q != current[0].q or len(current) >= max_parallel):
            waves.append(tuple(current))
            current = []
        current.append(queue)
    if current:
        waves.append(tuple(current))
    return ForkPlan(tuple(waves))


def next_flow(bindings: list[Binding] | tuple[Binding, ...], group: str, failed_ruid: str) -> Binding | None:
    """The flow of the same instance to try after ``failed_ruid`` failed (§7, §9.3)."""
    candidates = sorted(
        (b for b in bindings if b.group == group and b.ruid != failed_ruid), key=_flow_order
    )
    return candidates[0] if candidates else None


def failover_allowed(status: int, locally_generated: bool) -> bool:
    """RFC 5626 §7: replace a branch only after 430, or a 408/503 we generated
    ourselves (timeout with no reply, transport error; RFC 3261 §16.8-16.9).
    Any other final response ends that instance (checklist A4.3)."""
    if status == 430:
        return True
    return locally_generated and status in (408, 503)


@dataclass(frozen=True, slots=True)
class EdgeAddresses:
    """Where a branch toward an edge named in Path by hostname goes: the
    address tried now and the other addresses of that name, in the locator's
    order (RFC 3263 §4.3: "every address of a target before the next target",
    checklist B10). Kept with the branch as one line (:meth:`pack`)."""

    current: str
    rest: tuple[str, ...] = ()

    @classmethod
    def of(cls, found: list[str] | tuple[str, ...]) -> EdgeAddresses | None:
        """The resolved ``$du`` URIs, best first; None when there are none."""
        return cls(found[0], tuple(found[1:])) if found else None

    def pack(self) -> str:
        return " ".join((self.current, *self.rest))

    @classmethod
    def unpack(cls, text: str) -> EdgeAddresses | None:
        return cls.of(text.split())

    def after_failure(self, status: int, locally_generated: bool) -> EdgeAddresses | None:
        """The same binding at the next address, or None (then the flow has
        failed: RFC 5626 §7 failover to the instance's next flow).

        Only an edge that could not be reached counts (RFC 3263 §4.3): a 408
        or 503 this proxy generated itself (no reply at all before the timer,
        a transport error; RFC 3261 §16.8-16.9). A 430 is the edge's answer
        (the flow is gone there, RFC 5626 §11.5): another address of the same
        edge cannot bring the flow back. Any received reply is an answer too.
        """
        if not locally_generated or status not in (408, 503) or not self.rest:
            return None
        return EdgeAddresses(self.rest[0], self.rest[1:])


def caller_status(status: int) -> int | None:
    """What the caller sees instead of a flow failure (RFC 5626 §11.5): 430 is for
    proxies only, and our own 408/503 mean "nobody could be reached": 480."""
    if status in (430, 408, 503):
        return 480
    return None


def response_rank(status: int) -> int:
    """How tm ranks a final response when it picks the one for the caller (lower
    wins, RFC 3261 §16.7 step 6): 6xx, then 3xx, then 4xx (401, 407, 415, 420,
    484 first), then 5xx. Mirrors tm's get_prio (t_reply.c, 5.6)."""
    kind, xx = divmod(status, 100)
    base = {6: 1000, 3: 3000, 4: 4000, 5: 5000}.get(kind)
    if base is None:
        return 10000 + status
    if kind == 4 and xx not in (1, 7, 15, 20, 84):
        xx += 100
    return base + xx


def better_reply(best: int | None, status: int) -> int | None:
    """The best final response so far that is not a flow failure (checklist A6.3:
    a 430, or our own 408/503, ranks after every real answer)."""
    if caller_status(status) is not None or not 300 <= status < 700:
        return best
    if best is None or response_rank(status) < response_rank(best):
        return status
    return best


def caller_reply(picked: int, best_other: int | None) -> int | None:
    """What the caller gets instead of tm's pick when that pick is a flow failure:
    the best real answer of another branch unless its class ranks after 4xx (a
    5xx), e.g. 486 Busy from another device; else 480 (RFC 5626 §11.5, checklist
    A6.3: 430 ranks last). None: tm's pick stands."""
    mapped = caller_status(picked)
    if mapped is None:
        return None
    if best_other is not None and response_rank(best_other) < response_rank(500):
        return best_other
    return mapped
