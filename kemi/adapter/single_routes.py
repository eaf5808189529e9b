"""Single-server mode: edge and registrar/home proxy in one Kamailio (RFC 5626 §6, §7).

A REGISTER that arrives directly (first hop) is the registrar's own flow: we
record it the way an edge would, as a Path entry with a flow token and ``ob``
(RFC 5626 §6 allows the registrar to "add itself to Path with a token"), so the
binding carries the flow and survives in usrloc like any other. At lookup the
home proxy sees its own token and sends straight over the flow (§7: a co-located
proxy holding the flow MUST use it). When a TCP/TLS flow closes, every binding
on it is removed at once, for all AORs (§7).

Built from parts: the request prologue (base.BaseRoutes), the device flows
(flows.FlowRelay), the peers' address sets (locator_glue.PeerGate), digest
authentication, the REGISTER save path (registration), the home proxy
(home_proxy.HomeProxy) and the connections' AOR lists (:class:`FlowWatch`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import KSR

from outbound.bindings import PathHop, first_hop
from outbound.decisions import Reply
from outbound.metrics import FLOW_TOKENS
from outbound.relay import EdgeStep, flow_room_refusal, single_step
from outbound.routing import DIALOG_FORMING, RouteView, ToFlow, record_route_token, route_decision
from outbound.tokens import Flow, FlowTokenCodec

from . import registration, usrloc
from .auth import Authenticator
from .base import BaseRoutes, DialogSeal
from .flows import FlowRelay, closed_flow_keys, is_local_flow, source_flow
from .home_proxy import HomeProxy, HomeProxyCallbacks
from .locator_glue import Locator, NextHopLocator, PeerGate
from .names import FLOWS_ITERATOR, FLOWS_TABLE, RR_CALLER_SIDE_XAVP, WS_CLOSED_EVENT, FlowsEntry
from .observe import OBSERVER
from .runtime import Runtime, guarded, send_reply
from .websocket import WebSocketGate


class FlowWatch:
    """Which AORs live on which TCP/TLS connection (htable ``ko_flows``, value
    names.FlowsEntry), so that a closed connection takes all its bindings
    with it (RFC 5626 §7)."""

    def __init__(self, home: HomeProxy, codec: FlowTokenCodec) -> None:
        self.home = home
        self.codec = codec

    def aors(self, flow: Flow) -> tuple[str, ...]:
        entry = FlowsEntry.from_text(KSR.htable.sht_get(FLOWS_TABLE, flow.key))
        return entry.aors if entry is not None and entry.conn_id == flow.conn_id else ()

    def room(self, flow: Flow, aor: str) -> Reply | None:
        """403 when this connection already carries as many AORs as ko_flows keeps."""
        return flow_room_refusal(self.aors(flow), aor, flow.conn_id)

    def watch(self, flow: Flow, aor: str) -> None:
        """Remember that ``aor`` lives on this connection and ask for its close event."""
        aors = self.aors(flow)
        if aor not in aors:
            aors = (*aors, aor)
        KSR.htable.sht_sets(FLOWS_TABLE, flow.key, FlowsEntry(flow.conn_id, aors).to_text())
        KSR.tcpops.tcp_enable_closed_event()

    def closed(self, event: str) -> None:
        """tcpops or websocket close event of the current connection."""
        for key in closed_flow_keys(event):
            self.drop(key, event)

    def sweep(self) -> None:
        """Drop the watched connections that are gone without an event."""
        gone = []
        if KSR.htable.sht_iterator_start(FLOWS_ITERATOR, FLOWS_TABLE) < 0:
            return
        try:
            while KSR.htable.sht_iterator_next(FLOWS_ITERATOR) > 0:
                entry = FlowsEntry.from_text(KSR.pv.get(f"$shtitval({FLOWS_ITERATOR})"))
                if entry is not None and KSR.tcpops.tcp_conid_state(entry.conn_id) <= 0:
                    gone.append(str(KSR.pv.get(f"$shtitkey({FLOWS_ITERATOR})") or ""))
        finally:
            KSR.htable.sht_iterator_end(FLOWS_ITERATOR)
        for key in gone:
            self.drop(key, "idle timeout")

    def drop(self, key: str, why: str) -> None:
        entry = FlowsEntry.from_text(KSR.htable.sht_get(FLOWS_TABLE, key))
        KSR.htable.sht_rm(FLOWS_TABLE, key)
        for aor in entry.aors if entry is not None else ():
            for binding in self.home.fetch(aor):
                hop = first_hop(binding)
                flow = self.codec.flow_of(hop.first.user) if isinstance(hop, PathHop) else None
                if flow is not None and flow.key == key:
                    KSR.notice(f"kemi-outbound: {why} on {key}: removing binding {binding.ruid} of {aor}\n")
                    usrloc.unregister(self.home.table, aor, binding.ruid)


class SingleRoutes(BaseRoutes, HomeProxyCallbacks):
    """Edge + registrar + home proxy in one process."""

    def __init__(self, runtime: Runtime) -> None:
        if runtime.codec is None:
            raise ValueError("a single server needs flow-token keys")
        locator = Locator.for_kamailio(runtime.config)
        super().__init__(runtime, NextHopLocator(locator))
        self.codec = runtime.codec
        self.flows = FlowRelay(runtime.config, self.codec, endpoints_in_dialog=True)
        self.peers = PeerGate(locator, runtime.config.dns.peers)
        self.seal = DialogSeal(self.codec.keys)
        self.home = HomeProxy(runtime.config, self.codec, is_local_flow=is_local_flow,
                              seal=self.seal.value, own_path_only=True,
                              loading=usrloc.LoadWindow.for_kamailio().seconds_left)
        self.watch = FlowWatch(self.home, self.codec)
        self.auth = Authenticator("single", PeerGate(locator, runtime.config.trusted_peers))
        self.websocket = WebSocketGate(runtime.config)

    def from_peer(self) -> bool:
        """The request's transport source is a peer (``dns.peers``)."""
        return self.peers.contains(KSR.kx.get_srcip())

    def trusted_source(self) -> bool:
        return self.from_peer()

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
        decision = registration.decide(config, view, holds_flows=True)
        if isinstance(decision, Reply):
            send_reply(decision)
            return 1
        flow = source_flow(snap)
        watch = decision.outbound and flow.is_stream
        if watch:
            refusal = self.watch.room(flow, KSR.kx.get_turi())
            if refusal is not None:
                send_reply(refusal)
                return 1
        if decision.outbound and view.first_hop:
            KSR.hdr.insert(f"Path: <{flow.local_uri(self.codec.encode(flow))};lr;ob>\r\n")
            OBSERVER.count(FLOW_TOKENS, flow.transport, "path")
            changed = True
        if changed:
            KSR.textopsx.msg_apply_changes()
        if registration.save(config, decision, view, KSR.kx.get_callid(), gruus=self.home.gruus) and watch:
            self.watch.watch(flow, KSR.kx.get_turi())
            self.flows.keep_open()  # longer than Flow-Timer (RFC 5626 §5.4)
        return 1

    # ----- requests toward registered users --------------------------------

    def step(self, view: RouteView, *, in_dialog: bool) -> EdgeStep:
        """The single server's relay policy (outbound.relay.single_step): a token
        sends an initial request to a flow only from a peer; inside a dialog our
        own Record-Route entry, sealed for the Call-ID, must be in the Route."""
        sealed = in_dialog and self.seal.carried_by(view.routes[: view.routes_ours], KSR.kx.get_callid())
        step = single_step(route_decision(view, self.codec), from_peer=self.from_peer(),
                           in_dialog=in_dialog, sealed=sealed)
        if isinstance(step, Reply):
            send_reply(step)
        elif isinstance(step, ToFlow):
            self.flows.send(step)
        return step

    def record_route_caller_side(self, view: RouteView) -> str:
        """Prepare the caller's side of the Record-Route; the branch route adds the
        callee's side per branch (one entry per flow, see HomeProxy.branch_route).
        The transport of the caller's flow when the entry carries a flow token, else ""."""
        if view.method not in DIALOG_FORMING or view.has_to_tag:
            return ""
        source = view.source
        outbound = record_route_token(view, self.runtime.config.force_outbound)
        KSR.pv.sets(RR_CALLER_SIDE_XAVP, source.local_uri(self.codec.encode(source) if outbound else ""))
        return source.transport if outbound else ""

    def initial(self) -> int:
        view = self.flows.route_view()
        step = self.step(view, in_dialog=False)
        if isinstance(step, Reply | ToFlow):
            return 1
        if not self.strip_own_routes():
            return 1
        token_transport = self.record_route_caller_side(view)
        # the token is issued once the request goes out with it (branches relayed),
        # not when the request is challenged or answered here (407, 404, 480)
        if self.auth.request() and self.home.outbound_lookup() > 0 and token_transport:
            OBSERVER.count(FLOW_TOKENS, token_transport, "record_route")
        return 1

    def within_dialog(self) -> int:
        step = self.step(self.flows.route_view(), in_dialog=True)
        if not isinstance(step, Reply | ToFlow):
            return super().within_dialog()
        return 1

    # ----- callbacks Kamailio calls by name (names.py) ----------------------------

    @guarded
    def ksr_failure_flow(self, msg: Any) -> int:
        """No reply at all from the UA over its flow: 430 to our home proxy."""
        self.flows.on_failure()
        return 1

    def ksr_tcp_event(self, msg: Any, event: str) -> int:
        """tcpops event callback: a watched connection closed or was reset:
        remove every binding on it, whatever the AOR (RFC 5626 §7)."""
        try:
            self.watch.closed(event)
        except Exception as exc:  # noqa: BLE001 - an event route has nobody to answer
            KSR.err(f"kemi-outbound: {event}: could not clean up bindings: {exc!r}\n")
        return 1

    def ksr_sweep_flows(self, msg: Any, event: str = "") -> int:
        """rtimer callback (every second): Kamailio 5.6 emits no close event when
        tcp_main expires an idle connection (Flow-Timer + grace passed), so
        watched flows whose connection is gone are swept here."""
        try:
            self.watch.sweep()
        except Exception as exc:  # noqa: BLE001 - a timer route has nobody to answer
            KSR.err(f"kemi-outbound: flow sweep failed: {exc!r}\n")
        return 1

    # ----- WebSocket (WITH_WEBSOCKET, adapter.websocket) ---------------------

    def ksr_xhttp_event(self, msg: Any, event: str = "") -> int:
        """xhttp event callback: an HTTP request: to the metrics socket
        (adapter.observe), else a WebSocket handshake or not."""
        if not OBSERVER.http_request(flows=True, bindings=self.runtime.config.location_table):
            self.websocket.http_request()
        return 1

    def ksr_websocket_event(self, msg: Any, event: str = "") -> int:
        """websocket event callback: a WebSocket connection closed: remove every
        binding on it, as for a TCP/TLS flow (RFC 5626 §7, RFC 7118 §5). The
        module runs it in its timer process a few seconds after the close
        (ws_timer); tcpops' close event has usually removed them by then."""
        try:
            event = event or WS_CLOSED_EVENT
            KSR.info(f"kemi-outbound: {event} from {KSR.kx.get_srcip()}:{KSR.kx.get_srcport()}\n")
            self.watch.closed(event)
        except Exception as exc:  # noqa: BLE001 - an event route has nobody to answer
            KSR.err(f"kemi-outbound: {event}: could not clean up bindings: {exc!r}\n")
        return 1
