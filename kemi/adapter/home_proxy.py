"""Home proxy forking and flow failover (RFC 5626 §7) on Kamailio's usrloc and tm.

The decisions are ``outbound.forking.Fork``'s; this module is the loop around
it. Each tm moment (request route, branch-failure route, failure route) reads
tm's outcome, loads the fork state from the ``ko_tx`` xavp (tm keeps it with
the transaction, so every worker and the timer process see it), runs the
core's steps and carries out their actions: branches ($ru/$du/$fs/$bf or
$sbranch), unregister_ruid, t_relay, replies, hold-downs. It answers the
core's questions: the AOR's bindings (adapter.usrloc) and where a binding goes
now (:meth:`HomeProxy.target`). The branch route puts each branch's Route (the
binding's Path) and Record-Route in; it finds the branch by its slot number,
which travels in the branch flags (bits 16-30).

A Request-URI that is a GRUU (RFC 5627 §6.1, ``outbound.gruu.request_target``)
is looked up as its AOR with the core keeping the GRUU's instance alone; the
core asks (``Recall``) whether a public GRUU was ever given out (adapter.usrloc).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import KSR

from outbound import forking, gruu
from outbound.addresses import is_ip_literal
from outbound.bindings import Binding, EdgeAddresses, PathHop, Target, Unusable, first_hop
from outbound.config import Config
from outbound.decisions import Reply
from outbound.forking import Fork, ForkState, Outcome, Steps
from outbound.metrics import CALL_BRANCHES, FLOW_FAILOVERS
from outbound.relay import SEAL_PARAM
from outbound.sipmsg import is_hostname
from outbound.tokens import Flow, FlowTokenCodec

from . import usrloc
from .locator_glue import HealthMemory, Locator, own_socket_toward
from .names import (
    BRANCH_FAILURE_EVENT,
    BRANCH_ROUTE,
    FAILURE_ROUTE,
    FLB_OUTBOUND,
    FORK_STATE,
    FORK_STATE_FIRST,
    NOGRUU_SWITCH,
    RR_CALLER_SIDE_XAVP,
)
from .observe import OBSERVER
from .runtime import guarded, send_reply, stream_flow_alive, t_reply

SLOT_SHIFT = 16
SLOT_MASK = 0x7FFF


class HomeProxy:
    """Forking and failover toward registered flows."""

    def __init__(self, config: Config, codec: FlowTokenCodec | None,
                 is_local_flow: Callable[[Flow], bool] | None = None, locator: Locator | None = None,
                 health: HealthMemory | None = None, seal: Callable[[str], str] | None = None,
                 own_path_only: bool = False, gruu_keys: Sequence[bytes] | None = None,
                 loading: Callable[[], int] | None = None) -> None:
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
        # temporary GRUUs (RFC 5627 §5.4) are made and opened with the flow-token keys,
        # else ``gruu_keys`` (made before the workers fork: every process opens them)
        keys = gruu_keys if gruu_keys is not None else (codec.keys if codec is not None else ())
        self.gruus = gruu.TempGruuCodec(keys) if keys and not KSR.kx.ifdef(NOGRUU_SWITCH) else None
        # the start-up window while usrloc may still be loading (adapter.usrloc.LoadWindow)
        self.loading = loading

    def fetch(self, aor: str) -> list[Binding]:
        return usrloc.bindings(self.table, aor)

    # ----- the tm moments --------------------------------------------------

    def outbound_lookup(self) -> int:
        """Fork to the first wave of the AOR's bindings (RFC 5626 §7), or to the
        instance of a GRUU alone (RFC 5627 §6.1). Returns 1 when branches were
        relayed, -1 when a reply was sent instead."""
        ruri = KSR.kx.get_ruri()
        target = gruu.request_target(ruri, self.gruus) if self.gruus is not None else None
        if isinstance(target, Reply):
            send_reply(target)
            return -1
        fork = Fork(max_parallel=self.max_parallel)
        loading = self.loading() if self.loading is not None else 0
        steps = (fork.lookup(ruri, loading=loading) if target is None
                 else fork.lookup(target.aor, only=target, now=int(time.time())))
        replied = self._run(fork, steps, send_reply)
        if fork.state.branches:
            OBSERVER.observe(CALL_BRANCHES, len(fork.state.branches))
        return -1 if replied else 1

    def branch_route(self) -> None:
        """Per branch, just before sending: the binding's Path becomes the Route
        set (RFC 3327 §5); in single-server mode the Record-Route gets one entry
        per side of the dialog, each with its flow token (RFC 5626 §5.3)."""
        slot = _slot(KSR.pv.get("$bf"))
        if not slot:
            return
        branch = ForkState.from_text(KSR.pv.get(FORK_STATE)).branches.get(slot)
        if branch is not None and branch.route:
            KSR.hdr.insert(f"Route: {branch.route}\r\n")
        callee_side = branch.record_route if branch is not None else ""
        caller_side = str(KSR.pv.get(RR_CALLER_SIDE_XAVP) or "")
        entries = [e for e in (callee_side, caller_side) if e]
        if entries:
            pair = ";r2=on" if len(entries) == 2 else ""
            seal = f";{SEAL_PARAM}={self.seal(KSR.kx.get_callid())}" if self.seal is not None else ""
            KSR.hdr.insert("Record-Route: " + ", ".join(f"<{e};lr{pair}{seal}>" for e in entries) + "\r\n")

    def outbound_next_contact(self) -> None:
        """Branch-failure route: the core decides whether this branch is
        replaced (outbound.forking.Fork.branch_failed)."""
        outcome = Outcome(
            status=int(KSR.pv.get("$T_reply_code") or 0),
            slot=_slot(KSR.pv.get("$T_branch(flags)")),
            replied=KSR.tm.t_branch_replied() > 0,
            canceled=KSR.tm.t_is_canceled() > 0,
            reason=str(KSR.pv.get("$T_rpl($rr)") or ""),
        )
        fork = self._load()
        self._run(fork, fork.branch_failed(outcome), _reply_in_transaction)

    def failure_route(self) -> None:
        """Failure route, all branches done: the next q-wave or the caller's
        answer (outbound.forking.Fork.all_failed)."""
        outcome = Outcome(status=int(KSR.pv.get("$T_reply_code") or 0), canceled=KSR.tm.t_is_canceled() > 0)
        fork = self._load()
        self._run(fork, fork.all_failed(outcome), _reply_in_transaction)

    # ----- carrying out the core's steps -----------------------------------

    def _load(self) -> Fork:
        return Fork(ForkState.from_text(KSR.pv.get(FORK_STATE)), max_parallel=self.max_parallel)

    def _run(self, fork: Fork, steps: Steps, reply: Callable[[Reply], None]) -> bool:
        """Carry out the core's actions in order, answering its questions; the
        state is saved before each relay (the branch route reads it) and at the
        end. True when a reply was sent."""
        replied = False
        answer: object = None
        failover = ""  # a flow gave up on: a failover once the instance's next flow gets its branch
        while True:
            try:
                action = steps.send(answer)
            except StopIteration:
                break
            if isinstance(action, Reply):
                reply(action)
                replied, answer = True, None
            else:
                answer = self._carry_out(action, fork)
                if isinstance(action, forking.Unregister) and action.failover:
                    failover = action.failover
                elif isinstance(action, forking.AddBranch) and failover:
                    OBSERVER.count(FLOW_FAILOVERS, failover)
                    failover = ""
        _save(fork.state)
        return replied

    def _carry_out(self, action: forking.Action, fork: Fork) -> object:
        match action:
            case forking.Fetch(aor=aor):
                return self.fetch(aor)
            case forking.Recall(aor=aor, instance=instance):
                return usrloc.gruu_remembered(aor, instance)
            case forking.Locate(aor=aor, binding=binding):
                return self.target(aor, binding)
            case forking.AddBranch():
                self._add_branch(action)
            case forking.Relay():
                _save(fork.state)
                self._arm()
                return KSR.tm.t_relay() > 0
            case forking.Unregister(aor=aor, ruid=ruid, log=log, failover=failover):
                if failover:
                    # the decision line now; counted in FLOW_FAILOVERS when the next flow is tried (_run)
                    OBSERVER.event("flow_failover", None, (), log)
                else:
                    KSR.notice(f"kemi-outbound: {log}\n")
                usrloc.unregister(self.table, aor, ruid)
            case forking.HoldDown(address=address, why=why):
                if self.health is not None:
                    # later calls (and this dialog's ACK, BYE) try it last (locator.health)
                    self.health.failed(address, None, why)
            case forking.Note(log=log):
                KSR.notice(f"kemi-outbound: {log}\n")
        return None

    def _add_branch(self, branch: forking.AddBranch) -> None:
        target = branch.target
        flags = ((branch.slot & SLOT_MASK) << SLOT_SHIFT) | ((1 << FLB_OUTBOUND) if branch.binding.outbound else 0)
        # toward an edge: from our listen address, by which the edge knows its farm
        socket = target.socket or (own_socket_toward(target.dst_uri) if target.dst_uri else "")
        if branch.in_ruri:
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
        KSR.tm.t_on_branch_failure(BRANCH_FAILURE_EVENT)
        KSR.tm.t_on_failure(FAILURE_ROUTE)
        if KSR.is_INVITE() and self.first_reply_timeout_ms > 0:
            # a live edge answers 100 Trying at once: a dead one is given up quickly
            KSR.tm.t_set_fr(0, self.first_reply_timeout_ms)

    # ----- where a binding goes --------------------------------------------

    def target(self, aor: str, binding: Binding) -> Target | Unusable:
        """The core's Locate: a binding's branch target now. Unusable when its
        Path is garbage or names an edge that cannot be located (the binding is
        kept), or names a local flow that is gone (the binding is removed,
        RFC 5626 §7)."""
        hop = first_hop(binding)
        if not isinstance(hop, PathHop):
            return hop
        first = hop.first
        local = self._local_flow(first.user)
        if local is not None:
            # we hold this flow ourselves (single-server mode): send straight to it
            if local.is_stream and not stream_flow_alive(local):
                return Unusable(f"removing binding {binding.ruid} of {aor}: its flow is gone", forget=True)
            return Target(binding.contact, local.destination, hop.route_after_first, local.socket,
                          record_route=local.local_uri(first.user or ""))
        if self.own_path_only:
            return Unusable(f"binding {binding.ruid} has a Path that is not ours; skipped")
        if self.locator is None or is_ip_literal(first.host):
            return Target(binding.contact, hop.dst_uri, hop.route)
        if not is_hostname(first.host):
            return Unusable(f"Path of {binding.ruid} names no host ({first.host[:60]!r}); skipped")
        # an edge named in Path by hostname: RFC 3263, like the edge finds us;
        # the addresses held down (no answer lately) last
        found = self.locator.resolve_next_hop(hop.dst_uri)
        addresses = EdgeAddresses.of(self.health.order(found) if self.health is not None else found)
        if addresses is None:
            return Unusable(f"cannot locate {first.host} (Path of {binding.ruid}); skipped")
        return Target(binding.contact, addresses.current, hop.route, addresses=addresses)

    def _local_flow(self, user: str | None) -> Flow | None:
        if self.codec is None or self.is_local_flow is None:
            return None
        flow = self.codec.flow_of(user)
        return flow if flow is not None and self.is_local_flow(flow) else None


class HomeProxyCallbacks:
    """The tm callbacks of a role that forks to registered flows (names.TM_CALLBACKS),
    carried out by its ``home`` part."""

    home: HomeProxy

    @guarded
    def ksr_branch_outbound(self, msg: Any) -> int:
        self.home.branch_route()
        return 1

    @guarded
    def ksr_branch_failure_outbound(self, msg: Any) -> int:
        self.home.outbound_next_contact()
        return 1

    @guarded
    def ksr_failure_outbound(self, msg: Any) -> int:
        self.home.failure_route()
        return 1


def _slot(flags: object) -> int:
    return (int(flags or 0) >> SLOT_SHIFT) & SLOT_MASK


def _save(state: ForkState) -> None:
    # $xavp(name) adds a value in front of the others, $xavp(name[0]) replaces the first
    # (pv_set_xavp): the first save of a transaction adds, every later one replaces
    KSR.pv.sets(FORK_STATE_FIRST if KSR.pv.get(FORK_STATE) is not None else FORK_STATE, state.to_text())


def _reply_in_transaction(reply: Reply) -> None:
    """A failure route's answer to the caller, through tm."""
    t_reply(reply, "the caller")
