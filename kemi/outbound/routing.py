"""Edge routing of non-REGISTER requests (RFC 5626 §5.3).

``route_decision`` replaces ``loose_route`` for a request whose top Route names
this edge: it tells apart a forged token (403), a request coming *from* the
flow (outgoing: ordinary loose routing) and one going *to* the flow (incoming:
send over exactly that flow, 430 when it is gone). ``record_route_token``
decides when an outgoing dialog-forming request gets a token in its
Record-Route (§5.3.2) so that mid-dialog requests come back over the flow.
"""

from __future__ import annotations

from dataclasses import dataclass

from .decisions import Reply
from .sipmsg import NameAddr
from .tokens import Flow, FlowTokenCodec, Verdict

DIALOG_FORMING = frozenset({"INVITE", "SUBSCRIBE", "REFER"})
MAX_ROUTE_USER = 1024


@dataclass(frozen=True, slots=True)
class RouteView:
    """What the routing decision needs to know about one request.

    ``routes`` holds the first Route entries (two are enough: a double
    Record-Route pair); ``routes_ours`` how many of the leading ones name us.
    """

    method: str
    first_hop: bool  # sipmsg.Headers.first_hop
    has_to_tag: bool
    routes: tuple[NameAddr, ...]
    routes_ours: int
    contact_has_ob: bool
    source: Flow

    @property
    def top_route(self) -> NameAddr | None:
        return self.routes[0] if self.routes else None

    @property
    def top_route_is_me(self) -> bool:
        return self.routes_ours > 0


@dataclass(frozen=True, slots=True)
class LooseRoute:
    """Ordinary RFC 3261 §16.4 route processing (our token played no part)."""

    why: str


@dataclass(frozen=True, slots=True)
class Outgoing:
    """The request came over the flow its token names: loose-route it on."""

    flow: Flow


@dataclass(frozen=True, slots=True)
class ToFlow:
    """Incoming request: send over ``flow``; add a token Record-Route when
    ``record_route`` (dialog-forming request whose Route had ``ob``, §5.3.1)."""

    flow: Flow
    token: str
    record_route: bool


RouteDecision = LooseRoute | Outgoing | ToFlow | Reply


def route_decision(view: RouteView, codec: FlowTokenCodec) -> RouteDecision:
    """RFC 5626 §5.3: route processing when the top Route is us and has a token.

    Our leading Route entries (one, or a double Record-Route pair; in
    single-server mode one per side of the dialog) are read together: a forged
    token is answered 403; the first flow that is not the request's source is
    where the request goes (incoming); when every token names the source, the
    request came over its own flow (outgoing) and loose routing goes on.
    """
    if not view.routes:
        return LooseRoute("no Route header")
    if view.routes_ours == 0:
        return LooseRoute("top Route is not this edge")
    flows: list[tuple[Flow, str, NameAddr]] = []
    for route in view.routes[: view.routes_ours]:
        user = route.sip_uri.user
        if not user:
            continue
        if len(user) > MAX_ROUTE_USER:
            return Reply(400, "Bad Request", f"Route user part of {len(user)} bytes", cause="oversized_token")
        decoded = codec.decode(user)
        if decoded.verdict is Verdict.NOT_A_TOKEN:
            # a user part on a Route naming us is only ever a token we wrote (Path,
            # Record-Route): truncated, extended or out of the alphabet, it is a
            # damaged token, not "no token" (§5.3.1: 403, never routed on)
            return Reply(403, "Forbidden", f"damaged flow token {user[:80]!r}", cause="damaged_token")
        if decoded.verdict is Verdict.FORGED or decoded.flow is None:
            return Reply(403, "Forbidden", f"forged flow token {user[:80]!r}", cause="forged_token")
        flows.append((decoded.flow, user, route))
    if not flows:
        return LooseRoute("our Route carries no flow token")
    source = view.source.canonical()
    for flow, user, route in flows:
        if flow != source:
            record = view.method in DIALOG_FORMING and not view.has_to_tag and "ob" in route.sip_uri.params
            return ToFlow(flow, user, record)
    return Outgoing(flows[0][0])


def record_route_token(view: RouteView, force_outbound: bool) -> bool:
    """RFC 5626 §5.3.2: an outgoing dialog-forming request from the UA (first hop)
    with ``;ob`` in its Contact or in a top Route naming us, or force_outbound,
    gets a Record-Route carrying the flow token. Instance-id is not required
    (Kamailio issue 3190)."""
    if view.method not in DIALOG_FORMING or view.has_to_tag:
        return False
    if force_outbound:
        return True
    if not view.first_hop:
        return False
    route_has_ob = (
        view.top_route is not None and view.top_route_is_me and "ob" in view.top_route.sip_uri.params
    )
    return view.contact_has_ob or route_has_ob


def flow_refusal(flow: Flow | None, *, local: bool, alive: bool, gone: str = "flow_closed") -> Reply | None:
    """RFC 5626 §5.3.1 / §11.5: a request for the flow of a valid token goes
    over that flow or is answered 430 Flow Failed, never over a new connection.
    Not ``local``: a peer edge's token under a shared key, whose connection id
    would name another UA's connection here. Not ``alive``: closed, reset, or
    the UA gave no reply over it; ``gone`` is the reason code (outbound.metrics:
    ``flow_closed``, ``flow_reused_connection``, ``flow_no_reply``). None: send over it."""
    if not local:
        return Reply(430, "Flow Failed", f"flow {flow} is not on a socket of this edge", cause="flow_not_here")
    if not alive:
        # None: the failure route of a request the UA never answered, where the flow is not at hand
        what = "the flow" if flow is None else f"flow {flow}"
        return Reply(430, "Flow Failed", f"{what} is gone, no new connection opened", cause=gone)
    return None


def toward_endpoint(reply: Reply, *, in_dialog: bool) -> Reply:
    """RFC 5626 §11.5: 430 Flow Failed is an edge's word to the authoritative
    proxy, never meant for an endpoint. Only the home proxy acts on it, at an
    initial request (failover to another flow, else 480). Inside a dialog there
    is no other flow to try: the target is gone, and 408 is what makes the UAC
    end the dialog (RFC 3261 §12.2.1.2, §14.1). Any other reply stands."""
    if reply.code == 430 and in_dialog:
        return Reply(408, "Request Timeout", f"{reply.log} (430 in a dialog, answered 408 toward the endpoint)",
                     reply.headers, reply.cause)
    return reply
