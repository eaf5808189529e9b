"""Which bindings to fork to, in which order, and where each one goes (RFC 5626 §7, RFC 3261 §16.6).

The authoritative proxy never puts two flows of one (AOR, instance) into the
target set at once (§7); the other flows of that instance are kept for
failover on 430 or a locally generated 408/503 (§7, §9.3), tried most
recently refreshed first (§15 credits "most recent registration first").
Instances fork in parallel within one q-value and serially across q-values,
highest first (RFC 3261 §16.6). Bindings without +sip.instance are each an
"instance" of their own.

:func:`first_hop` reads where a binding's requests go first: the address a
first-hop REGISTER came from, or the stored Path (RFC 3327 §5), whose first
entry the adapter then turns into a next hop (a flow of our own, an edge by
address or by hostname).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .addresses import is_ip_literal
from .errors import SipSyntaxError
from .sipmsg import SipUri, parse_name_addr, split_values

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
    expires: int = 0  # when the binding expires (Unix time); 0: not known

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


_PERCENT = re.compile(r"%[0-9a-fA-F]{2}")

# URN namespaces whose namespace-specific string compares without case too:
# a UUID is hex (RFC 4122 §3: "case insensitive on input")
CASELESS_NSS = frozenset({"uuid"})


def normalize_instance(raw: str) -> str:
    """+sip.instance compares as a URN (RFC 5626 §4.1): quotes and <> dropped;
    "urn:" and the namespace id compare without case, the rest with case
    (RFC 8141 §3.1: lexical equivalence), except a UUID's hex (RFC 4122 §3);
    %-escapes in upper case (RFC 3986 §6.2.2.1). Not a URN: kept as written."""
    text = raw.strip().strip('"').strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    text = text.strip()
    scheme, _, rest = text.partition(":")
    nid, colon, nss = rest.partition(":")
    if scheme.lower() != "urn" or not colon:
        return text
    nid = nid.lower()
    nss = nss.lower() if nid in CASELESS_NSS else _PERCENT.sub(lambda m: m.group(0).upper(), nss)
    return f"urn:{nid}:{nss}"


def _flow_order(binding: Binding) -> tuple[int, int, str]:
    return (-binding.modified, binding.reg_id, binding.ruid)


def plan_forks(
    bindings: list[Binding] | tuple[Binding, ...],
    *,
    max_parallel: int,
    below_q: float | None = None,
    max_q: float | None = None,
    skip_groups: frozenset[str] = frozenset(),
    instance: str | None = None,
) -> ForkPlan:
    """Order bindings into waves.

    ``below_q`` keeps only instances whose q is lower; ``max_q`` those whose q
    is not higher (with ``skip_groups``: what is left after a wave failed,
    including same-q instances that spilled over ``max_parallel``);
    ``skip_groups`` drops instances already tried in this transaction;
    ``instance`` keeps that instance's bindings only (a request to its GRUU,
    RFC 5627 §6.1). A q-group larger than ``max_parallel`` spills into further waves.
    """
    groups: dict[str, list[Binding]] = {}
    for binding in bindings:
        if binding.group in skip_groups or (instance is not None and binding.instance != instance):
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


def other_flows(bindings: list[Binding] | tuple[Binding, ...], group: str, failed_ruid: str) -> tuple[Binding, ...]:
    """The flows of the same instance to try after ``failed_ruid`` failed, the
    next one first (§7, §9.3)."""
    return tuple(sorted((b for b in bindings if b.group == group and b.ruid != failed_ruid), key=_flow_order))


# ----- where a binding's requests go ------------------------------------------


@dataclass(frozen=True, slots=True)
class EdgeAddresses:
    """Where a branch toward an edge named in Path by hostname goes: the
    address tried now and the other addresses of that name, in the locator's
    order (RFC 3263 §4.3: "every address of a target before the next target")."""

    current: str
    rest: tuple[str, ...] = ()

    @classmethod
    def of(cls, found: list[str] | tuple[str, ...]) -> EdgeAddresses | None:
        """The resolved ``$du`` URIs, best first; None when there are none."""
        return cls(found[0], tuple(found[1:])) if found else None

    @property
    def all(self) -> tuple[str, ...]:
        return (self.current, *self.rest)

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


@dataclass(frozen=True, slots=True)
class Target:
    """Where one branch goes: Request-URI, next hop (``$du``; empty: the
    Request-URI itself), Route set, the socket to send from (empty: the
    adapter picks)."""

    ruri: str
    dst_uri: str = ""
    route: str = ""
    socket: str = ""
    record_route: str = ""  # our own entry facing a local flow (single-server mode)
    addresses: EdgeAddresses | None = None  # a Path hostname's addresses, dst_uri the current one


@dataclass(frozen=True, slots=True)
class Unusable:
    """A binding that has no usable target now: ``log`` says why (one line);
    ``forget`` when the binding itself is dead (its flow is known to be gone:
    RFC 5626 §7 invalidates it), otherwise it is kept and only skipped."""

    log: str
    forget: bool = False


@dataclass(frozen=True, slots=True)
class PathHop:
    """A binding's stored Path, read: the first entry parsed (its user part may
    be a flow token of ours) and every entry as written (RFC 3327 §5: the
    Path becomes the Route set)."""

    first: SipUri
    entries: tuple[str, ...]

    @property
    def dst_uri(self) -> str:
        """The first entry as a ``$du`` URI: host, port and transport only."""
        port = f":{self.first.port}" if self.first.port else ""
        transport = self.first.params.get("transport")
        return f"sip:{self.first.host}{port}" + (f";transport={transport}" if transport else "")

    @property
    def route(self) -> str:
        """The whole Path as the Route set toward the edge."""
        return ", ".join(self.entries)

    @property
    def route_after_first(self) -> str:
        """The Route set when the first entry is ours (we hold the flow ourselves)."""
        return ", ".join(self.entries[1:])


def first_hop(binding: Binding) -> Target | PathHop | Unusable:
    """Where ``binding``'s requests go first.

    Without Path (a first-hop registration): to the address the REGISTER came
    from (the registrar stored it as "received"), never to a name in its
    Contact, which only Kamailio's own resolver would look up; a Contact with
    an IP literal goes as it is. With a Path: its first entry, for the adapter
    to resolve; a Path that cannot be read is skipped (the binding is kept).
    """
    if not binding.path:
        if binding.received:
            return Target(binding.contact, binding.received)
        if not is_ip_literal(_contact_host(binding.contact)):
            return Unusable(f"binding {binding.ruid} names a host in its Contact and no address it came from; "
                            "skipped (no lookup of a name a device wrote)")
        return Target(binding.contact)
    try:
        entries = split_values(binding.path)
        first = parse_name_addr(entries[0]).sip_uri
    except (SipSyntaxError, IndexError) as exc:
        return Unusable(f"binding {binding.ruid} has an unusable Path ({exc}); skipped")
    return PathHop(first, tuple(entries))


def _contact_host(contact: str) -> str:
    try:
        return SipUri.parse(contact).host
    except SipSyntaxError:
        return ""
