"""The flows a first hop holds (RFC 5626 §5.3): reading a request's Route view,
sending over the flow a token names, Record-Route with a token, flow lifetime.

One part, used by the two roles that are a device's first hop: the edge and
the single server. The decisions are the core's (outbound.routing,
outbound.relay); this part reads Kamailio's view of the request and carries
a ``ToFlow`` out.
"""

from __future__ import annotations

import KSR

from outbound.config import Config
from outbound.decisions import Reply
from outbound.metrics import FLOW_TOKENS
from outbound.policy import idle_lifetime
from outbound.routing import RouteView, ToFlow, flow_refusal, toward_endpoint
from outbound.sipmsg import NameAddr, SipSyntaxError, parse_name_addr
from outbound.tokens import Flow, FlowTokenCodec

from .base import leading_own_routes, names_us
from .names import (
    FLOW_FAILURE_ROUTE,
    FLOW_KEY_VAR,
    FLOWS_TABLE,
    HOME_REPLY_ROUTE,
    REGISTER_CONID_AVP,
    REGISTER_FLOW_AVP,
    RR_USER_AVP,
    WS_CLOSED_EVENT,
    FlowsEntry,
)
from .observe import OBSERVER
from .runtime import FLOW_ALIVE, Snapshot, send_reply, snapshot, stream_flow_state, t_reply

# the leading Route entries the core reads: a double Record-Route pair at most
ROUTES_READ = 2
# a WebSocket connection's close event names it tcp or tls (its socket): its flows are ws / wss
WS_OF_STREAM = {"tcp": ("ws",), "tls": ("wss",)}
CLOSE_EVENTS = ("tcp:closed", "tcp:timeout", "tcp:reset", WS_CLOSED_EVENT)


def closed_flow_keys(event: str) -> tuple[str, ...]:
    """tcpops / websocket close event of the current connection: the ko_flows
    keys (Flow.key) it may have been booked under; none for another event."""
    if event not in CLOSE_EVENTS:
        return ()
    proto = str(KSR.kx.get_proto()).lower()
    local = (KSR.kx.get_rcvip(), int(KSR.kx.get_rcvport()))
    remote = (KSR.kx.get_srcip(), int(KSR.kx.get_srcport()))
    return tuple(Flow(transport, *local, *remote).key for transport in (proto, *WS_OF_STREAM.get(proto, ())))


def source_flow(snap: Snapshot) -> Flow:
    """The flow the current request arrived on (RFC 5626 §3.3)."""
    return Flow(snap.transport, snap.rcv_ip, snap.rcv_port, snap.src_ip, snap.src_port,
                snap.conn_id if snap.transport != "udp" else 0)


def is_local_flow(flow: Flow) -> bool:
    """The flow's local end is a socket of this Kamailio."""
    return KSR.is_myself(flow.socket_uri()) > 0


class FlowRelay:
    """Sends requests over the flows of this Kamailio (see module docstring)."""

    def __init__(self, config: Config, codec: FlowTokenCodec, *, endpoints_in_dialog: bool) -> None:
        self.config = config
        self.codec = codec
        # in-dialog requests come from endpoints (single server): a flow failure is
        # answered as an endpoint must hear it (outbound.routing.toward_endpoint);
        # an edge gets them from the farm, which hears 430
        self.endpoints_in_dialog = endpoints_in_dialog

    def route_view(self) -> RouteView:
        """What outbound.routing needs of the current request."""
        snap = snapshot()
        routes = snap.headers.name_addrs("route")[:ROUTES_READ]
        strict = _strict_routed_uri()
        if strict is not None:
            # RFC 3261 §16.4: a strict router upstream put our Record-Route URI in the
            # Request-URI; it counts as our top Route (loose_route restores the R-URI)
            routes = (strict, *routes[:1])
        contacts = snap.headers.name_addrs("contact")
        return RouteView(
            method=snap.method.upper(),
            first_hop=snap.headers.first_hop,
            has_to_tag=KSR.siputils.has_totag() > 0,
            routes=routes,
            routes_ours=len(leading_own_routes(routes, ROUTES_READ)),
            contact_has_ob=bool(contacts) and not contacts[0].star and "ob" in contacts[0].sip_uri.params,
            source=source_flow(snap),
        )

    def send(self, decision: ToFlow) -> None:
        """Over exactly the flow of the token (RFC 5626 §5.3.1), never a new
        connection; 430 when the flow is not here or gone (outbound.routing.flow_refusal)."""
        flow = decision.flow
        local = is_local_flow(flow)
        state = stream_flow_state(flow) if local and flow.is_stream else FLOW_ALIVE
        refusal = flow_refusal(flow, local=local, alive=state == FLOW_ALIVE, gone=state)
        if refusal is not None:
            send_reply(self._toward_requester(refusal))
            return
        # pops our Route entry (two with double Record-Route); for an initial
        # request with a preloaded Route it removes it and answers "not driven"
        KSR.rr.loose_route()
        if decision.record_route:
            self.record_route(decision.token, flow.transport)
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
        if KSR.is_INVITE() and self.config.flow_reply_timeout_ms > 0:
            KSR.tm.t_set_fr(0, self.config.flow_reply_timeout_ms)
        if KSR.tm.t_relay() < 0:
            gone = self._toward_requester(flow_refusal(flow, local=True, alive=False))
            t_reply(gone, f"{KSR.kx.get_method()} over flow {flow} (sending failed)")

    def on_failure(self) -> None:
        """tm failure route of a request sent over a flow: no reply at all from
        the UA is the flow's failure (RFC 5626 §5.3.1, §11.5: 430 to the home proxy)."""
        if KSR.tm.t_is_canceled() > 0:
            return
        if KSR.tm.t_branch_timeout() > 0 and KSR.tm.t_branch_replied() < 0:
            gone = self._toward_requester(flow_refusal(None, local=True, alive=False, gone="flow_no_reply"))
            t_reply(gone, f"{KSR.kx.get_method()} (no reply over the flow)")

    def _toward_requester(self, reply: Reply) -> Reply:
        in_dialog = self.endpoints_in_dialog and KSR.siputils.has_totag() > 0
        return toward_endpoint(reply, in_dialog=in_dialog)

    @staticmethod
    def record_route(user: str, transport: str = "") -> None:
        """Record-Route with ``user`` (a flow token of a ``transport`` flow, or ""
        for a plain entry) as user part."""
        KSR.pv.sets(RR_USER_AVP, user)
        KSR.rr.record_route()
        if user:
            OBSERVER.count(FLOW_TOKENS, transport, "record_route")

    @staticmethod
    def book_register(flow: Flow, aor: str, expires: int) -> None:
        """A REGISTER with this TCP/TLS/WS flow's token goes on to the registrar:
        its 2xx books the connection in ko_flows (:meth:`registered`; the RPC view
        and the ``kemi_outbound_flows`` gauge read it), its close event unbooks it.
        Only for a stream flow: UDP flows are not booked (no connection to show,
        and their REGISTERs' replies stay out of Python: the bench's cost per REGISTER)."""
        KSR.pv.sets(REGISTER_FLOW_AVP, f"{flow.key} {flow.conn_id} {expires} {aor}")
        KSR.tcpops.tcp_enable_closed_event()  # the 2xx is seen in the reply route expect_flow_timer arms

    def expect_flow_timer(self, flow: Flow) -> None:
        """A REGISTER over ``flow`` goes on: its 2xx's Flow-Timer (the value the
        device keeps alive by) sets the flow's lifetime (:meth:`registered`)."""
        KSR.pv.seti(REGISTER_CONID_AVP, flow.conn_id)
        KSR.tm.t_on_reply(HOME_REPLY_ROUTE)

    def registered(self) -> None:
        """tm reply route of a REGISTER from a device: a 2xx books its flow (ko_flows,
        :meth:`book_register`) and, for TCP/TLS, sets the idle lifetime from its
        Flow-Timer (outbound.policy.idle_lifetime)."""
        self._book()
        conn_id = KSR.pv.get(REGISTER_CONID_AVP)
        if not isinstance(conn_id, int) or conn_id <= 0 or not 200 <= int(KSR.kx.get_status() or 0) < 300:
            return
        header = KSR.pv.get("$hdr(Flow-Timer)")
        lifetime = idle_lifetime(header if isinstance(header, str) else None, self.config.keepalive_grace_seconds)
        KSR.tcpops.tcp_set_connection_lifetime_cid(conn_id, lifetime)

    def _book(self) -> None:
        booked = KSR.pv.get(REGISTER_FLOW_AVP)
        if not isinstance(booked, str) or not 200 <= int(KSR.kx.get_status() or 0) < 300:
            return
        key, conn_id, expires, aor = (booked.split(" ", 3) + ["", "", ""])[:4]
        entry = FlowsEntry.from_text(KSR.htable.sht_get(FLOWS_TABLE, key))
        aors = entry.aors if entry is not None and str(entry.conn_id) == conn_id else ()
        if expires == "0":
            aors = tuple(a for a in aors if a != aor)
        elif aor not in aors:
            aors = (*aors, aor)
        if not aors:
            KSR.htable.sht_rm(FLOWS_TABLE, key)
            return
        # an item lives as long as the longest registration on it (plus the grace),
        # unless the connection's close event removes it first. One AOR leaving or
        # refreshing for less never shortens the others' (the item's expiry is read
        # before sht_sets resets it)
        KSR.pv.sets(FLOW_KEY_VAR, key)
        left = KSR.pv.get(f"$shtex({FLOWS_TABLE}=>{FLOW_KEY_VAR})") if aors != (aor,) else 0
        wanted = int(expires) + self.config.keepalive_grace_seconds if expires != "0" else 0
        KSR.htable.sht_sets(FLOWS_TABLE, key, FlowsEntry(int(conn_id or 0), aors).to_text())
        KSR.htable.sht_setex(FLOWS_TABLE, key, max(wanted, left if isinstance(left, int) else 0, 1))

    @staticmethod
    def unbook(event: str) -> None:
        """A close event of the current connection: its flows leave ko_flows."""
        for key in closed_flow_keys(event):
            KSR.htable.sht_rm(FLOWS_TABLE, key)

    def keep_open(self) -> None:
        """RFC 5626 §5.4: an outbound TCP/TLS flow lives Flow-Timer plus a grace
        period without traffic (a CRLF keepalive is traffic), then it is closed."""
        if self.config.flow_timer > 0:
            KSR.tcpops.tcp_set_connection_lifetime(self.config.flow_timer + self.config.keepalive_grace_seconds)


def _strict_routed_uri() -> NameAddr | None:
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
