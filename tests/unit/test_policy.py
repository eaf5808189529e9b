"""Edge (RFC 5626 §5.1) and registrar (RFC 5626 §6) decisions, table-driven."""

import pytest

from outbound.decisions import PathKind, Reply, SaveBinding
from outbound.policy import RegisterView, edge_path_kind, idle_lifetime, registrar_decision
from outbound.sipmsg import parse_name_addr

INSTANCE = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
OB_CONTACT = f"<sip:alice@192.0.2.1:49152;transport=tcp>;{INSTANCE};reg-id=1"
PLAIN_CONTACT = "<sip:alice@192.0.2.1:5060>"
BARE_OB_CONTACT = f"sip:alice@192.0.2.1:5060;{INSTANCE};reg-id=1"  # addr-spec form, RFC 3261 §20.10
EDGE_PATH_OB = "<sip:FlowToken_0123456789-abcdefghijklmn@edge.example.com;lr;ob>"
EDGE_PATH_PLAIN = "<sip:edge.example.com;lr>"
BOTH = frozenset({"path", "outbound"})
PATH_ONLY = frozenset({"path"})

REQUIRE = "Require: outbound"
FLOW_TIMER = "Flow-Timer: 25"


def contacts(*values: str) -> tuple:
    return tuple(parse_name_addr(v) for v in values)


def view(
    vias: int,
    contact_values: tuple[str, ...],
    path_values: tuple[str, ...] = (),
    expires: int | None = None,
    supported: frozenset[str] = BOTH,
) -> RegisterView:
    return RegisterView(
        first_hop=vias == 1,
        contacts=contacts(*contact_values),
        paths=contacts(*path_values),
        expires_header=expires,
        supported=supported,
    )


def decide(register: RegisterView, flow_timer: int = 25):
    return registrar_decision(register, default_expires=3600, flow_timer=flow_timer)


# --- edge: which Path to add (RFC 5626 §5.1) -------------------------------------------------

@pytest.mark.parametrize(
    ("vias", "contact_values", "force", "kind"),
    [
        (1, (OB_CONTACT,), False, PathKind.FLOW),
        (1, (PLAIN_CONTACT,), False, PathKind.PLAIN),
        (2, (OB_CONTACT,), False, PathKind.PLAIN),
        (1, (PLAIN_CONTACT, "<sip:alice@192.0.2.1:5062>;reg-id=2"), False, PathKind.FLOW),
        (1, (BARE_OB_CONTACT,), False, PathKind.FLOW),
        (1, (), False, PathKind.PLAIN),
        (1, (OB_CONTACT,), True, PathKind.FLOW),
        (1, (PLAIN_CONTACT,), True, PathKind.FLOW),
        (2, (OB_CONTACT,), True, PathKind.FLOW),
        (2, (PLAIN_CONTACT,), True, PathKind.FLOW),
    ],
    ids=[
        "first-hop-reg-id-gets-flow",
        "first-hop-no-reg-id-plain",
        "not-first-hop-reg-id-plain",
        "any-contact-with-reg-id",
        "bare-uri-contact-with-reg-id",
        "no-contact-plain",
        "force-first-hop-reg-id",
        "force-no-reg-id",
        "force-not-first-hop",
        "force-not-first-hop-no-reg-id",
    ],
)
def test_edge_path_kind(vias, contact_values, force, kind):
    assert edge_path_kind(vias == 1, contacts(*contact_values), force) is kind


# --- registrar (RFC 5626 §6, RFC 3261 §10.3, RFC 3327 §5.3) ------------------------------------

OUTBOUND_OK = SaveBinding(outbound=True, reply_headers=(REQUIRE, FLOW_TIMER))
NO_OUTBOUND = SaveBinding(outbound=False)

REGISTRAR_CASES = [
    # (id, view, flow_timer, expected decision or reply code)
    ("outbound-via-edge-with-ob",
     view(2, (OB_CONTACT,), (EDGE_PATH_OB,)), 25, OUTBOUND_OK),
    ("outbound-direct-first-hop",
     view(1, (OB_CONTACT,)), 25, OUTBOUND_OK),
    ("outbound-bare-uri-contact",
     view(2, (BARE_OB_CONTACT,), (EDGE_PATH_OB,)), 25, OUTBOUND_OK),
    ("flow-timer-0-only-require",
     view(2, (OB_CONTACT,), (EDGE_PATH_OB,)), 0, SaveBinding(outbound=True, reply_headers=(REQUIRE,))),
    ("edge-without-ob-ua-supports-outbound-439",
     view(2, (OB_CONTACT,), (EDGE_PATH_PLAIN,)), 25, 439),
    ("edge-without-ob-ua-lacks-supported-outbound-ignored",
     view(2, (OB_CONTACT,), (EDGE_PATH_PLAIN,), supported=PATH_ONLY), 25,
     SaveBinding(outbound=False, ignore_reg_id=True)),
    ("not-first-hop-no-path-439",
     view(2, (OB_CONTACT,)), 25, 439),
    ("ob-only-counts-on-the-top-path",
     view(3, (OB_CONTACT,), (EDGE_PATH_PLAIN, EDGE_PATH_OB)), 25, 439),
    ("no-reg-id-not-first-hop-no-439",
     view(2, (f"<sip:alice@192.0.2.1>;{INSTANCE}",), (EDGE_PATH_PLAIN,)), 25, NO_OUTBOUND),
    ("reg-id-without-instance-ignored",
     view(1, ("<sip:alice@192.0.2.1>;reg-id=1",)), 25, NO_OUTBOUND),
    ("reg-id-0-without-instance-ignored",
     view(1, ("<sip:alice@192.0.2.1>;reg-id=0",)), 25, NO_OUTBOUND),
    ("reg-id-without-instance-via-edge-without-ob-no-439",
     view(2, ("<sip:alice@192.0.2.1>;reg-id=1",), (EDGE_PATH_PLAIN,)), 25, NO_OUTBOUND),
    ("empty-instance-does-not-count",
     view(1, ('<sip:alice@192.0.2.1>;+sip.instance="<>";reg-id=0',)), 25, NO_OUTBOUND),
    ("reg-id-max-ok",
     view(1, (f"<sip:alice@192.0.2.1>;{INSTANCE};reg-id=2147483647",)), 25, OUTBOUND_OK),
    ("two-live-contacts-one-with-reg-id-400",
     view(1, (OB_CONTACT, PLAIN_CONTACT)), 25, 400),
    ("second-contact-expires-0-allowed",
     view(1, (OB_CONTACT, "<sip:alice@192.0.2.1:5060>;expires=0")), 25, OUTBOUND_OK),
    ("star-with-expires-0",
     view(1, ("*",), expires=0), 25, NO_OUTBOUND),
    ("star-with-expires-3600-400",
     view(1, ("*",), expires=3600), 25, 400),
    ("star-without-expires-400",
     view(1, ("*",)), 25, 400),
    ("star-with-another-contact-400",
     view(1, ("*", PLAIN_CONTACT), expires=0), 25, 400),
    # RFC 3327 §5.3 local policy: most phones never send Supported: path (issue 13 item 4)
    ("path-without-supported-path-stored",
     view(2, (OB_CONTACT,), (EDGE_PATH_OB,), supported=frozenset({"outbound"})), 25, OUTBOUND_OK),
    ("plain-phone-through-edge-without-any-supported",
     view(2, (PLAIN_CONTACT,), (EDGE_PATH_PLAIN,), supported=frozenset()), 25, NO_OUTBOUND),
    # RFC 3261 §8.2.2.3: no Require: outbound (nor Flow-Timer) for a UA that did not list it (item 2)
    ("outbound-applies-without-supported-outbound-no-require",
     view(2, (OB_CONTACT,), (EDGE_PATH_OB,), supported=PATH_ONLY), 25, SaveBinding(outbound=True)),
    ("first-hop-without-supported-outbound-no-require",
     view(1, (OB_CONTACT,), supported=frozenset()), 25, SaveBinding(outbound=True)),
    ("removal-of-outbound-binding-no-flow-timer",
     view(2, (OB_CONTACT,), (EDGE_PATH_OB,), expires=0), 25, SaveBinding(outbound=True, reply_headers=(REQUIRE,))),
    ("contact-expires-param-0-no-flow-timer",
     view(1, (OB_CONTACT + ";expires=0",), expires=3600), 25, SaveBinding(outbound=True, reply_headers=(REQUIRE,))),
    ("fetch-no-contacts",
     view(2, (), (EDGE_PATH_OB,)), 25, NO_OUTBOUND),
    ("plain-registration",
     view(1, (PLAIN_CONTACT,)), 25, NO_OUTBOUND),
    ("bad-contact-expires-400",
     view(1, (PLAIN_CONTACT + ";expires=soon",)), 25, 400),
    ("superscript-contact-expires-400",
     view(1, (PLAIN_CONTACT + ";expires=\u00b2",)), 25, 400),
]


@pytest.mark.parametrize(
    ("register", "flow_timer", "expected"),
    [case[1:] for case in REGISTRAR_CASES],
    ids=[case[0] for case in REGISTRAR_CASES],
)
def test_registrar_decision(register, flow_timer, expected):
    decision = decide(register, flow_timer)

    if isinstance(expected, int):
        assert isinstance(decision, Reply)
        assert decision.code == expected
    else:
        assert decision == expected


@pytest.mark.parametrize(
    "reg_id",
    ["0", "-1", "2147483648", "abc", "", None, "\u00b2", "1.0"],
    ids=["zero", "negative", "2^31", "letters", "empty-value", "no-value", "superscript", "fraction"],
)
def test_invalid_reg_id_with_instance_is_400(reg_id):
    """RFC 5626 §10: reg-id = 1*DIGIT in 1..2^31-1; it counts once +sip.instance is present."""
    param = "reg-id" if reg_id is None else f"reg-id={reg_id}"

    decision = decide(view(1, (f"<sip:alice@192.0.2.1>;{INSTANCE};{param}",)))

    assert isinstance(decision, Reply)
    assert decision.code == 400


def test_439_reply_names_the_reason():
    """RFC 5626 §6/§11.1: 439 First Hop Lacks Outbound Support."""
    decision = decide(view(2, (OB_CONTACT,), (EDGE_PATH_PLAIN,)))

    assert decision.reason == "First Hop Lacks Outbound Support"
    assert decision.headers == ()


def test_flow_timer_header_carries_the_configured_value():
    """RFC 5626 §4.4.1/§6: Flow-Timer tells the UA how often to send keep-alives."""
    decision = decide(view(1, (OB_CONTACT,)), flow_timer=120)

    assert decision.reply_headers == (REQUIRE, "Flow-Timer: 120")


@pytest.mark.parametrize("required", [frozenset({"path"}), frozenset({"outbound"}), frozenset(), BOTH,
                                      frozenset({"gruu"})])
def test_require_of_known_extensions_is_accepted(required):
    """RFC 5627 §5.1: a Require: gruu only asks the registrar to understand GRUU."""
    register = view(1, (OB_CONTACT,))
    register = RegisterView(register.first_hop, register.contacts, register.paths, None, BOTH, required)
    assert isinstance(decide(register), SaveBinding)


def test_require_of_an_unknown_extension_gets_420_with_unsupported():
    """RFC 3261 §10.3 step 2 / §8.2.2.3. Before this rule a REGISTER with
    "Require: foo" was saved and answered 200 (the fuzz test's require-* cases)."""
    register = view(1, (OB_CONTACT,))
    register = RegisterView(register.first_hop, register.contacts, register.paths, None, BOTH,
                            frozenset({"foo", "gruu", "path", "timer"}))
    decision = decide(register)
    assert isinstance(decision, Reply)
    assert (decision.code, decision.reason, decision.headers) == (420, "Bad Extension", ("Unsupported: foo, timer",))


def test_reg_id_and_contact_expires_of_5000_digits_are_syntax_errors():
    """RFC 3261 §25.1 / RFC 5626 §10: a number longer than any field is refused
    (400), never Python's int() ValueError past 4300 digits (a 500)."""
    from outbound.errors import SipSyntaxError
    from outbound.policy import contact_expiry, reg_id_value
    from outbound.refresh import instance_keys
    from outbound.sipmsg import parse_name_addr

    contact = parse_name_addr(f'<sip:a@h>;+sip.instance="<urn:uuid:1>";reg-id={"7" * 5000};expires={"1" * 5000}')
    with pytest.raises(SipSyntaxError):
        reg_id_value(contact)
    with pytest.raises(SipSyntaxError):
        contact_expiry(contact, None, 3600)
    assert instance_keys((contact,)) == frozenset({("urn:uuid:1", 0)})


@pytest.mark.parametrize(("supported", "expected"), [
    (BOTH, 439),
    (PATH_ONLY, SaveBinding(outbound=False, ignore_reg_id=True)),
], ids=["supported-outbound-439", "no-supported-outbound-reg-id-ignored"])
def test_a_registrar_that_holds_no_flows_is_a_first_hop_without_outbound(supported, expected):
    """RFC 5626 §6 (checklist A3.8/A3.10, issue 13 item 3): a first-hop registrar
    MUST keep the flow; the registrar role cannot send over a device's own
    connection, so it does not claim one: 439 (§11.6), or reg-id ignored."""
    register = view(1, (OB_CONTACT,), supported=supported)
    decision = registrar_decision(register, default_expires=3600, flow_timer=25, holds_flows=False)

    if isinstance(expected, int):
        assert isinstance(decision, Reply) and decision.code == expected
    else:
        assert decision == expected
    # through an edge with ;ob the same registrar applies outbound
    via_edge = view(2, (OB_CONTACT,), (EDGE_PATH_OB,), supported=supported)
    assert registrar_decision(via_edge, default_expires=3600, flow_timer=25, holds_flows=False).outbound


@pytest.mark.parametrize(("header", "lifetime"), [
    ("25", 45), ("1", 21), (" 40 ", 60), (None, 140), ("", 140), ("0", 140), ("soon", 140), ("9" * 30, 140),
])
def test_an_edge_keeps_a_flow_longer_than_the_registrars_flow_timer(header, lifetime):
    """RFC 5626 §5.4 (issue 13 item 9): the Flow-Timer of the registrar's 2xx,
    plus the grace; without one the UA keeps alive every 95-120 s (§4.4.1)."""
    assert idle_lifetime(header, 20) == lifetime
