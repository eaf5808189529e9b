"""WebSocket listeners (RFC 7118, ``-A WITH_WEBSOCKET``): the HTTP handshake.

Kamailio's xhttp module hands every HTTP request on a TCP/TLS socket to
:meth:`WebSocketGate.http_request` (names.XHTTP_CALLBACK). The decision is the
core's (outbound.websocket.handshake_decision): an accepted handshake goes to
the websocket module (``handle_handshake``: 101, the connection speaks SIP in
WebSocket frames from then on), a refused one gets its HTTP status and the
connection is closed after the answer.

Once open, a WebSocket connection is a TCP (ws) or TLS (wss) connection with
its own id: the flow token names it like any stream flow (outbound.tokens),
FlowRelay sends over it by id and answers 430 once it is gone. The websocket
module's own "websocket:closed" event (names.WS_EVENT_CALLBACK) lets the
single server drop the bindings on it (single_routes.FlowWatch).
"""

from __future__ import annotations

import KSR

from outbound.config import Config
from outbound.websocket import Accept, HttpRequest, handshake_decision

from .names import WS_PORT_DEFINE, WSS_PORT_DEFINE
from .runtime import define

_FIELDS = ("Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Protocol", "Origin")


def _port(name: str) -> int | None:
    value = define(name)
    return int(value) if value and value.isdigit() else None


def _field(name: str) -> str | None:
    """Every value of an HTTP header field, joined as one list (RFC 7230 §3.2.2)."""
    if KSR.hdr.is_present(name) <= 0:
        return None
    values = []
    index = 0
    while True:
        value = KSR.pv.get(f"$(hdr({name})[{index}])")
        if value is None:
            break
        values.append(str(value))
        index += 1
        if index >= 8:
            break
    return ", ".join(values)


class WebSocketGate:
    """The handshake checks of one role's WebSocket listeners (module docstring)."""

    def __init__(self, config: Config) -> None:
        self.allowed_origins = config.ws_allowed_origins
        # (transport of the listen socket, port): ws on TCP, wss on TLS
        self.ports = {("tcp", _port(WS_PORT_DEFINE)), ("tls", _port(WSS_PORT_DEFINE))}

    def request(self) -> HttpRequest:
        proto = str(KSR.kx.get_proto()).lower()
        values = {name: _field(name) for name in _FIELDS}
        return HttpRequest(
            method=str(KSR.kx.get_method() or ""),
            on_ws_port=(proto, int(KSR.kx.get_rcvport())) in self.ports,
            upgrade=values["Upgrade"], connection=values["Connection"], key=values["Sec-WebSocket-Key"],
            version=values["Sec-WebSocket-Version"], protocols=values["Sec-WebSocket-Protocol"],
            origin=values["Origin"],
        )

    def http_request(self) -> None:
        """xhttp event: hand a good handshake to the websocket module, refuse the rest."""
        try:
            decision = handshake_decision(self.request(), self.allowed_origins)
        except Exception as exc:  # noqa: BLE001 - an HTTP request must get an answer, never a traceback
            KSR.err(f"kemi-outbound: HTTP request from {KSR.kx.get_srcip()}: {exc!r}: 400\n")
            self._refuse(400, "Bad Request")
            return
        if isinstance(decision, Accept):
            if KSR.websocket.handle_handshake() < 0:
                KSR.notice(f"kemi-outbound: WebSocket handshake from {KSR.kx.get_srcip()}:"
                           f"{KSR.kx.get_srcport()} refused by the websocket module\n")
            return
        KSR.notice(f"kemi-outbound: HTTP {decision.status} {decision.reason} to {KSR.kx.get_srcip()}:"
                   f"{KSR.kx.get_srcport()}: {decision.log}\n")
        self._refuse(decision.status, decision.reason, decision.headers)

    @staticmethod
    def _refuse(status: int, reason: str, headers: tuple[str, ...] = ()) -> None:
        for header in (*headers, "Connection: close"):
            KSR.hdr.append_to_reply(header + "\r\n")
        KSR.set_reply_close()
        KSR.xhttp.xhttp_reply(status, reason, "text/plain", f"{status} {reason}\n")
