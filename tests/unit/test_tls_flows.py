"""TLS flows in the pure core (RFC 5626 §3.3, §5.2, §5.3): the transport that
counts is the one the edge received on, not what the UA's Via or Contact say
(a UA behind a TLS proxy such as stunnel writes ``tcp`` there)."""

from dataclasses import replace

from outbound.decisions import PathKind, SaveBinding
from outbound.policy import RegisterView, edge_path_kind, registrar_decision
from outbound.routing import Outgoing, RouteView, ToFlow, route_decision
from outbound.sipmsg import parse_name_addr
from outbound.tokens import Flow, FlowTokenCodec, Verdict

CODEC = FlowTokenCodec([b"edge-key-0123456789abcdef-32bytes"])
TLS_FLOW = Flow("tls", "192.0.2.10", 5061, "203.0.113.9", 50001, 77)
SAME_ADDRESSES_OVER_TCP = replace(TLS_FLOW, transport="tcp")
CORE = Flow("udp", "192.0.2.10", 5060, "192.0.2.50", 5060, 0)
INSTANCE = '+sip.instance="<urn:uuid:00000000-0000-4000-8000-000000000001>"'
# what SIPp behind stunnel sends: its own transport is TCP
CONTACT_SAYS_TCP = parse_name_addr(f"<sip:bob@203.0.113.9:5070;transport=tcp;ob>;{INSTANCE};reg-id=1")


def double_rr(token: str) -> tuple:
    """The pair of Record-Route entries an edge adds when a dialog crosses from
    its TLS socket to its UDP socket (rr enable_double_rr), as Route entries."""
    return (parse_name_addr(f"<sip:{token}@192.0.2.10:5061;transport=tls;lr>"),
            parse_name_addr(f"<sip:{token}@192.0.2.10;lr>"))


def view(source: Flow, routes: tuple, method: str = "BYE") -> RouteView:
    return RouteView(method=method, first_hop=True, has_to_tag=True, routes=routes,
                     routes_ours=len(routes), contact_has_ob=False, source=source)


def test_tls_token_keeps_transport_and_connection_id():
    decoded = CODEC.decode(CODEC.encode(TLS_FLOW))
    assert decoded.verdict is Verdict.VALID and decoded.flow == TLS_FLOW
    assert decoded.flow.is_stream


def test_tls_and_tcp_flows_with_the_same_addresses_get_different_tokens():
    """§3.3: a flow is the transport too; a TCP flow's token never names a TLS flow."""
    assert CODEC.encode(TLS_FLOW) != CODEC.encode(SAME_ADDRESSES_OVER_TCP)


def test_register_over_tls_with_tcp_in_contact_is_outbound_at_the_edge_and_registrar():
    """§5.1, §6: only Via count, reg-id, +sip.instance and the edge's ;ob count;
    the transport named in the Contact plays no part."""
    contacts = (CONTACT_SAYS_TCP,)
    assert edge_path_kind(1, contacts, force_outbound=False) is PathKind.FLOW
    path = parse_name_addr(f"<sip:{CODEC.encode(TLS_FLOW)}@192.0.2.10;lr;ob>")
    at_registrar = RegisterView(first_hop=False, contacts=contacts, paths=(path,), expires_header=600,
                                supported=frozenset({"path", "outbound"}))
    decision = registrar_decision(at_registrar, default_expires=3600, flow_timer=25)
    assert isinstance(decision, SaveBinding) and decision.outbound


def test_request_from_the_tls_ua_through_its_double_record_route_is_outgoing():
    """§5.3: both tokens name the TLS flow the request came on: loose routing."""
    token = CODEC.encode(TLS_FLOW)
    assert route_decision(view(TLS_FLOW, double_rr(token)), CODEC) == Outgoing(TLS_FLOW)


def test_request_from_the_core_goes_to_the_tls_flow():
    token = CODEC.encode(TLS_FLOW)
    assert route_decision(view(CORE, double_rr(token)), CODEC) == ToFlow(TLS_FLOW, token, False)


def test_same_addresses_over_tcp_are_not_the_tls_flow():
    """A TCP connection from the UA's address and port is another flow: a request
    on it naming the TLS flow is sent to the TLS flow, never treated as outgoing."""
    token = CODEC.encode(TLS_FLOW)
    decision = route_decision(view(SAME_ADDRESSES_OVER_TCP, double_rr(token)), CODEC)
    assert isinstance(decision, ToFlow) and decision.flow == TLS_FLOW
