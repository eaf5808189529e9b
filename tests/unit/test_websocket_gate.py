"""The order of calls in adapter.websocket.WebSocketGate (the xhttp event
callback): an accepted handshake goes to the websocket module and nothing else
answers; a refused one gets its HTTP status, Connection: close and the reply
close flag; an exception while reading the request is a 400, never a traceback.

``KSR`` exists only inside Kamailio: a stand-in records the calls and returns
scripted answers. What a real Kamailio does is shown by
tests/integration/test_websocket.py.
"""

from __future__ import annotations

import sys
import types

import pytest

from ksr_script import Script

KSR = sys.modules.setdefault("KSR", types.ModuleType("KSR"))

from adapter.websocket import WebSocketGate  # noqa: E402
from outbound.config import parse_config  # noqa: E402

ORIGIN = "https://phone.example.com"
GOOD = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13", "Sec-WebSocket-Protocol": "sip", "Origin": ORIGIN}


def install(monkeypatch, headers: dict[str, str], *, port: int = 8080, proto: str = "tcp",
            method: str = "GET") -> Script:
    def pv_get(spec: str):
        name, _, index = spec.removeprefix("$(hdr(").removesuffix("])").partition(")[")
        return headers.get(name) if index == "0" else None

    defines = {"KO_WS_PORT": "8080", "KO_WSS_PORT": "8443"}
    s = Script(**{"kx.get_def": defines.get, "kx.get_proto": proto, "kx.get_method": method,
                  "kx.get_rcvport": port, "kx.get_srcip": "198.51.100.7", "kx.get_srcport": 50000,
                  "hdr.is_present": lambda name: 1 if name in headers else -1, "pv.get": pv_get,
                  "websocket.handle_handshake": 1})
    monkeypatch.setattr(KSR, "kx", s.namespace("kx.", "get_def", "get_proto", "get_method", "get_rcvport",
                                               "get_srcip", "get_srcport"), raising=False)
    monkeypatch.setattr(KSR, "hdr", s.namespace("hdr.", "is_present", "append_to_reply"), raising=False)
    monkeypatch.setattr(KSR, "pv", s.namespace("pv.", "get"), raising=False)
    monkeypatch.setattr(KSR, "websocket", s.namespace("websocket.", "handle_handshake"), raising=False)
    monkeypatch.setattr(KSR, "xhttp", s.namespace("xhttp.", "xhttp_reply"), raising=False)
    for name in ("notice", "err", "info", "set_reply_close"):
        monkeypatch.setattr(KSR, name, s.recorder(name), raising=False)
    return s


def gate() -> WebSocketGate:
    return WebSocketGate(parse_config({"websocket": {"allowed_origins": [ORIGIN]}}, "/etc/outbound.yaml"))


def test_an_accepted_handshake_goes_to_the_websocket_module_alone(monkeypatch):
    script = install(monkeypatch, GOOD)
    gate().http_request()
    assert "websocket.handle_handshake" in script.names()
    assert "xhttp.xhttp_reply" not in script.names() and "set_reply_close" not in script.names()


@pytest.mark.parametrize(("change", "status"), [
    ({"Origin": "https://evil.example.com"}, 403), ({"Sec-WebSocket-Protocol": "msrp"}, 400),
    ({"Upgrade": "h2c"}, 426),
])
def test_a_refused_handshake_gets_its_status_and_the_connection_closed(monkeypatch, change, status):
    script = install(monkeypatch, {**GOOD, **change})
    gate().http_request()
    names = script.names()
    assert "websocket.handle_handshake" not in names
    assert names.index("set_reply_close") < names.index("xhttp.xhttp_reply")
    [reply] = [args for name, args in script.calls if name == "xhttp.xhttp_reply"]
    assert reply[0] == status
    assert ("hdr.append_to_reply", ("Connection: close\r\n",)) in script.calls


def test_an_http_request_on_the_sip_port_or_the_wrong_transport_is_404(monkeypatch):
    for port, proto in ((5060, "tcp"), (8080, "tls"), (8443, "tcp")):
        script = install(monkeypatch, GOOD, port=port, proto=proto)
        gate().http_request()
        [reply] = [args for name, args in script.calls if name == "xhttp.xhttp_reply"]
        assert reply[0] == 404, (port, proto)


def test_wss_is_accepted_on_the_tls_port(monkeypatch):
    script = install(monkeypatch, GOOD, port=8443, proto="tls")
    gate().http_request()
    assert "websocket.handle_handshake" in script.names()


def test_an_exception_while_reading_is_answered_400_without_a_traceback(monkeypatch):
    script = install(monkeypatch, GOOD)
    script.answers["kx.get_rcvport"] = lambda: int("not a port")
    gate().http_request()
    [reply] = [args for name, args in script.calls if name == "xhttp.xhttp_reply"]
    assert reply[0] == 400
    [logged] = [args[0] for name, args in script.calls if name == "err"]
    assert "Traceback" not in logged
