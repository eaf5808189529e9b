"""Edge proxy routes (RFC 5626 §5) carried out with KSR."""

from __future__ import annotations

from typing import Any

import KSR

from outbound.addresses import ip_family
from outbound.decisions import PathKind, Reply
from outbound.errors import SipSyntaxError
from outbound.policy import edge_path_kind
from outbound.relay import EdgeStep, Onward, ToHome, edge_step, next_hop_refusal
from outbound.routing import (
    DIALOG_FORMING,
    RouteView,
    ToFlow,
    flow_failed,
    record_route_token,
    route_decision,
)
from outbound.sipmsg import NameAddr, SipUri, parse_name_addr, parse_name_addrs
from outbound.tokens import Flow

from .base import BaseRoutes, names_us
from .locator_glue import FailoverRelay, HealthMemory, Locator, PeerGate
from .names import FLOW_FAILURE_ROUTE, HOME_FAILURE_ROUTE, HOME_REPLY_ROUTE, RR_USER_AVP
from .runtime import Runtime, Snapshot, guarded, send_reply, snapshot, stream_flow_alive

# The rr module takes the Record-Route user part from this AVP (cfg: custom_user_avp).
# loose_route(): "the Route was preloaded and we were its last entry" (rr module, loose.h)
RR_PRELOADED = -3



def source_flow(snap: Snapshot) -> Flow:
    """The flow the current request arrived on (RFC 5626 §3.3)."""
    return Flow(snap.transport, snap.rcv_ip, snap.rcv_port, snap.src_ip, snap.src_port,
                snap.conn_id if snap.transport != "udp" else 0)


class EdgeRoutes(BaseRoutes):
    """The object app_python3 calls for every message on an edge proxy."""

    def __init__(self, runtime: Runtime, locator: Locator | None = None) -> None:
        super().__init__(runtime)
        self.registrar = runtime.config.registrar_uri
        if runtime.codec is None:
            raise ValueError("an edge needs flow-token keys")
        self.codec = runtime.codec
        self.locator = locator if locator is not None else Locator.for_kamailio(runtime.config)
        # failed registrar targets are tried last by later transactions (docs/dns.md, hold-down)
        health = HealthMemory(self.locator.hold_policy, self.locator.clock)
        self.home_relay = FailoverRelay(self.locator, HOME_FAILURE_ROUTE, health=health, reply_route=HOME_REPLY_ROUTE)
        # the home proxy farm: the registrar URI's addresses and dns.peers (outbound.relay)
        farm = (self.registrar,) if self.registrar else ()
        self.farm = PeerGate(self.locator, farm + runtime.config.dns.peers)

    def from_farm(self) -> bool:
        """The request's transport source is a farm address (never its Vias)."""
        return self.farm.contains(KSR.kx.get_srcip())

    def trusted_source(self) -> bool:
        return self.from_farm()

    def register(self) -> int:
        """Forward a REGISTER to the registrar with our Path (RFC 5626 §5.1).
        We are the device's first hop: Route and any Path the device wrote go
        (a Path with another device's token would steer that AOR's calls onto
        the other device's flow)."""
        KSR.hdr.remove("Route")
        if KSR.hdr.is_present("Path") > 0 and not self.from_farm():
            KSR.notice(f"kemi-outbound: Path written by {KSR.kx.get_srcip()} removed from REGISTER "
                       f"for {KSR.kx.get_turi()}\n")
            KSR.hdr.remove("Path")
        self.outbound_add_path()
        self.forward_to_home()
        return 1

    def forward_to_home(self) -> None:
        """Send the request on to the registrar / home proxy (edge.registrar),
        located by DNS (RFC 3263) and failed over target by target in
        ``ksr_failure_home``; 503 when no target can be found."""
        if not self.registrar:
            send_reply(Reply(500, "Server Internal Error", "edge.registrar is not configured"))
            return
        self.home_relay.relay(self.registrar)

    def outbound_add_path(self) -> PathKind:
        """Path with a flow token and ``;ob`` when outbound applies, else plain."""
        snap = snapshot()
        contacts = tuple(parse_name_addrs(snap.headers, "contact"))
        kind = edge_path_kind(snap.headers.first_hop, contacts, self.runtime.config.force_outbound)
        if kind is PathKind.FLOW:
            flow = source_flow(snap)
            KSR.path.add_path_user_params(self.codec.encode(flow), "ob")
            if flow.is_stream:
                self.keep_flow_open()
        else:
            KSR.path.add_path()
        return kind

    def route_view(self) -> RouteView:
        snap = snapshot()
        routes = tuple(parse_name_addrs(snap.headers, "route")[:2])
        strict = self._strict_routed_uri()
        if strict is not None:
            # RFC 3261 §16.4: a strict router upstream put our Record-Route URI in the
            # Request-URI; it counts as our top Route (loose_route restores the R-URI)
            routes = (strict, *routes[:1])
        ours = 0
        for route in routes:
            if not names_us(route):
                break
            ours += 1
        contacts = parse_name_addrs(snap.headers, "contact")
        return RouteView(
            method=snap.method.upper(),
            first_hop=snap.headers.first_hop,
            has_to_tag=KSR.siputils.has_totag() > 0,
            routes=routes,
            routes_ours=ours,
            contact_has_ob=bool(contacts) and not contacts[0].star and "ob" in contacts[0].sip_uri.params,
            source=source_flow(snap),
        )

    def _strict_routed_uri(self) -> NameAddr | None:
        """The Request-URI as a Route entry when it is one of our Record-Route URIs:
        names us, carries a user part (a flow token) and ``;lr``, as every URI the
        rr module records does."""
        ruri = KSR.kx.get_ruri()
        if ";lr" not in ruri.lower():
            return None  # the common case, without parsing the Request-URI
        try:
            entry = parse_name_addr(f"<{ruri}>")
            uri = entry.sip_uri  # parsed here: a Request-URI we cannot read is no strict route
        except SipSyntaxError:
            return None
        if not uri.user or "lr" not in uri.params or not names_us(entry):
            return None
        return entry

    def outbound_route(self, view: RouteView, *, in_dialog: bool) -> EdgeStep:
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
            self._send_to_flow(step)
        return step

    @staticmethod
    def is_local_flow(flow: Flow) -> bool:
        """The flow's local end is a socket of this Kamailio."""
        return KSR.is_myself(flow.local_uri()) > 0

    def _send_to_flow(self, decision: ToFlow) -> None:
        flow = decision.flow
        if not self.is_local_flow(flow):
            # a valid token of a peer edge (shared key): that flow is not here, and
            # its connection id would name another UA's connection of ours (RFC 5626
            # §5.3.1: a flow that does not exist here is answered 430)
            send_reply(Reply(430, "Flow Failed", f"flow {flow} is not on a socket of this edge"))
            return
        if flow.is_stream and not stream_flow_alive(flow):
            send_reply(flow_failed())
            KSR.notice(f"kemi-outbound: flow {flow} is gone, no new connection opened\n")
            return
        # pops our Route entry (two with double Record-Route); for an initial
        # request with a preloaded Route it removes it and answers "not driven"
        KSR.rr.loose_route()
        if decision.record_route:
            self._record_route(decision.token)
        KSR.pv.sets("$fs", flow.socket)
        KSR.setdsturi(flow.destination)
        KSR.set_forward_no_connect()
        if flow.is_stream:
            KSR.tcpops.tcp_set_otcpid(flow.conn_id)
            KSR.tcpops.tcp_set_otcpid_flag(1)
        if KSR.is_ACK():
            KSR.tm.t_relay()
            return
        KSR.tm.t_on_failure(FLOW_FAILURE_ROUTE)
        if KSR.is_INVITE() and self.runtime.config.flow_reply_timeout_ms > 0:
            KSR.tm.t_set_fr(0, self.runtime.config.flow_reply_timeout_ms)
        if KSR.tm.t_relay() < 0:
            KSR.notice(f"kemi-outbound: sending over flow {flow} failed\n")
            KSR.tm.t_reply(430, "Flow Failed")

    def outbound_record_route(self, view: RouteView) -> bool:
        """Record-Route for an outgoing dialog-forming request (RFC 5626 §5.3.2):
        with the flow token as user part when outbound applies, plain otherwise."""
        if record_route_token(view, self.runtime.config.force_outbound):
            self._record_route(self.codec.encode(view.source))
            return True
        if view.method in DIALOG_FORMING and not view.has_to_tag:
            self._record_route("")
        return False

    @staticmethod
    def _record_route(user: str) -> None:
        KSR.pv.sets(RR_USER_AVP, user)
        KSR.rr.record_route()

    def keep_flow_open(self) -> None:
        """RFC 5626 §5.4: an outbound TCP/TLS flow lives Flow-Timer plus a grace
        period without traffic (a CRLF keepalive is traffic), then it is closed."""
        config = self.runtime.config
        if config.flow_timer > 0:
            KSR.tcpops.tcp_set_connection_lifetime(config.flow_timer + config.keepalive_grace_seconds)

    def _initial(self) -> int:
        view = self.route_view()
        step = self.outbound_route(view, in_dialog=False)
        if isinstance(step, ToHome):
            self.outbound_record_route(view)
            KSR.hdr.remove("Route")
            self.forward_to_home()
        elif isinstance(step, Onward):
            # from the farm: on as its Route set says
            if KSR.rr.loose_route() in (1, RR_PRELOADED):
                # our preloaded Route (a plain Path) was the last one: on to the R-URI,
                # a name in it located by our RFC 3263 locator like any next hop
                if self._locate_next_hop():
                    self._relay()
            else:
                send_reply(Reply(404, "Not Found", "no route for an initial request from the core"))
        return 1

    def _within_dialog(self) -> int:
        step = self.outbound_route(self.route_view(), in_dialog=True)
        if not isinstance(step, Onward):
            return 1
        if KSR.rr.loose_route() > 0:
            refusal = self._next_hop_refusal() if step.farm_only else None
            if refusal is not None:
                send_reply(refusal)
            elif self._locate_next_hop():
                self._relay()
            return 1
        if KSR.is_ACK():
            if KSR.tm.t_check_trans() > 0:
                self._relay()  # the ACK of a non-2xx answer: tm absorbs it hop by hop
            return 1
        send_reply(Reply(404, "Not Found", "in-dialog request without a route"))
        return 1

    def _next_hop_refusal(self) -> Reply | None:
        """A device's in-dialog request goes to the farm only (outbound.relay)."""
        next_hop = str(KSR.pv.get("$du") or "") or KSR.kx.get_ruri()
        try:
            uri = SipUri.parse(next_hop)
        except SipSyntaxError:
            return Reply(403, "Forbidden", f"in-dialog request from a device toward {next_hop[:80]!r}")
        host = (uri.params.get("maddr") or uri.host).strip("[]")
        is_ip = ip_family(host) is not None
        return next_hop_refusal(host, host_is_ip=is_ip, ip_in_farm=is_ip and self.farm.contains(host),
                                farm_names=self.farm.names)

    @guarded
    def ksr_failure_flow(self, msg: Any) -> int:
        """No reply at all from the UA over its flow: tell the home proxy 430."""
        if KSR.tm.t_is_canceled() > 0:
            return 1
        if KSR.tm.t_branch_timeout() > 0 and KSR.tm.t_branch_replied() < 0:
            KSR.notice("kemi-outbound: no reply over the flow, answering 430\n")
            KSR.tm.t_reply(430, "Flow Failed")
        return 1

    @guarded
    def ksr_failure_home(self, msg: Any) -> int:
        """A registrar target failed: the next one on 503 / silence / transport error."""
        self.home_relay.on_failure()
        return 1

    @guarded
    def ksr_reply_home(self, msg: Any) -> int:
        """A reply from a held-down registrar target: it serves again."""
        self.home_relay.on_reply()
        return 1
