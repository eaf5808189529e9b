"""The small SIP header parser (RFC 3261 §7.3, §19.1, §20, §25)."""

import pytest

from outbound import sipmsg
from outbound.errors import SipSyntaxError
from outbound.sipmsg import (
    Headers,
    SipUri,
    format_name_addr,
    header_block,
    is_hostname,
    parse_delta_seconds,
    parse_name_addr,
    parse_name_addrs,
    parse_params,
    parse_uint,
    split_values,
)

INSTANCE = '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'


def block(*lines: str) -> str:
    return "\r\n".join(lines) + "\r\n"


def test_header_block_drops_start_line_and_body():
    raw = "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP a\r\nCSeq: 1 REGISTER\r\n\r\nbody: no\r\n"

    assert header_block(raw) == "Via: SIP/2.0/UDP a\r\nCSeq: 1 REGISTER"


def test_compact_forms_map_to_full_names():
    """RFC 3261 §7.3.3: v = Via, m = Contact, k = Supported."""
    headers = Headers(block("v: SIP/2.0/UDP 192.0.2.1", "m: <sip:ua@192.0.2.1>", "k: outbound"))

    assert headers.values("via") == ["SIP/2.0/UDP 192.0.2.1"]
    assert headers.values("contact") == ["<sip:ua@192.0.2.1>"]
    assert headers.option_tags("supported") == {"outbound"}


def test_header_names_are_case_insensitive():
    headers = Headers(block("SUPPORTED: Path, OUTBOUND", "cOnTaCt: <sip:ua@h>"))

    assert headers.option_tags("supported") == {"path", "outbound"}
    assert headers.first("contact") == "<sip:ua@h>"


def test_folded_lines_are_joined():
    """RFC 3261 §7.3.1: a line starting with whitespace continues the previous header."""
    headers = Headers(block("Contact: <sip:a@h>,", "\t<sip:b@h>", "Supported: path,", "  outbound"))

    assert list(headers.as_dict().items()) == [("contact", ["<sip:a@h>, <sip:b@h>"]), ("supported", ["path, outbound"])]


def test_header_line_without_name_is_a_syntax_error():
    with pytest.raises(SipSyntaxError):
        Headers(block("Via: SIP/2.0/UDP a", "no colon here"))


def test_wanted_filter_keeps_only_named_headers():
    headers = Headers(block("Via: SIP/2.0/UDP a", "Contact: <sip:a@h>"), wanted=frozenset({"contact"}))

    assert headers.bodies("via") == []
    assert headers.bodies("contact") == ["<sip:a@h>"]


def test_comma_split_respects_quotes_and_angle_brackets():
    body = '"Doe, John" <sip:john@h;x=a,b>;q=0.5, <sip:b@h>;p="x,\\"y", sip:c@h'

    assert split_values(body) == ['"Doe, John" <sip:john@h;x=a,b>;q=0.5', '<sip:b@h>;p="x,\\"y"', "sip:c@h"]


@pytest.mark.parametrize("body", ['"open <sip:a@h>', "<sip:a@h", '<sip:a@h>;p="x'], ids=["quote", "angle", "param"])
def test_comma_split_rejects_unterminated_quote_or_bracket(body):
    with pytest.raises(SipSyntaxError):
        split_values(body)


def test_comma_split_drops_empty_values():
    assert split_values(" , a ,, b , ") == ["a", "b"]
    assert split_values("") == []


def test_via_count_counts_values_in_one_header_and_across_headers():
    """RFC 3261 §7.3.1: several values in one header equal several headers."""
    headers = Headers(block(
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1, SIP/2.0/TCP [2001:db8::1]:5060;branch=z9hG4bK2",
        "Contact: <sip:ua@h>",
        "v: SIP/2.0/TLS 198.51.100.3;branch=z9hG4bK3;received=\"a,b\"",
    ))

    assert len(headers.values("via")) == 3


def test_parse_name_addr_with_display_name_and_params():
    contact = parse_name_addr(f'"Alice, A." <sip:alice@192.0.2.1:5060;transport=tcp>;+sip.instance={INSTANCE};reg-id=1')

    assert contact.uri == "sip:alice@192.0.2.1:5060;transport=tcp"
    assert contact.params == {"+sip.instance": INSTANCE, "reg-id": "1"}
    assert not contact.star


def test_param_names_are_case_insensitive_values_kept():
    contact = parse_name_addr("<sip:ua@h>;Reg-ID=1;EXPIRES=60;Lr")

    assert contact.params == {"reg-id": "1", "expires": "60", "lr": None}


def test_parse_params_keeps_quoted_semicolons():
    assert parse_params(';a=1;b;c="x;y"') == {"a": "1", "b": None, "c": '"x;y"'}


def test_star_contact():
    contact = parse_name_addr(" * ")

    assert contact.star
    assert contact.uri == "*"


def test_params_after_a_bare_uri_belong_to_the_header():
    """RFC 3261 §20: without <>, everything after the first ';' is a header parameter."""
    contact = parse_name_addr("sip:ua@192.0.2.1;expires=0;reg-id=2")

    assert contact.uri == "sip:ua@192.0.2.1"
    assert contact.params == {"expires": "0", "reg-id": "2"}


def test_quoted_angle_brackets_in_params_of_a_bare_uri():
    """RFC 5626 §4.1: +sip.instance carries "<urn:...>"; that '<' does not open the URI."""
    contact = parse_name_addr(f"sip:ua@192.0.2.1;+sip.instance={INSTANCE};reg-id=1")

    assert contact.uri == "sip:ua@192.0.2.1"
    assert contact.params == {"+sip.instance": INSTANCE, "reg-id": "1"}


def test_angle_bracket_inside_quoted_display_name():
    contact = parse_name_addr('"a<b>c" <sip:ua@h>;reg-id=1')

    assert contact.uri == "sip:ua@h"
    assert contact.params == {"reg-id": "1"}


@pytest.mark.parametrize(
    "value",
    ["<sip:ua@h", '"Bob <sip:ua@h>', "<>", "no-uri-here"],
    ids=["unterminated-angle", "unterminated-quote", "empty-uri", "not-a-uri"],
)
def test_unparsable_name_addr_is_a_syntax_error(value):
    with pytest.raises(SipSyntaxError):
        parse_name_addr(value)


def test_parse_name_addrs_reads_every_value_of_every_header():
    headers = Headers(block("Path: <sip:edge1;lr;ob>, <sip:edge2;lr>", "Path: <sip:edge3;lr>"))

    assert [p.uri for p in parse_name_addrs(headers, "path")] == ["sip:edge1;lr;ob", "sip:edge2;lr", "sip:edge3;lr"]


def test_sip_uri_with_user_ipv6_reference_port_and_params():
    uri = SipUri.parse("SIPS:Tok-En_1@[2001:DB8::1]:5061;Transport=TLS;ob?subject=x")

    assert uri == SipUri("sips", "Tok-En_1", "[2001:db8::1]", 5061, {"transport": "TLS", "ob": None})


def test_sip_uri_password_is_not_part_of_user_and_port_is_optional():
    uri = SipUri.parse("sip:alice:secret@Example.COM;lr")

    assert (uri.user, uri.host, uri.port, uri.params) == ("alice", "example.com", None, {"lr": None})


def test_path_uri_ob_param_is_visible_through_name_addr():
    path = parse_name_addr("<sip:TOKEN@edge.example.com;lr;ob>")

    assert "ob" in path.sip_uri.params
    assert path.sip_uri.user == "TOKEN"


@pytest.mark.parametrize(
    "uri",
    [
        "sip:h:0",
        "sip:h:65536",
        "sip:h:50x",
        "sip:h:\u00b2",
        "sip:[2001:db8::1]:abc",
        "sip:[2001:db8::1",
        "sip:[2001:db8::1]x",
        "sip:2001:db8::1",
        "sip:",
        "sip:@",
        "tel:+15551234",
        "no scheme",
    ],
    ids=["port-0", "port-65536", "port-letters", "port-superscript", "v6-port-letters", "v6-unterminated",
         "v6-junk", "v6-unbracketed", "empty-host", "empty-host-with-user", "tel", "no-scheme"],
)
def test_bad_sip_uri_is_a_syntax_error(uri):
    with pytest.raises(SipSyntaxError):
        SipUri.parse(uri)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(None, None), ("0", 0), (" 3600 ", 3600), ('"60"', 60), ("9999999999", 2**32 - 1)],
    ids=["absent", "zero", "spaces", "quoted", "clamped"],
)
def test_parse_delta_seconds(text, seconds):
    """RFC 3261 §20.19: delta-seconds, capped at 2^32-1 (ten digits at most, see
    test_rfc3261_25_1_integer_longer_than_any_field)."""
    assert parse_delta_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "-1", "1.5", "soon", "\u00b2", "\u0663"], ids=[
    "empty", "negative", "fraction", "word", "superscript-digit", "arabic-indic-digit"])
def test_parse_delta_seconds_rejects_non_numbers(text):
    with pytest.raises(SipSyntaxError):
        parse_delta_seconds(text)


def test_format_name_addr_writes_uri_and_params_back_without_the_named_ones():
    contact = parse_name_addr('"Al" <sip:al@192.0.2.1:5080;transport=tcp;ob>;+sip.instance="<urn:uuid:1>";'
                              'reg-id=1;expires=60;lr')
    assert format_name_addr(contact.without("reg-id")) == (
        '<sip:al@192.0.2.1:5080;transport=tcp;ob>;+sip.instance="<urn:uuid:1>";expires=60;lr')
    assert parse_name_addr(format_name_addr(contact)) == contact
    assert format_name_addr(parse_name_addr("*")) == "*"


def test_name_addr_without_drops_only_the_named_parameters_and_leaves_the_original():
    contact = parse_name_addr('<sip:al@192.0.2.1;ob>;+sip.instance="<urn:uuid:1>";reg-id=1;expires=60')

    stripped = contact.without("reg-id", "expires")

    assert (stripped.uri, stripped.params) == ("sip:al@192.0.2.1;ob", {"+sip.instance": '"<urn:uuid:1>"'})
    assert contact.params["reg-id"] == "1"
    assert parse_name_addr("*").without("reg-id").star


@pytest.mark.parametrize("host", ["example.com", "edge-1.ko.test", "a", "ko.test.", "x1.example.com"])
def test_host_names_worth_a_dns_query(host):
    assert is_hostname(host)


@pytest.mark.parametrize("host", [
    "127.0.1", "127.0.13.2", "127.0.1;;;=;=3.112", "caf\u00e9.example.com", "-a.example.com", "a-.com",
    "a..com", "", ".", "[::1", "exa mple.com", "a.1com", "x" * 254,
], ids=["numeric-top", "ipv4", "fuzz-junk", "non-ascii", "leading-dash", "trailing-dash", "empty-label",
        "empty", "dot", "bad-ipv6", "space", "digit-toplabel", "too-long"])
def test_junk_is_no_host_name(host):
    """Found by the fuzz test: a Route naming "127.0.1;;;=;=3.112" made the edge
    ask DNS about "127.0.1" and answer 503; no query is made for what RFC 3261
    §25.1 does not call a host name (the route answers 400)."""
    assert not is_hostname(host)


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x1b", "\x7f"])
def test_control_character_in_a_wanted_header_is_a_syntax_error(char):
    """Found by the fuzz test: "Route: <sip:127.a\\x00b0.13.2:5060;lr>" reached
    KSR.is_myself, which raised SystemError (500 and a traceback); now it is
    a syntax error, answered 400."""
    with pytest.raises(SipSyntaxError, match="control character"):
        Headers(block(f"Route: <sip:127.a{char}b0.13.2:5060;lr>"), frozenset({"route"}))


def test_control_character_in_other_headers_is_left_to_kamailio():
    headers = Headers(block("Subject: a\x00b", "Route: <sip:a.example.com;lr>", "Via: SIP/2.0/UDP h\tx"),
                      frozenset({"route", "via"}))
    assert headers.first("route") == "<sip:a.example.com;lr>"
    assert headers.first("via") == "SIP/2.0/UDP h\tx"


# ----- header boundaries as Kamailio 5.6's parser draws them (docs/parsing.md) -----

def test_rfc3261_7_3_1_bare_lf_line_ends_split_headers_as_crlf_does():
    """RFC 3261 §7 asks for CRLF; Kamailio also ends a line at a bare LF, so do we:
    an LF-only INVITE keeps its Via and its (forged) Route."""
    raw = ("INVITE sip:b@example.com SIP/2.0\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\n"
           "Route: <sip:forged@edge;lr;ob>\nCSeq: 1 INVITE\n\nv=0\nRoute: <sip:in-body>\n")
    headers = Headers(header_block(raw))

    assert headers.bodies("via") == ["SIP/2.0/UDP a;branch=z9hG4bK1"]
    assert headers.bodies("route") == ["<sip:forged@edge;lr;ob>"]


def test_rfc3261_7_3_1_mixed_line_ends():
    raw = "REGISTER sip:e SIP/2.0\r\nVia: SIP/2.0/UDP a\nRequire: foo\r\nContact: <sip:a@h>\n\r\nbody"

    assert list(Headers(header_block(raw)).as_dict().items()) == [
        ("via", ["SIP/2.0/UDP a"]), ("require", ["foo"]), ("contact", ["<sip:a@h>"])]


@pytest.mark.parametrize("end", ["\r\n\r\n", "\n\n", "\n\r\n", "\r\n\n", "\n\r"],
                         ids=["crlf-crlf", "lf-lf", "lf-crlf", "crlf-lf", "lf-cr"])
def test_rfc3261_7_3_1_headers_end_at_the_first_empty_line(end):
    """Kamailio's get_hdr_field: a line starting with CR or LF ends the headers,
    however the line before it ended; what follows is body."""
    raw = f"OPTIONS sip:e SIP/2.0\r\nVia: SIP/2.0/UDP a{end}Route: <sip:body;lr>\r\n"

    assert Headers(header_block(raw)).bodies("route") == []
    assert Headers(header_block(raw)).bodies("via") == ["SIP/2.0/UDP a"]


@pytest.mark.parametrize("fold", ["\r\n ", "\r\n\t", "\n ", "\n\t\t", " \r\n   "])
def test_rfc3261_7_3_1_folded_lines_are_one_header_with_one_space(fold):
    """A line starting with SP or HTAB continues the header; the line break and
    the whitespace around it are one SP."""
    raw = f"OPTIONS sip:e SIP/2.0\r\nSupported: path,{fold}outbound\r\nRoute:{fold}<sip:r;lr>\r\n\r\n"
    headers = Headers(header_block(raw))

    assert headers.bodies("supported") == ["path, outbound"]
    assert headers.bodies("route") == ["<sip:r;lr>"]


def test_rfc3261_7_3_1_whitespace_before_the_colon():
    assert Headers(block("Route \t: <sip:r;lr>")).as_dict() == {"route": ["<sip:r;lr>"]}


@pytest.mark.parametrize(("compact", "name"), [("v", "via"), ("m", "contact"), ("k", "supported"),
                                               ("V", "via"), ("M", "contact")])
def test_rfc3261_7_3_3_compact_forms(compact, name):
    assert Headers(block(f"{compact}: x")).bodies(name) == ["x"]


@pytest.mark.parametrize("line", ["Bad Name: x", "Rou@te: x", " leading: x", "no colon", "Via\r\n : x"])
def test_rfc3261_25_1_header_name_kamailio_refuses(line):
    """Kamailio's parse_hname2 takes [0-9A-Za-z._+~-] and then only SP/HTAB
    before the colon; anything else is a header it cannot parse."""
    with pytest.raises(SipSyntaxError):
        Headers(block(line))


def test_from_fields_unfolds_kamailio_bodies():
    """$hdr(name)[i] keeps the folded line breaks; Headers.from_fields treats
    them exactly as the text splitter does."""
    fields = [("Via", "SIP/2.0/UDP a ;\r\n branch=z9hG4bK1"), ("v", "SIP/2.0/TCP b"), ("Subject", "x")]
    headers = Headers.from_fields(fields, frozenset({"via"}))

    assert headers.as_dict() == {"via": ["SIP/2.0/UDP a ; branch=z9hG4bK1", "SIP/2.0/TCP b"]}


@pytest.mark.parametrize("text", ["9" * 11, "9" * 4301, "1" * 100000])
def test_rfc3261_25_1_integer_longer_than_any_field(text):
    """1*DIGIT has no bound in the grammar, but no field we read holds more than
    ten digits: a longer one is a SipSyntaxError (400), never int()'s
    ValueError beyond 4300 digits (500)."""
    with pytest.raises(SipSyntaxError):
        parse_delta_seconds(text)
    with pytest.raises(SipSyntaxError):
        SipUri.parse(f"sip:a@h:{text}")
    with pytest.raises(SipSyntaxError):
        parse_uint(text, "reg-id", 10)


def test_rfc3261_25_1_port_with_leading_zeros():
    assert SipUri.parse("sip:a@h:0005060").port == 5060


@pytest.mark.parametrize(("vias", "first_hop"), [
    (("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1",), True),
    (('SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1;x="a,b"',), True),  # a quoted comma is no second value
    (('SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1;x="a,b", SIP/2.0/UDP 192.0.2.2',), False),
    ((",SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1,",), True),  # empty values do not count
    (("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1, SIP/2.0/UDP 192.0.2.2;branch=z9hG4bK2",), False),
    (("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1", "SIP/2.0/UDP 192.0.2.2;branch=z9hG4bK2"), False),
    ((), False),
])
def test_first_hop_is_exactly_one_via_value(vias, first_hop):
    """RFC 5626 §5.1 / §6: the UA's first hop sees the UA's own Via and no other."""
    headers = Headers(block(*(f"Via: {v}" for v in vias), "Contact: <sip:ua@h>"))
    assert headers.first_hop is first_hop


@pytest.mark.parametrize("vias", [
    ('SIP/2.0/UDP 192.0.2.1;x="open',),
    ("SIP/2.0/UDP 192.0.2.1;x=<open",),
    ("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1", 'SIP/2.0/UDP 192.0.2.2;x="open'),
    ('SIP/2.0/UDP 192.0.2.1;x="open', "SIP/2.0/UDP 192.0.2.2;branch=z9hG4bK2"),
])
def test_rfc5626_5_1_an_unreadable_via_is_a_syntax_error_not_a_first_hop(vias):
    """first_hop's shortcuts (one or two plain fields) never answer for a value the split refuses."""
    with pytest.raises(SipSyntaxError):
        _ = Headers(block(*(f"Via: {v}" for v in vias))).first_hop


def test_values_are_split_once_and_handed_out_as_copies():
    headers = Headers("Via: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2\r\n")
    first = headers.values("via")
    first.append("changed by a caller")
    assert headers.values("via") == ["SIP/2.0/UDP a;branch=z9hG4bK1", "SIP/2.0/UDP b;branch=z9hG4bK2"]


def test_name_addrs_are_parsed_once_per_message():
    headers = Headers("Route: <sip:edge.example.com;lr>, <sip:core.example.com;lr>\r\n")
    assert headers.name_addrs("route") == headers.name_addrs("route")
    assert headers.name_addrs("route")[0] is headers.name_addrs("route")[0]
    assert [r.sip_uri.host for r in parse_name_addrs(headers, "route")] == ["edge.example.com", "core.example.com"]


def test_a_value_seen_again_is_parsed_once_per_process():
    """A device's Contact on its refresh, our Route entries with each request of
    the dialog: the same text gives the same parsed object (outbound.memo)."""
    contact = f"<sip:ua@192.0.2.9:5070;ob>;+sip.instance={INSTANCE};reg-id=1"
    first = Headers(block("Via: SIP/2.0/UDP h", f"Contact: {contact}")).name_addrs("contact")
    again = Headers(block("Via: SIP/2.0/UDP h", f"Contact: {contact}")).name_addrs("contact")
    assert first == again and first[0] is again[0]
    assert parse_name_addr(contact) is first[0]
    assert SipUri.parse("sip:ua@192.0.2.9:5070;ob") is first[0].sip_uri


def test_the_memo_keeps_no_long_value_and_no_refusal():
    long_uri = "sip:" + "a" * (sipmsg.MEMO_VALUE_CHARS + 10) + "@h"
    parse_name_addr(f"<{long_uri}>")
    SipUri.parse(long_uri)
    assert f"<{long_uri}>" not in sipmsg._NAME_ADDRS and long_uri not in sipmsg._SIP_URIS
    for _ in range(2):
        with pytest.raises(SipSyntaxError):
            parse_name_addr("<sip:never-closed")
    assert "<sip:never-closed" not in sipmsg._NAME_ADDRS
