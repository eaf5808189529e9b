"""Home proxy forking and flow failover (RFC 5626 §7) on Kamailio's usrloc and tm.

``outbound_lookup`` reads the AOR's bindings (reg_fetch_contacts / $ulc), asks
the core for a fork plan and creates one branch per instance of the first
wave. ``outbound_next_contact`` runs per failed branch (tm branch-failure
route): on 430 or a local 408/503 it removes that binding and starts the next
flow of the same instance; a binding whose Path names its edge by hostname
first gets the edge's other addresses on a local 408/503 (RFC 3263 §4.3).
The final failure route starts the next q-wave or maps flow failures to 480.

Per-transaction state lives in xavps (tm keeps them with the transaction, so
every worker and the timer process see them): ``ko_tx`` (AOR, wave q, the
instance groups tried) and one ``ko_b<slot>`` per branch (binding, Route). The
slot number travels in the branch flags (bits 16-30), which tm gives back in
branch and failure routes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import KSR

from outbound.addresses import is_ip_literal
from outbound.bindings import (
    Binding,
    EdgeAddresses,
    InstanceQueue,
    better_reply,
    caller_reply,
    caller_status,
    failover_allowed,
    next_flow,
    plan_forks,
)
from outbound.config import Config
from outbound.decisions import Reply
from outbound.errors import SipSyntaxError
from outbound.relay import SEAL_PARAM
from outbound.sipmsg import SipUri, is_hostname, parse_name_addr, split_values
from outbound.tokens import Flow, FlowTokenCodec, Verdict

from . import usrloc
from .locator_glue import HealthMemory, Locator, own_socket_toward
from .names import BRANCH_FAILURE_ROUTE, BRANCH_ROUTE, FAILURE_ROUTE, FLB_OUTBOUND, FORK_XAVP
from .runtime import send_reply, stream_flow_alive

SLOT_SHIFT = 16
SLOT_MASK = 0x7FFF
SEP = "\x1f"

# tm callback names (methods of the routes object); tests check they resolve.


@dataclass(frozen=True, slots=True)
class Target:
    """Where one branch goes: request URI, next hop, Route set, socket."""

    binding: Binding
    ruri: str
    dst_uri: str
    route: str
    socket: str = ""
    record_route: str = ""  # our own entry facing a local flow (single-server mode)
    addresses: EdgeAddresses | None = None  # a Path hostname's addresses, dst_uri the current one


class HomeProxy:
    """Forking and failover toward registered flows."""

    def __init__(self, config: Config, codec: FlowTokenCodec | None,
                 is_local_flow: Callable[[Flow], bool] | None = None, locator: Locator | None = None,
                 health: HealthMemory | None = None, seal: Callable[[str], str] | None = None,
                 own_path_only: bool = False) -> None:
        self.table = config.location_table
        self.max_parallel = config.max_parallel_branches
        self.first_reply_timeout_ms = config.first_reply_timeout_ms
        self.codec = codec
        self.is_local_flow = is_local_flow
        self.locator = locator
        # edge addresses (of Path hostnames) that did not answer go last for a while
        self.health = health
        # single-server mode: our Record-Route entries carry a seal of the Call-ID
        # (outbound.relay.dialog_seal), and only a Path entry of our own is trusted
        self.seal = seal
        self.own_path_only = own_path_only

    # ----- reading usrloc -------------------------------------------------

    def fetch(self, aor: str) -> list[Binding]:
        return usrloc.bindings(self.table, aor)

    # ----- building branches ---------------------------------------------

    def target(self, binding: Binding) -> Target | None:
        """Turn a binding into a branch target; None (with a log line) when its
        Path is garbage (the binding is kept) or names a local flow that is gone
        (the binding is removed, RFC 5626 §7)."""
        if not binding.path:
            # a first-hop registration: to the address it came from (the
            # registrar stored it as "received"), never to a name in its Contact,
            # which only Kamailio's own resolver would look up
            if binding.received:
                return Target(binding, binding.contact, binding.received, "")
            if not is_ip_literal(_contact_host(binding.contact)):
                KSR.notice(f"kemi-outbound: binding {binding.ruid} names a host in its Contact and no address "
                           "it came from; skipped (no lookup of a name a device wrote)\n")
                return None
            return Target(binding, binding.contact, "", "")
        try:
            hops = split_values(binding.path)
            first = parse_name_addr(hops[0]).sip_uri
        except (SipSyntaxError, IndexError) as exc:
            KSR.notice(f"kemi-outbound: binding {binding.ruid} has an unusable Path ({exc}); skipped\n")
            return None
        local = self._local_flow(first.user)
        if local is not None:
            # we hold this flow ourselves (single-server mode): send straight to it
            hops = hops[1:]
            if local.is_stream and not stream_flow_alive(local):
                self._forget(str(KSR.pv.get(f"$xavp({FORK_XAVP}=>aor)") or ""), binding, "its flow is gone")
                return None
            return Target(binding, binding.contact, local.destination, ", ".join(hops), local.socket,
                          record_route=local.local_uri(first.user))
        if self.own_path_only:
            KSR.notice(f"kemi-outbound: binding {binding.ruid} has a Path that is not ours; skipped\n")
            return None
        transport = first.params.get("transport")
        port = f":{first.port}" if first.port else ""
        dst = f"sip:{first.host}{port}" + (f";transport={transport}" if transport else "")
        if self.locator is not None and not is_ip_literal(first.host):
            if not is_hostname(first.host):
                KSR.notice(f"kemi-outbound: Path of {binding.ruid} names no host ({first.host[:60]!r}); skipped\n")
                return None
            # an edge named in Path by hostname: RFC 3263, like the edge finds us
            found = self.order(self.locator.resolve_next_hop(dst))
            if not found:
                KSR.notice(f"kemi-outbound: cannot locate {first.host} (Path of {binding.ruid}); skipped\n")
                return None
            addresses = EdgeAddresses(found[0], tuple(found[1:]))
            return Target(binding, binding.contact, addresses.current, ", ".join(hops), addresses=addresses)
        return Target(binding, binding.contact, dst, ", ".join(hops))

    def order(self, uris: list[str]) -> list[str]:
        """A hostname's addresses, those held down (no answer lately) last."""
        return self.health.order(uris) if self.health is not None else uris

    def _local_flow(self, user: str | None) -> Flow | None:
        if not user or self.codec is None or self.is_local_flow is None:
            return None
        decoded = self.codec.decode(user)
        if decoded.verdict is not Verdict.VALID or decoded.flow is None:
            return None
        return decoded.flow if self.is_local_flow(decoded.flow) else None

    def _first_usable(self, queue: InstanceQueue) -> Target | None:
        """The first flow of an instance that can be used; dead local flows are
        removed on the way (RFC 5626 §7: a flow known dead is invalidated)."""
        for binding in queue.flows:
            target = self.target(binding)
            if target is not None:
                return target
        return None

    def _new_slot(self) -> int:
        slot = int(KSR.pv.get(f"$xavp({FORK_XAVP}=>slots)") or 0) + 1
        KSR.pv.seti(f"$xavp({FORK_XAVP}[0]=>slots)", slot)
        return slot & SLOT_MASK

    def _add_branch(self, target: Target, *, use_ruri: bool) -> None:
        slot = self._new_slot()
        KSR.pv.sets(f"$xavp(ko_b{slot}=>v)", BranchState(
            target.binding.ruid, target.binding.group, target.route, target.record_route,
            target.binding.outbound, target.addresses.pack() if target.addresses else "").pack())
        flags = (slot << SLOT_SHIFT) | ((1 << FLB_OUTBOUND) if target.binding.outbound else 0)
        # toward an edge: from our listen address, by which the edge knows its farm
        socket = target.socket or (own_socket_toward(target.dst_uri) if target.dst_uri else "")
        if use_ruri:
            KSR.pv.sets("$ru", target.ruri)
            if target.dst_uri:
                KSR.setdsturi(target.dst_uri)
            else:
                KSR.resetdsturi()
            if socket:
                KSR.pv.sets("$fs", socket)
            KSR.pv.seti("$bf", flags)
            return
        KSR.pvx.sbranch_reset()
        KSR.pv.sets("$sbranch(uri)", target.ruri)
        if target.dst_uri:
            KSR.pv.sets("$sbranch(dst_uri)", target.dst_uri)
        if socket:
            KSR.pv.sets("$sbranch(send_socket)", socket)
        KSR.pv.seti("$sbranch(flags)", flags)
        KSR.pvx.sbranch_append()

    def _arm(self) -> None:
        KSR.tm.t_on_branch(BRANCH_ROUTE)
        KSR.tm.t_on_branch_failure(BRANCH_FAILURE_ROUTE)
        KSR.tm.t_on_failure(FAILURE_ROUTE)
        if KSR.is_INVITE() and self.first_reply_timeout_ms > 0:
            # a live edge answers 100 Trying at once: a dead one is given up quickly
            KSR.tm.t_set_fr(0, self.first_reply_timeout_ms)

    def _start_wave(self, aor: str, queues: tuple[InstanceQueue, ...], *, in_request: bool) -> int:
        started = 0
        for queue in queues:
            target = self._first_usable(queue)
            self._mark_tried(queue.group)
            if target is None:
                continue
            self._add_branch(target, use_ruri=in_request and started == 0)
            started += 1
        return started

    def _mark_tried(self, group: str) -> None:
        tried = str(KSR.pv.get(f"$xavp({FORK_XAVP}=>tried)") or "")
        KSR.pv.sets(f"$xavp({FORK_XAVP}[0]=>tried)", f"{tried}|{group}")

    def _tried(self) -> frozenset[str]:
        return frozenset(g for g in str(KSR.pv.get(f"$xavp({FORK_XAVP}=>tried)") or "").split("|") if g)

    # ----- the three entry points ----------------------------------------

    def outbound_lookup(self) -> int:
        """Fork to the first wave of the AOR's bindings (RFC 5626 §7). Returns 1
        when branches were relayed, -1 when a reply was sent instead."""
        aor = KSR.kx.get_ruri()
        bindings = self.fetch(aor)
        if not bindings:
            send_reply(Reply(404, "Not Found", f"no binding for {aor}"))
            return -1
        plan = plan_forks(bindings, max_parallel=self.max_parallel)
        KSR.pv.sets(f"$xavp({FORK_XAVP}=>aor)", aor)
        for index, wave in enumerate(plan.waves):
            KSR.pv.sets(f"$xavp({FORK_XAVP}[0]=>q)", repr(wave[0].q))
            if self._start_wave(aor, wave, in_request=True):
                break
            if index == len(plan.waves) - 1:
                send_reply(Reply(480, "Temporarily Unavailable", f"no usable flow for {aor}"))
                return -1
        self._arm()
        if KSR.tm.t_relay() < 0:
            # every branch failed at once (a TCP contact refusing the connection):
            # a transport error is a 503 of our own (RFC 3261 §16.9), which the
            # caller sees as 480 like any flow failure (RFC 5626 §11.5), never
            # a 500 "No error" from sl_reply_error
            send_reply(Reply(480, "Temporarily Unavailable",
                             f"could not send to any binding of {aor}"))
            return -1
        return 1

    def branch_route(self) -> None:
        """Per branch, just before sending: the binding's Path becomes the Route
        set (RFC 3327 §5); in single-server mode the Record-Route gets one entry
        per side of the dialog, each with its flow token (RFC 5626 §5.3)."""
        slot = (int(KSR.pv.get("$bf") or 0) >> SLOT_SHIFT) & SLOT_MASK
        if not slot:
            return
        state = _branch_state(slot)
        route = state.route
        if route:
            KSR.hdr.insert(f"Route: {route}\r\n")
        callee_side = state.record_route
        caller_side = str(KSR.pv.get("$xavp(ko_rr=>a)") or "")
        entries = [e for e in (callee_side, caller_side) if e]
        if entries:
            pair = ";r2=on" if len(entries) == 2 else ""
            seal = f";{SEAL_PARAM}={self.seal(KSR.kx.get_callid())}" if self.seal is not None else ""
            KSR.hdr.insert("Record-Route: " + ", ".join(f"<{e};lr{pair}{seal}>" for e in entries) + "\r\n")

    def outbound_next_contact(self) -> None:
        """Branch failed: on 430 or our own 408/503, drop that binding and try the
        next flow of the same instance; otherwise leave the instance alone."""
        if KSR.tm.t_is_canceled() > 0:
            return  # the caller gave up: no new branches
        status = int(KSR.pv.get("$T_reply_code") or 0)
        self._remember_answer(status)
        locally = KSR.tm.t_branch_replied() < 0 and status in (408, 503)
        slot = (int(KSR.pv.get("$T_branch(flags)") or 0) >> SLOT_SHIFT) & SLOT_MASK
        if not slot or not failover_allowed(status, locally):
            return
        aor = str(KSR.pv.get(f"$xavp({FORK_XAVP}=>aor)") or "")
        state = _branch_state(slot)
        ruid, group = state.ruid, state.group
        if not aor or not ruid:
            KSR.notice(f"kemi-outbound: {status} on a branch without flow state; nothing to fail over\n")
            return
        if self._next_address(aor, state, status, locally):
            return
        if not state.outbound:
            # 430 is an edge's word about a flow (§11.5); a plain binding has none
            KSR.notice(f"kemi-outbound: {status} from {ruid} of {aor}, which is no outbound flow: binding kept\n")
            return
        KSR.notice(f"kemi-outbound: flow {ruid} of {aor} failed with {status}"
                   f"{' (local)' if locally else ''}; removing it\n")
        usrloc.unregister(self.table, aor, ruid)
        remaining = self.fetch(aor)
        while True:
            binding = next_flow(remaining, group, ruid)
            if binding is None:
                KSR.notice(f"kemi-outbound: no flow left for {group} of {aor}\n")
                return
            target = self.target(binding)
            if target is not None:
                break
            remaining = [b for b in remaining if b.ruid != binding.ruid]
        self._add_branch(target, use_ruri=False)
        self._arm()
        if KSR.tm.t_relay() < 0:
            KSR.notice(f"kemi-outbound: could not start the next flow {binding.ruid}\n")

    def _next_address(self, aor: str, state: BranchState, status: int, locally: bool) -> bool:
        """The edge named in the binding's Path could not be reached at this
        address (our own 408/503): the same binding to the edge's next address
        (RFC 3263 §4.3, checklist B10; outbound.bindings.EdgeAddresses). True
        when a new branch went out; False: the flow failed (all addresses tried)."""
        addresses = EdgeAddresses.unpack(state.addresses)
        following = addresses.after_failure(status, locally) if addresses is not None else None
        if addresses is None or status == 430 or not locally:
            return False
        if self.health is not None:
            # later calls (and this dialog's ACK, BYE) try it last (locator.health)
            self.health.failed(addresses.current, None, f"{status} local")
        if following is None:
            return False
        binding = next((b for b in self.fetch(aor) if b.ruid == state.ruid), None)
        if binding is None:
            return False  # removed meanwhile (another branch's 430, a de-registration)
        while following is not None:
            KSR.notice(f"kemi-outbound: edge of {state.ruid} of {aor} unreachable at {addresses.current} "
                       f"({status}{' local' if locally else ''}); trying {following.current}\n")
            self._add_branch(Target(binding, binding.contact, following.current, state.route,
                                    addresses=following), use_ruri=False)
            self._arm()
            if KSR.tm.t_relay() > 0:
                return True
            # could not even send there: a transport error of our own, next address
            if self.health is not None:
                self.health.failed(following.current, None, "transport error")
            addresses, status, locally = following, 503, True
            following = addresses.after_failure(status, locally)
        return False

    def failure_route(self) -> None:
        """All branches done: next q-wave (RFC 3261 §16.6) unless a 6xx or a
        cancel ended the call; a flow failure never reaches the caller."""
        status = int(KSR.pv.get("$T_reply_code") or 0)
        if KSR.tm.t_is_canceled() > 0:
            if caller_status(status) is not None:  # never a 430 to the caller (§11.5)
                KSR.tm.t_reply(487, "Request Terminated")
            return
        aor = str(KSR.pv.get(f"$xavp({FORK_XAVP}=>aor)") or "")
        if aor and not 600 <= status < 700:
            current = float(str(KSR.pv.get(f"$xavp({FORK_XAVP}=>q)") or "1.0"))
            plan = plan_forks(self.fetch(aor), max_parallel=self.max_parallel, max_q=current,
                              skip_groups=self._tried())
            for wave in plan.waves:
                KSR.pv.sets(f"$xavp({FORK_XAVP}[0]=>q)", repr(wave[0].q))
                if self._start_wave(aor, wave, in_request=False):
                    self._arm()
                    if KSR.tm.t_relay() > 0:
                        return
        best = int(KSR.pv.get(f"$xavp({FORK_XAVP}=>best)") or 0) or None
        sent = caller_reply(status, best)
        if sent is not None:
            # tm ranks 430 (and our 408) before 480/486: a flow failure never hides
            # another device's real answer, and never reaches the caller (A6.3)
            reason = str(KSR.pv.get(f"$xavp({FORK_XAVP}=>best_reason)") or "") if sent == best else ""
            KSR.tm.t_reply(sent, reason or ("Temporarily Unavailable" if sent == 480 else "Request Failed"))

    def _remember_answer(self, status: int) -> None:
        """Keep the best real final answer of any branch (outbound.bindings.better_reply)."""
        best = int(KSR.pv.get(f"$xavp({FORK_XAVP}=>best)") or 0) or None
        kept = better_reply(best, status)
        if kept is not None and kept != best:
            KSR.pv.seti(f"$xavp({FORK_XAVP}[0]=>best)", kept)
            KSR.pv.sets(f"$xavp({FORK_XAVP}[0]=>best_reason)", str(KSR.pv.get("$T_rpl($rr)") or ""))

    def _forget(self, aor: str, binding: Binding, why: str) -> None:
        KSR.notice(f"kemi-outbound: removing binding {binding.ruid} of {aor}: {why}\n")
        usrloc.unregister(self.table, aor, binding.ruid)


@dataclass(frozen=True, slots=True)
class BranchState:
    """What a failure route needs to know about one branch, kept in one xavp
    value per branch (unit separator between the fields)."""

    ruid: str = ""
    group: str = ""
    route: str = ""
    record_route: str = ""
    outbound: bool = False
    addresses: str = ""  # EdgeAddresses.pack() of a Path hostname: the current one and the rest

    def pack(self) -> str:
        return SEP.join((self.ruid, self.group, self.route, self.record_route, "1" if self.outbound else "0",
                         self.addresses))

    @classmethod
    def unpack(cls, text: str) -> BranchState:
        parts = text.split(SEP)
        if len(parts) != 6:
            return cls()
        return cls(parts[0], parts[1], parts[2], parts[3], parts[4] == "1", parts[5])


def _branch_state(slot: int) -> BranchState:
    return BranchState.unpack(str(KSR.pv.get(f"$xavp(ko_b{slot}=>v)") or ""))


def _contact_host(contact: str) -> str:
    try:
        return SipUri.parse(contact).host
    except SipSyntaxError:
        return ""

