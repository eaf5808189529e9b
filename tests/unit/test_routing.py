"""Edge routing of non-REGISTER requests (RFC 5626 §5.3, §5.3.1, §5.3.2), table-driven."""

from dataclasses import replace

import pytest

from outbound.bindings import Binding, PathHop, first_hop
from outbound.decisions import Reply
from outbound.routing import (
    LooseRoute,
    Outgoing,
    RouteView,
    ToFlow,
    flow_refusal,
    record_route_token,
    route_decision,
    toward_endpoint,
)
from outbound.sipmsg import parse_name_addr
from outbound.tokens import Flow, FlowTokenCodec

KEY = b"edge-key-0123456789abcdef-32bytes"
OTHER_KEY = b"someone-elses-key-0123456-32bytes"
CODEC = FlowTokenCodec([KEY])

UA_A = Flow("tcp", "192.0.2.10", 5060, "198.51.100.7", 49152, 1234)
UA_B = Flow("tls", "192.0.2.10", 5061, "203.0.113.9", 50001, 77)
HOME = Flow("udp", "192.0.2.10", 5060, "192.0.2.50", 5060, 0)  # the home proxy / registrar side
UA_A_OVER_UDP = Flow("udp", "192.0.2.10", 5060, "198.51.100.7", 49152, 0)  # same addresses, other transport
UA_A_RECONNECTED = replace(UA_A, conn_id=1235)  # same addresses, new connection (RFC 5626 §3.4)

TOKEN_A = CODEC.encode(UA_A)
TOKEN_B = CODEC.encode(UA_B)
TOKEN_A_OTHER_KEY = FlowTokenCodec([OTHER_KEY]).encode(UA_A)


def forge(token: str, index: int) -> str:
    """The token with one character changed (still 36 URL-safe base64 characters)."""
    replacement = "A" if token[index] != "A" else "B"
    return token[:index] + replacement + token[index + 1:]


def route(user: str | None = None, ob: bool = True, host: str = "edge.example.com"):
    userinfo = f"{user}@" if user is not None else ""
    return parse_name_addr(f"<sip:{userinfo}{host};lr{';ob' if ob else ''}>")


def other_route(user: str | None = None):
    return route(user, ob=True, host="proxy.elsewhere.example.net")


def view(
    routes=(),
    ours: int | None = None,
    source: Flow = UA_B,
    method: str = "INVITE",
    via_count: int = 1,
    to_tag: bool = False,
    contact_ob: bool = False,
) -> RouteView:
    """A request; ``ours`` defaults to "every Route given names this edge"."""
    return RouteView(
        method=method,
        first_hop=via_count == 1,
        has_to_tag=to_tag,
        routes=tuple(routes),
        routes_ours=len(routes) if ours is None else ours,
        contact_has_ob=contact_ob,
        source=source,
    )


def check(decision, expected) -> None:
    """``expected``: a reply code, a decision class (LooseRoute's reason is free text), or an exact decision."""
    if isinstance(expected, int):
        assert isinstance(decision, Reply), decision
        assert decision.code == expected
    elif isinstance(expected, type):
        assert isinstance(decision, expected), decision
    else:
        assert decision == expected


# --- route_decision (RFC 5626 §5.3) ----------------------------------------------------------

ROUTE_CASES = [
    # (id, view, expected)
    # Not our business: ordinary RFC 3261 §16.4 loose routing.
    ("no-route-loose-route", view(()), LooseRoute),
    ("top-route-not-ours-loose-route", view((route(TOKEN_A),), ours=0), LooseRoute),
    ("ours-without-user-loose-route", view((route(None),)), LooseRoute),
    # §5.3.1: a token that fails verification is answered 403; a user part on our
    # Route is only ever a token we wrote, so one that is no token at all is damaged.
    ("user-not-a-token-403", view((route("alice"),)), 403),
    ("token-one-char-short-403", view((route(TOKEN_A[:-1]),)), 403),
    ("token-one-char-long-403", view((route(TOKEN_A + "A"),)), 403),
    ("token-length-with-foreign-char-403", view((route(TOKEN_A[:-1] + "."),)), 403),
    ("user-of-1024-chars-is-not-too-long-but-damaged-403", view((route("a" * 1024),)), 403),
    ("first-char-changed-403", view((route(forge(TOKEN_A, 0)),)), 403),
    ("middle-char-changed-403", view((route(forge(TOKEN_A, 17)),)), 403),
    ("last-char-changed-403", view((route(forge(TOKEN_A, 35)),)), 403),
    ("signed-with-another-key-403", view((route(TOKEN_A_OTHER_KEY),)), 403),
    ("oversized-user-400", view((route("a" * 1025),)), 400),
    ("oversized-user-400-even-when-from-the-flow", view((route("a" * 1025),), source=UA_A), 400),
    # §5.3.1 vs §5.3.2: from the flow the token names (outgoing) or to it (incoming).
    ("token-of-the-source-outgoing", view((route(TOKEN_A),), source=UA_A), Outgoing(UA_A)),
    ("token-of-another-flow-to-flow", view((route(TOKEN_A),), source=HOME), ToFlow(UA_A, TOKEN_A, True)),
    ("same-addresses-over-udp-is-not-the-source",
     view((route(TOKEN_A),), source=UA_A_OVER_UDP), ToFlow(UA_A, TOKEN_A, True)),
    ("reconnected-tcp-is-not-the-source",
     view((route(TOKEN_A),), source=UA_A_RECONNECTED), ToFlow(UA_A, TOKEN_A, True)),
    ("udp-token-from-tcp-source-to-flow",
     view((route(CODEC.encode(UA_A_OVER_UDP)),), source=UA_A),
     ToFlow(UA_A_OVER_UDP, CODEC.encode(UA_A_OVER_UDP), True)),
    # Double Record-Route pair: both entries carry the same token.
    ("double-rr-from-the-flow-outgoing",
     view((route(TOKEN_A), route(TOKEN_A)), source=UA_A), Outgoing(UA_A)),
    ("double-rr-to-the-flow",
     view((route(TOKEN_A), route(TOKEN_A)), source=HOME, to_tag=True), ToFlow(UA_A, TOKEN_A, False)),
    # Single-server dialog: one token per side; the request goes to the side it did not come from.
    ("one-token-per-side-from-a-to-b",
     view((route(TOKEN_A), route(TOKEN_B)), source=UA_A, method="BYE", to_tag=True),
     ToFlow(UA_B, TOKEN_B, False)),
    ("one-token-per-side-from-b-to-a",
     view((route(TOKEN_A), route(TOKEN_B)), source=UA_B, method="BYE", to_tag=True),
     ToFlow(UA_A, TOKEN_A, False)),
    ("one-token-per-side-reversed-order-from-a-to-b",
     view((route(TOKEN_B), route(TOKEN_A)), source=UA_A, method="BYE", to_tag=True),
     ToFlow(UA_B, TOKEN_B, False)),
    ("one-token-per-side-from-neither-first-wins",
     view((route(TOKEN_A), route(TOKEN_B)), source=HOME, method="BYE", to_tag=True),
     ToFlow(UA_A, TOKEN_A, False)),
    ("one-token-per-side-second-forged-403",
     view((route(TOKEN_A), route(forge(TOKEN_B, 20))), source=UA_A, method="BYE", to_tag=True), 403),
    ("one-token-per-side-first-forged-403",
     view((route(forge(TOKEN_A, 20)), route(TOKEN_B)), source=UA_B, method="BYE", to_tag=True), 403),
    ("first-ours-without-user-second-with-token",
     view((route(None), route(TOKEN_B)), source=UA_A, method="BYE", to_tag=True),
     ToFlow(UA_B, TOKEN_B, False)),
    # Only the leading Routes that name us count.
    ("second-route-not-ours-token-ignored",
     view((route(TOKEN_A), other_route(TOKEN_B)), ours=1, source=UA_A), Outgoing(UA_A)),
    ("second-route-not-ours-forged-token-ignored",
     view((route(TOKEN_A), other_route(forge(TOKEN_B, 5))), ours=1, source=UA_A), Outgoing(UA_A)),
    ("second-route-not-ours-only-token-loose-route",
     view((route(None), other_route(TOKEN_B)), ours=1, source=UA_A), LooseRoute),
]


@pytest.mark.parametrize(
    ("request_view", "expected"),
    [case[1:] for case in ROUTE_CASES],
    ids=[case[0] for case in ROUTE_CASES],
)
def test_route_decision(request_view, expected):
    check(route_decision(request_view, CODEC), expected)


@pytest.mark.parametrize(
    ("method", "to_tag", "ob", "record"),
    [
        ("INVITE", False, True, True),
        ("SUBSCRIBE", False, True, True),
        ("REFER", False, True, True),
        ("invite", False, True, False),  # the adapter upper-cases; the core does not guess
        ("BYE", False, True, False),
        ("MESSAGE", False, True, False),
        ("OPTIONS", False, True, False),
        ("INVITE", True, True, False),
        ("SUBSCRIBE", True, True, False),
        ("INVITE", False, False, False),
        ("REFER", False, False, False),
    ],
    ids=[
        "initial-invite-with-ob",
        "initial-subscribe-with-ob",
        "initial-refer-with-ob",
        "lower-case-method-not-dialog-forming",
        "bye-never",
        "message-never",
        "options-never",
        "in-dialog-invite-never",
        "in-dialog-subscribe-never",
        "invite-route-without-ob",
        "refer-route-without-ob",
    ],
)
def test_to_flow_record_route_only_for_initial_dialog_forming_with_ob(method, to_tag, ob, record):
    """RFC 5626 §5.3.1: an incoming dialog-forming request whose Route had ``ob`` gets a
    flow-token Record-Route so that the dialog stays on the flow."""
    decision = route_decision(view((route(TOKEN_A, ob=ob),), source=HOME, method=method, to_tag=to_tag), CODEC)

    assert decision == ToFlow(UA_A, TOKEN_A, record)


def test_record_route_on_to_flow_follows_the_ob_of_the_chosen_route():
    """Single-server mode: the Route whose token is used is the one whose ``ob`` counts."""
    request = view((route(TOKEN_A, ob=True), route(TOKEN_B, ob=False)), source=UA_A)

    assert route_decision(request, CODEC) == ToFlow(UA_B, TOKEN_B, False)


def test_key_rotation_old_key_still_verifies():
    """RFC 5626 §5.2: tokens signed before a key rotation stay valid while the old key is listed."""
    rotated = FlowTokenCodec([OTHER_KEY, KEY])

    assert route_decision(view((route(TOKEN_A),), source=UA_A), rotated) == Outgoing(UA_A)


def test_forged_reply_is_forbidden_and_names_the_token():
    decision = route_decision(view((route(forge(TOKEN_A, 3)),)), CODEC)

    assert (decision.code, decision.reason) == (403, "Forbidden")
    assert forge(TOKEN_A, 3)[:20] in decision.log


def test_oversized_reply_is_bad_request():
    decision = route_decision(view((route("x" * 5000),)), CODEC)

    assert (decision.code, decision.reason) == (400, "Bad Request")
    assert "5000" in decision.log


# Kamailio prints IPv6 addresses upper-case and uncompressed ($si, $Ri: ip6tosbuf);
# the token decodes them in Python's compressed form. Both name the same flow (RFC 5626 §3.3).
UA_V6 = Flow("tls", "2001:db8::10", 5061, "2001:db8:ffff::7", 50001, 9)
TOKEN_V6 = CODEC.encode(UA_V6)


@pytest.mark.parametrize(
    "source",
    [
        UA_V6,
        Flow("tls", "2001:DB8:0:0:0:0:0:10", 5061, "2001:DB8:FFFF:0:0:0:0:7", 50001, 9),
        Flow("tls", "[2001:db8::10]", 5061, "[2001:db8:ffff::7]", 50001, 9),
        Flow("TLS", "2001:db8::10", 5061, "2001:db8:ffff::7", 50001, 9),
    ],
    ids=["canonical", "kamailio-uncompressed-upper-case", "bracketed", "upper-case-transport"],
)
def test_ipv6_source_in_any_spelling_is_the_flow_of_its_token(source):
    assert route_decision(view((route(TOKEN_V6),), source=source), CODEC) == Outgoing(UA_V6)


@pytest.mark.parametrize(
    "source",
    [
        Flow("tls", "2001:DB8:0:0:0:0:0:10", 5061, "2001:DB8:FFFF:0:0:0:0:8", 50001, 9),
        Flow("tls", "2001:DB8:0:0:0:0:0:10", 5061, "2001:DB8:FFFF:0:0:0:0:7", 50001, 10),
        Flow("tcp", "2001:DB8:0:0:0:0:0:10", 5061, "2001:DB8:FFFF:0:0:0:0:7", 50001, 9),
    ],
    ids=["other-remote-ip", "other-conn-id", "other-transport"],
)
def test_ipv6_other_flow_in_kamailio_spelling_is_not_the_source(source):
    assert route_decision(view((route(TOKEN_V6),), source=source), CODEC) == ToFlow(UA_V6, TOKEN_V6, True)


# --- record_route_token (RFC 5626 §5.3.2) -----------------------------------------------------

INSTANCE = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'


def uri_has_ob(contact: str) -> bool:
    """``ob`` is a Contact URI parameter (RFC 5626 §5.3.2, §10), as the adapter reads it."""
    return "ob" in parse_name_addr(contact).sip_uri.params


RR_CASES = [
    # (id, view, force_outbound, expected)
    ("invite-first-hop-contact-ob", view(method="INVITE", contact_ob=True), False, True),
    ("subscribe-first-hop-contact-ob", view(method="SUBSCRIBE", contact_ob=True), False, True),
    ("refer-first-hop-contact-ob", view(method="REFER", contact_ob=True), False, True),
    ("invite-first-hop-our-route-ob", view((route(None, ob=True),), method="INVITE"), False, True),
    ("invite-first-hop-our-token-route-ob", view((route(TOKEN_A, ob=True),), method="INVITE"), False, True),
    ("route-ob-not-ours", view((other_route(None),), ours=0, method="INVITE"), False, False),
    ("our-route-without-ob", view((route(None, ob=False),), method="INVITE"), False, False),
    ("ob-only-on-second-route", view((route(None, ob=False), route(None, ob=True)), method="INVITE"), False, False),
    ("no-ob-anywhere", view(method="INVITE"), False, False),
    ("two-vias-contact-ob", view(method="INVITE", via_count=2, contact_ob=True), False, False),
    ("two-vias-our-route-ob", view((route(None),), method="INVITE", via_count=2), False, False),
    ("force-with-two-vias-no-ob", view(method="INVITE", via_count=2), True, True),
    ("force-first-hop-no-ob", view(method="SUBSCRIBE"), True, True),
    ("message-never", view(method="MESSAGE", contact_ob=True), False, False),
    ("message-never-even-forced", view(method="MESSAGE", contact_ob=True), True, False),
    ("options-never-even-forced", view(method="OPTIONS", contact_ob=True), True, False),
    ("register-never-even-forced", view(method="REGISTER", contact_ob=True), True, False),
    ("in-dialog-invite-never", view(method="INVITE", to_tag=True, contact_ob=True), False, False),
    ("in-dialog-invite-never-even-forced", view(method="INVITE", to_tag=True, contact_ob=True), True, False),
    # Kamailio issue 3190: ;ob without +sip.instance still gets the token; the instance is not looked at.
    ("invite-ob-without-instance",
     view(method="INVITE", contact_ob=uri_has_ob("<sip:alice@198.51.100.7:49152;transport=tcp;ob>")), False, True),
    ("invite-instance-without-ob",
     view(method="INVITE", contact_ob=uri_has_ob(f"<sip:alice@198.51.100.7:49152;transport=tcp>;{INSTANCE}")),
     False, False),
]


@pytest.mark.parametrize(
    ("request_view", "force", "expected"),
    [case[1:] for case in RR_CASES],
    ids=[case[0] for case in RR_CASES],
)
def test_record_route_token(request_view, force, expected):
    assert record_route_token(request_view, force) is expected


@pytest.mark.parametrize(("local", "alive", "why"), [
    (False, False, "not on a socket of this edge"),
    (False, True, "not on a socket of this edge"),
    (True, False, "is gone, no new connection opened"),
])
def test_flow_not_here_or_gone_is_430(local, alive, why):
    """RFC 5626 §5.3.1 / §11.5: 430 Flow Failed when the token's flow is not
    here or gone; never a new connection."""
    reply = flow_refusal(UA_A, local=local, alive=alive)

    assert reply is not None
    assert (reply.code, reply.reason, reply.headers) == (430, "Flow Failed", ())
    assert why in reply.log


def test_a_flow_that_gave_no_reply_is_430_and_its_log_names_no_none():
    """RFC 5626 §5.3.1: no reply at all over the flow is its failure (the tm
    failure route, where the flow itself is not at hand)."""
    reply = flow_refusal(None, local=True, alive=False, gone="flow_no_reply")

    assert reply is not None and (reply.code, reply.cause) == (430, "flow_no_reply")
    assert "the flow is gone, no new connection opened" in reply.log and "None" not in reply.log


def test_a_live_local_flow_is_used():
    assert flow_refusal(UA_A, local=True, alive=True) is None


@pytest.mark.parametrize(("path", "expected"), [
    (f"<sip:{TOKEN_A}@192.0.2.10:5060;transport=tcp;lr;ob>", UA_A),
    (f"<sip:{TOKEN_A}@192.0.2.10;lr;ob>, <sip:core.example.net;lr>", UA_A),
    (f"<sip:{TOKEN_A_OTHER_KEY}@192.0.2.10;lr;ob>", None),
    ("<sip:edge.example.com;lr>", None),
    ("<sip:alice@192.0.2.10;lr>", None),
    ("", None),
    ("<garbage", None),
])
def test_a_path_whose_first_entry_carries_our_token_leads_to_its_flow(path, expected):
    """RFC 5626 §5.2 / §7: a Path whose first entry carries our token leads to
    that flow (bindings.first_hop reads the Path, FlowTokenCodec.flow_of the token)."""
    hop = first_hop(Binding("r1", "sip:ua@192.0.2.99", path=path, received="sip:192.0.2.99:5060"))
    found = CODEC.flow_of(hop.first.user) if isinstance(hop, PathHop) else None

    assert found == expected


@pytest.mark.parametrize(("code", "in_dialog", "expected"), [
    (430, True, 408),   # the dialog's target is gone: the UAC ends the dialog
    (430, False, 430),  # an initial request: the home proxy fails over on it
    (403, True, 403),
    (408, True, 408),
    (486, True, 486),
])
def test_430_never_reaches_an_endpoint_inside_a_dialog(code, in_dialog, expected):
    """RFC 5626 §11.5 (checklist D8/A6.3): 430 is for proxies; in a dialog it is 408
    (RFC 3261 §12.2.1.2: the UAC terminates the dialog)."""
    reply = toward_endpoint(Reply(code, "Some Reason", "why"), in_dialog=in_dialog)

    assert reply.code == expected
    assert (reply.reason == "Some Reason") is (code == expected)
