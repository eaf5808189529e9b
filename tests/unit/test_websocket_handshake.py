"""The WebSocket handshake decision (RFC 6455 §4.2, RFC 7118 §4.1), the origin
allow-list setting (websocket.allowed_origins) and WebSocket flows' sockets."""

from __future__ import annotations

import pytest

from outbound.config import parse_config
from outbound.errors import ConfigError
from outbound.tokens import Flow, FlowTokenCodec, parse_key
from outbound.websocket import Accept, HttpRefusal, HttpRequest, canonical_origin, handshake_decision

SOURCE = "/etc/kamailio/outbound.yaml"
KEY = parse_key("hex:9f9a95f1f24968cd191273341861ce06e3446dd05ced9654970d91ea69ba7ab9")
GOOD = HttpRequest(method="GET", on_ws_port=True, upgrade="websocket", connection="keep-alive, Upgrade",
                   key="dGhlIHNhbXBsZSBub25jZQ==", version="13", protocols="sip", origin="https://phone.example.com")
ORIGINS = ("https://phone.example.com",)


def status(request: HttpRequest, origins: tuple[str, ...] = ORIGINS) -> int:
    decision = handshake_decision(request, origins)
    return 101 if isinstance(decision, Accept) else decision.status


def with_(**changes) -> HttpRequest:
    return HttpRequest(**{**{f: getattr(GOOD, f) for f in GOOD.__dataclass_fields__}, **changes})


def test_rfc7118_4_1_a_good_handshake_is_accepted():
    assert status(GOOD) == 101
    assert status(with_(protocols="msrp, SIP"), ()) == 101, "sip among others, any case"


@pytest.mark.parametrize("protocols", [None, "", "msrp", "sips", "sip2"])
def test_rfc7118_4_1_sec_websocket_protocol_must_offer_sip(protocols):
    decision = handshake_decision(with_(protocols=protocols), ())
    assert isinstance(decision, HttpRefusal) and decision.status == 400


@pytest.mark.parametrize("origin", [None, "https://evil.example.com", "http://phone.example.com",
                                    "https://phone.example.com:8443", "null", "phone.example.com"])
def test_rfc6455_10_2_an_origin_outside_the_allow_list_gets_403(origin):
    assert status(with_(origin=origin)) == 403


def test_rfc6455_10_2_an_empty_allow_list_takes_any_origin_and_none():
    assert status(with_(origin="https://anything.example.org"), ()) == 101
    assert status(with_(origin=None), ()) == 101


def test_rfc6454_the_origin_is_compared_in_its_canonical_form():
    assert status(with_(origin="HTTPS://Phone.Example.COM:443")) == 101


def test_rfc6455_4_2_1_not_an_upgrade_is_426_and_not_get_is_405():
    assert status(with_(upgrade=None)) == 426
    assert status(with_(connection="keep-alive")) == 426
    refusal = handshake_decision(with_(method="POST"), ORIGINS)
    assert isinstance(refusal, HttpRefusal) and refusal.status == 405 and "Allow: GET" in refusal.headers


def test_rfc6455_4_4_another_version_gets_426_with_ours():
    refusal = handshake_decision(with_(version="8"), ORIGINS)
    assert isinstance(refusal, HttpRefusal) and refusal.status == 426
    assert "Sec-WebSocket-Version: 13" in refusal.headers
    assert status(with_(version=None)) == 426


def test_rfc6455_4_2_1_no_key_is_400():
    assert status(with_(key=None)) == 400
    assert status(with_(key="  ")) == 400


def test_an_http_request_off_the_websocket_ports_is_404():
    assert status(with_(on_ws_port=False)) == 404


@pytest.mark.parametrize(("text", "canonical"), [
    ("https://phone.example.com", "https://phone.example.com"),
    ("https://phone.example.com/", "https://phone.example.com"),
    ("http://Host:80", "http://host"),
    ("http://host:8080", "http://host:8080"),
    ("https://[2001:db8::1]:8443", "https://[2001:db8::1]:8443"),
    ("ftp://host", None), ("null", None), ("https://host/path", None), ("https://", None),
    ("https://host:99999", None),
])
def test_canonical_origin(text, canonical):
    assert canonical_origin(text) == canonical


def test_allowed_origins_setting_is_validated_naming_key_and_file():
    config = parse_config({"websocket": {"allowed_origins": ["HTTPS://Phone.Example.com", "http://lab:8080"]}},
                          SOURCE)
    assert config.ws_allowed_origins == ("https://phone.example.com", "http://lab:8080")
    assert parse_config({}, SOURCE).ws_allowed_origins == ()
    for bad in (["phone.example.com"], [42], ["https://host/page"]):
        with pytest.raises(ConfigError) as info:
            parse_config({"websocket": {"allowed_origins": bad}}, SOURCE)
        assert "websocket.allowed_origins" in str(info.value) and SOURCE in str(info.value)
    with pytest.raises(ConfigError, match="websocket.allowed_origins"):
        parse_config({"websocket": {"allowed_origins": "https://phone.example.com"}}, SOURCE)


def test_rfc7118_5_a_websocket_flow_token_names_the_connection_on_a_tcp_or_tls_socket():
    codec = FlowTokenCodec([KEY])
    for transport, listen in (("ws", "tcp"), ("wss", "tls")):
        flow = Flow(transport, "192.0.2.1", 8080, "198.51.100.7", 50123, 42)
        decoded = codec.flow_of(codec.encode(flow))
        assert decoded == flow and decoded.conn_id == 42 and decoded.is_stream
        assert flow.socket == f"{listen}:192.0.2.1:8080", "Kamailio's WebSocket listeners are TCP/TLS sockets"
        assert flow.destination.endswith(";transport=ws"), "$du: ws for ws and wss (RFC 7118 §5.2)"
        assert flow.local_uri("t").endswith(";transport=ws")
        assert flow.socket_uri() == f"sip:192.0.2.1:8080;transport={listen}"
        other = Flow(transport, "192.0.2.1", 8080, "198.51.100.7", 50123, 43)
        assert codec.encode(other) != codec.encode(flow), "a reconnect gets another token (RFC 5626 §3.4)"
