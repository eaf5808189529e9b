"""Single-server mode: edge and registrar/home proxy in one Kamailio (RFC 5626 §6, §7).

A REGISTER that arrives directly (one Via) is the registrar's own flow: we
record it the way an edge would, as a Path entry with a flow token and ``ob``
(RFC 5626 §6 allows the registrar to "add itself to Path with a token"), so the
binding carries the flow and survives in usrloc like any other. At lookup the
home proxy sees its own token and sends straight over the flow (§7: a co-located
proxy holding the flow MUST use it). When a TCP/TLS flow closes, every binding
on it is removed at once, for all AORs (§7).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import KSR

from outbound.decisions import Reply
from outbound.relay import (
    MAX_AORS_PER_FLOW,
    MAX_FLOW_ENTRY,
    SEAL_PARAM,
    EdgeStep,
    dialog_seal,
    seal_valid,
    single_step,
)
from outbound.routing import DIALOG_FORMING, RouteView, ToFlow, record_route_token, route_decision
from outbound.sipmsg import parse_name_addr, split_values
from outbound.tokens import Flow, Verdict

from . import registration
from .auth import Authenticator
from .base import HomeProxyCallbacks
from .edge_routes import EdgeRoutes, source_flow
from .home_proxy import HomeProxy
from .locator_glue import PeerGate
from .names import FLOWS_ITERATOR, FLOWS_TABLE, RR_CALLER_SIDE_XAVP
from .runtime import Runtime, send_reply

CLOSE_EVENTS = ("tcp:closed", "tcp:timeout", "tcp:reset")


class SingleRoutes(EdgeRoutes, HomeProxyCallbacks):
    """Edge + registrar + home proxy in one process."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.home = HomeProxy(runtime.config, self.codec, is_local_flow=self.is_local_flow,
                              seal=self.seal, own_path_only=True)
        self.auth = Authenticator("single", PeerGate(self.locator, runtime.config.trusted_peers))

    def seal(self, call_id: str) -> str:
        """Our Record-Route parameter for a dialog (outbound.relay.dialog_seal)."""
        return dialog_seal(self.codec.signing_key, call_id)

    # ----- REGISTER: we are the first hop ----------------------------------

    def register(self) -> int:
        if not self.auth.register():
            return 1
        snap, view = registration.current()
        config = self.runtime.config
        changed = bool(view.paths)
        if changed:
            # we are the first hop: a Path the device wrote is not ours to keep
            # (another device's token in it would steer this AOR's calls there)
            KSR.notice(f"kemi-outbound: Path written by {snap.src_ip} removed from REGISTER "
                       f"for {KSR.kx.get_turi()}\n")
            KSR.hdr.remove("Path")
            view = replace(view, paths=())
        decision = registration.decide(config, view)
        if isinstance(decision, Reply):
            send_reply(decision)
            return 1
        flow = source_flow(snap)
        watch = decision.outbound and flow.is_stream
        if watch:
            refusal = self._flow_room(flow, KSR.kx.get_turi())
            if refusal is not None:
                send_reply(refusal)
                return 1
        if decision.outbound and view.first_hop:
            KSR.hdr.insert(f"Path: <{flow.local_uri(self.codec.encode(flow))};lr;ob>\r\n")
            changed = True
        if changed:
            KSR.textopsx.msg_apply_changes()
        if registration.save(config, decision, view, KSR.kx.get_callid()) and watch:
            self._watch_flow(flow, KSR.kx.get_turi())
        return 1

    def _flow_aors(self, flow: Flow) -> list[str]:
        known = str(KSR.htable.sht_get(FLOWS_TABLE, flow.key) or "").split()
        return known[1:] if known and known[0] == str(flow.conn_id) else []

    def _flow_room(self, flow: Flow, aor: str) -> Reply | None:
        """403 when this connection already carries as many AORs as ko_flows keeps."""
        aors = self._flow_aors(flow)
        if aor in aors:
            return None
        if len(aors) >= MAX_AORS_PER_FLOW or len(" ".join([str(flow.conn_id), *aors, aor])) > MAX_FLOW_ENTRY:
            return Reply(403, "Too Many AORs On This Flow",
                         f"connection {flow.conn_id} already carries {len(aors)} AORs (at most {MAX_AORS_PER_FLOW})")
        return None

    def _watch_flow(self, flow: Flow, aor: str) -> None:
        """Remember which AORs live on this connection; ask for its close event;
        keep it open longer than Flow-Timer (RFC 5626 §5.4).

        ``ko_flows`` maps the connection's addresses to "<conn id> <aor> ...".
        """
        aors = self._flow_aors(flow)
        if aor not in aors:
            aors.append(aor)
        KSR.htable.sht_sets(FLOWS_TABLE, flow.key, " ".join([str(flow.conn_id), *aors]))
        KSR.tcpops.tcp_enable_closed_event()
        self.keep_flow_open()

    # ----- requests toward registered users --------------------------------

    def forward_to_home(self) -> None:
        if self.auth.request():
            self.home.outbound_lookup()

    def outbound_record_route(self, view: RouteView) -> bool:
        """Prepare the caller's side of the Record-Route; the branch route adds the
        callee's side per branch (one entry per flow, see HomeProxy.branch_route)."""
        if view.method not in DIALOG_FORMING or view.has_to_tag:
            return False
        source = view.source
        outbound = record_route_token(view, self.runtime.config.force_outbound)
        KSR.pv.sets(RR_CALLER_SIDE_XAVP, source.local_uri(self.codec.encode(source) if outbound else ""))
        return outbound

    def outbound_route(self, view: RouteView, *, in_dialog: bool) -> EdgeStep:
        """The single server's relay policy (outbound.relay.single_step): a token
        sends an initial request to a flow only from a peer; inside a dialog our
        own Record-Route entry, sealed for the Call-ID, must be in the Route."""
        sealed = in_dialog and any(
            seal_valid(self.codec.keys, KSR.kx.get_callid(), r.sip_uri.params.get(SEAL_PARAM))
            for r in view.routes[: view.routes_ours])
        step = single_step(route_decision(view, self.codec), from_peer=self.from_farm(),
                           in_dialog=in_dialog, sealed=sealed)
        if isinstance(step, Reply):
            send_reply(step)
        elif isinstance(step, ToFlow):
            self._send_to_flow(step)
        return step

    def _initial(self) -> int:
        view = self.route_view()
        step = self.outbound_route(view, in_dialog=False)
        if isinstance(step, Reply | ToFlow):
            return 1
        self.outbound_record_route(view)
        KSR.hdr.remove("Route")
        self.forward_to_home()
        return 1

    # ----- dead flows --------------------------------------------------------

    def ksr_tcp_event(self, msg: Any, event: str) -> int:
        """tcpops event callback: a watched connection closed or was reset:
        remove every binding on it, whatever the AOR (RFC 5626 §7)."""
        try:
            if event in CLOSE_EVENTS:
                transport = str(KSR.kx.get_proto()).lower()
                closed = Flow(transport, KSR.kx.get_rcvip(), int(KSR.kx.get_rcvport()),
                              KSR.kx.get_srcip(), int(KSR.kx.get_srcport()))
                self.drop_flow(closed.key, event)
        except Exception as exc:  # noqa: BLE001 - an event route has nobody to answer
            KSR.err(f"kemi-outbound: {event}: could not clean up bindings: {exc!r}\n")
        return 1

    def ksr_sweep_flows(self, msg: Any, event: str = "") -> int:
        """rtimer callback (every second): Kamailio 5.6 emits no close event when
        tcp_main expires an idle connection (Flow-Timer + grace passed), so
        watched flows whose connection is gone are swept here."""
        try:
            gone = []
            if KSR.htable.sht_iterator_start(FLOWS_ITERATOR, FLOWS_TABLE) < 0:
                return 1
            try:
                while KSR.htable.sht_iterator_next(FLOWS_ITERATOR) > 0:
                    key = str(KSR.pv.get(f"$shtitkey({FLOWS_ITERATOR})") or "")
                    value = str(KSR.pv.get(f"$shtitval({FLOWS_ITERATOR})") or "").split()
                    if value and value[0].isdigit() and KSR.tcpops.tcp_conid_state(int(value[0])) <= 0:
                        gone.append(key)
            finally:
                KSR.htable.sht_iterator_end(FLOWS_ITERATOR)
            for key in gone:
                self.drop_flow(key, "idle timeout")
        except Exception as exc:  # noqa: BLE001 - a timer route has nobody to answer
            KSR.err(f"kemi-outbound: flow sweep failed: {exc!r}\n")
        return 1

    def drop_flow(self, key: str, why: str) -> None:
        aors = str(KSR.htable.sht_get(FLOWS_TABLE, key) or "").split()[1:]
        KSR.htable.sht_rm(FLOWS_TABLE, key)
        for aor in aors:
            for binding in self.home.fetch(aor):
                flow = self._binding_flow(binding.path)
                if flow is not None and flow.key == key:
                    KSR.notice(f"kemi-outbound: {why} on {key}: removing binding {binding.ruid} of {aor}\n")
                    KSR.registrar.unregister_ruid(self.home.table, aor, binding.ruid)

    def _binding_flow(self, path: str) -> Flow | None:
        if not path:
            return None
        try:
            user = parse_name_addr(split_values(path)[0]).sip_uri.user or ""
        except (ValueError, IndexError):
            return None
        decoded = self.codec.decode(user)
        return decoded.flow if decoded.verdict is Verdict.VALID else None
