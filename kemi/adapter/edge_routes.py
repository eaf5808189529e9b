"""Edge proxy routes (RFC 5626 §5) carried out with KSR.

Built from parts: the request prologue (base.BaseRoutes), the device flows
this edge holds (flows.FlowRelay), the relay toward the home proxy farm with
RFC 3263 failover (locator_glue.FailoverRelay) and the farm's address sets
(locator_glue.PeerGate). The decisions are the core's: outbound.routing reads
the tokens, outbound.relay says where the request may go.
"""

from __future__ import annotations

from typing import Any

import KSR

from outbound.addresses import is_ip_literal
from outbound.decisions import PathKind, Reply
from outbound.metrics import FLOW_TOKENS
from outbound.policy import contact_expiry, edge_path_kind
from outbound.relay import EdgeStep, Onward, ToHome, edge_step, next_hop_refusal
from outbound.routing import DIALOG_FORMING, RouteView, ToFlow, record_route_token, route_decision
from outbound.sipmsg import NameAddr, SipSyntaxError, SipUri, parse_delta_seconds

from .base import BaseRoutes
from .flows import FlowRelay, source_flow
from .locator_glue import FailoverRelay, HealthMemory, Locator, NextHopLocator, PeerGate
from .names import HOME_FAILURE_ROUTE, HOME_REPLY_ROUTE
from .observe import OBSERVER
from .runtime import Runtime, guarded, send_reply, snapshot
from .websocket import WebSocketGate

# loose_route(): "the Route was preloaded and we were its last entry" (rr module, loose.h)
RR_PRELOADED = -3


class EdgeRoutes(BaseRoutes):
    """The object app_python3 calls for every message on an edge proxy."""

    def __init__(self, runtime: Runtime, locator: Locator | None = None) -> None:
        if runtime.codec is None:
            raise ValueError("an edge needs flow-token keys")
        locator = locator if locator is not None else Locator.for_kamailio(runtime.config)
        super().__init__(runtime, NextHopLocator(locator))
        self.codec = runtime.codec
        self.registrar = runtime.config.registrar_uri
        self.flows = FlowRelay(runtime.config, self.codec, endpoints_in_dialog=False)
        # failed registrar targets are tried last by later transactions (docs/dns.md, hold-down)
        health = HealthMemory(locator.hold_policy, locator.clock)
        self.home_relay = FailoverRelay(locator, HOME_FAILURE_ROUTE, health=health, reply_route=HOME_REPLY_ROUTE)
        # the home proxy farm: the registrar URI's addresses and dns.peers (outbound.relay)
        farm = (self.registrar,) if self.registrar else ()
        self.farm = PeerGate(locator, farm + runtime.config.dns.peers)
        self.websocket = WebSocketGate(runtime.config)

    def from_farm(self) -> bool:
        """The request's transport source is a farm address (never its Vias)."""
        return self.farm.contains(KSR.kx.get_srcip())

    def trusted_source(self) -> bool:
        return self.from_farm()

    # ----- REGISTER ---------------------------------------------------------

    def register(self) -> int:
        """Forward a REGISTER to the registrar with our Path (RFC 5626 §5.1).
        We are the device's first hop: our own Route entries go (a Route set on
        past us must lead to the farm), and so does any Path the device wrote
        (a Path with another device's token would steer that AOR's calls onto
        the other device's flow)."""
        if not self.strip_own_routes(self.names_farm):
            return 1
        if KSR.hdr.is_present("Path") > 0 and not self.from_farm():
            KSR.notice(f"kemi-outbound: Path written by {KSR.kx.get_srcip()} removed from REGISTER "
                       f"for {KSR.kx.get_turi()}\n")
            KSR.hdr.remove("Path")
        self.add_path()
        self.forward_to_home()
        return 1

    def add_path(self) -> PathKind:
        """Path with a flow token and ``;ob`` when outbound applies, else plain."""
        snap = snapshot()
        contacts = snap.headers.name_addrs("contact")
        kind = edge_path_kind(snap.headers.first_hop, contacts, self.runtime.config.force_outbound)
        if kind is PathKind.FLOW:
            flow = source_flow(snap)
            KSR.path.add_path_user_params(self.codec.encode(flow), "ob")
            OBSERVER.count(FLOW_TOKENS, flow.transport, "path")
            if flow.is_stream:
                # the connection is booked (the flows view); a UDP REGISTER skips this work
                expires = max((contact_expiry(c, parse_delta_seconds(snap.headers.first("expires")),
                                              self.runtime.config.default_expires) for c in contacts if not c.star),
                              default=0)
                self.flows.book_register(flow, KSR.kx.get_turi(), expires)
                self.flows.keep_open()  # until the 2xx says the registrar's Flow-Timer
                self.flows.expect_flow_timer(flow)
        else:
            KSR.path.add_path()
        return kind

    def forward_to_home(self) -> None:
        """Send the request on to the registrar / home proxy (edge.registrar),
        located by DNS (RFC 3263) and failed over target by target in
        ``ksr_failure_home``; 503 when no target can be found."""
        if not self.registrar:
            send_reply(Reply(500, "Server Internal Error", "edge.registrar is not configured", cause="no_registrar"))
            return
        self.home_relay.relay(self.registrar)

    # ----- other requests -----------------------------------------------------

    def step(self, view: RouteView, *, in_dialog: bool) -> EdgeStep:
        """Replacement for loose_route (RFC 5626 §5.3) under the relay policy
        (outbound.relay): a forged or replayed token is answered 403, an
        incoming request from the farm is sent over its flow (or answered 430).
        The step is returned; after ``ToHome`` or ``Onward`` routing goes on in
        the caller."""
        step = edge_step(route_decision(view, self.codec), from_farm=self.from_farm(),
                         in_dialog=in_dialog, first_hop=view.first_hop)
        if isinstance(step, Reply):
            send_reply(step)
        elif isinstance(step, ToFlow):
            self.flows.send(step)
        return step

    def record_route(self, view: RouteView) -> None:
        """Record-Route for an outgoing dialog-forming request (RFC 5626 §5.3.2):
        with the flow token as user part when outbound applies, plain otherwise."""
        if record_route_token(view, self.runtime.config.force_outbound):
            self.flows.record_route(self.codec.encode(view.source), view.source.transport)
        elif view.method in DIALOG_FORMING and not view.has_to_tag:
            self.flows.record_route("")

    def initial(self) -> int:
        view = self.flows.route_view()
        step = self.step(view, in_dialog=False)
        if isinstance(step, ToHome):
            if self.strip_own_routes(self.names_farm):
                self.record_route(view)
                self.forward_to_home()
        elif isinstance(step, Onward):
            # from the farm: on as its Route set says
            if KSR.rr.loose_route() in (1, RR_PRELOADED):
                # our preloaded Route (a plain Path) was the last one: on to the R-URI,
                # a name in it located by our RFC 3263 locator like any next hop
                if self.locate_next_hop():
                    self.relay()
            else:
                send_reply(Reply(404, "Not Found", "no route for an initial request from the core", cause="no_route"))
        return 1

    def within_dialog(self) -> int:
        step = self.step(self.flows.route_view(), in_dialog=True)
        if not isinstance(step, Onward):
            return 1
        if KSR.rr.loose_route() > 0:
            refusal = self.next_hop_refusal() if step.farm_only else None
            if refusal is not None:
                send_reply(refusal)
            elif self.locate_next_hop():
                self.relay_in_dialog()
            return 1
        return self.unrouted()

    def names_farm(self, route: NameAddr) -> bool:
        """A Route entry whose host is a farm address or one of the farm's names."""
        return self._farm_only_refusal(route.sip_uri) is None

    def next_hop_refusal(self) -> Reply | None:
        """A device's in-dialog request goes to the farm only (outbound.relay)."""
        next_hop = str(KSR.pv.get("$du") or "") or KSR.kx.get_ruri()
        try:
            uri = SipUri.parse(next_hop)
        except SipSyntaxError:
            return Reply(403, "Forbidden", f"in-dialog request from a device toward {next_hop[:80]!r}",
                         cause="relay_not_farm")
        return self._farm_only_refusal(uri)

    def _farm_only_refusal(self, uri: SipUri) -> Reply | None:
        """outbound.relay.next_hop_refusal for ``uri``'s host (its maddr first)."""
        host = (uri.params.get("maddr") or uri.host).strip("[]")
        is_ip = is_ip_literal(host)
        return next_hop_refusal(host, host_is_ip=is_ip, ip_in_farm=is_ip and self.farm.contains(host),
                                farm_names=self.farm.names)

    # ----- tm callbacks (names.TM_CALLBACKS) ------------------------------------

    @guarded
    def ksr_failure_flow(self, msg: Any) -> int:
        """No reply at all from the UA over its flow: tell the home proxy 430."""
        self.flows.on_failure()
        return 1

    @guarded
    def ksr_failure_home(self, msg: Any) -> int:
        """A registrar target failed: the next one on 503 / silence / transport error."""
        self.home_relay.on_failure()
        return 1

    @guarded
    def ksr_reply_home(self, msg: Any) -> int:
        """A reply from a held-down registrar target: it serves again; the 2xx
        of a device's REGISTER: its flow lives by the registrar's Flow-Timer."""
        self.home_relay.on_reply()
        self.flows.registered()
        return 1

    # ----- WebSocket (WITH_WEBSOCKET, adapter.websocket) ---------------------

    def ksr_xhttp_event(self, msg: Any, event: str = "") -> int:
        """xhttp event callback: an HTTP request: to the metrics socket
        (adapter.observe), else a WebSocket handshake or not."""
        if not OBSERVER.http_request(flows=True, bindings=""):
            self.websocket.http_request()
        return 1

    def ksr_websocket_event(self, msg: Any, event: str = "") -> int:
        """websocket event callback: a closed WebSocket connection leaves ko_flows
        (a token naming it gets 430 in any case: FlowRelay.send)."""
        self.flows.unbook(event)
        return 1

    def ksr_tcp_event(self, msg: Any, event: str = "") -> int:
        """tcpops event callback: a booked device connection closed."""
        self.flows.unbook(event)
        return 1
