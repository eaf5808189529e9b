"""The WebSocket handshake decision (RFC 6455 §4.2, RFC 7118 §4.1): pure.

The xhttp module hands every HTTP request on a TCP/TLS socket to the Python;
the adapter (adapter.websocket) reads the request line and the header fields
and asks :func:`handshake_decision` whether to hand it to Kamailio's websocket
module (which answers 101 and takes the connection over) or to answer with an
HTTP status and close. Nothing here reads Kamailio, a socket or a clock.

The checks Kamailio operators make in their cfg (the websocket module's
README), and two of ours:

* only on a WebSocket port of ours (KO_WS_PORT / KO_WSS_PORT): an HTTP request
  on the SIP port is not a handshake (404);
* ``GET`` only (405), with ``Upgrade: websocket`` and ``Connection: upgrade``
  (426 Upgrade Required otherwise, RFC 6455 §4.2.2 and RFC 7231 §6.5.15), a
  ``Sec-WebSocket-Key`` and ``Sec-WebSocket-Version: 13`` (400; 426 with the
  version we speak for another version, RFC 6455 §4.4);
* ``Sec-WebSocket-Protocol`` must offer ``sip`` (RFC 7118 §4.1: the client
  MUST include it; 400 without);
* the ``Origin`` must be in ``websocket.allowed_origins`` when that list is not
  empty (403, RFC 6455 §4.2.2 point 4 and §10.2). A request without Origin is
  no browser's: refused 403 as well when a list is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

SUBPROTOCOL = "sip"
WS_VERSION = "13"


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """What the decision reads of an HTTP request (None: the field is absent)."""

    method: str
    on_ws_port: bool
    upgrade: str | None = None
    connection: str | None = None
    key: str | None = None
    version: str | None = None
    protocols: str | None = None
    origin: str | None = None


@dataclass(frozen=True, slots=True)
class Accept:
    """Hand the request to the websocket module (101 Switching Protocols)."""


@dataclass(frozen=True, slots=True)
class HttpRefusal:
    """Answer with this HTTP status and close the connection."""

    status: int
    reason: str
    log: str
    headers: tuple[str, ...] = ()


def _tokens(value: str | None) -> list[str]:
    return [part.strip().lower() for part in (value or "").split(",") if part.strip()]


def canonical_origin(text: str) -> str | None:
    """An origin as RFC 6454 §6.2 serializes it: ``scheme://host[:port]``,
    lower case, the default port left out; None when it is no origin
    (``null``, a path, another scheme)."""
    text = text.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = 80 if scheme == "http" else 443
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def handshake_decision(request: HttpRequest, allowed_origins: tuple[str, ...]) -> Accept | HttpRefusal:
    """Accept the handshake or say which HTTP status refuses it (module docstring).
    ``allowed_origins`` are canonical origins (config.py); empty: any."""
    if not request.on_ws_port:
        return HttpRefusal(404, "Not Found", "HTTP request on a port that is not a WebSocket port")
    if request.method.upper() != "GET":
        return HttpRefusal(405, "Method Not Allowed", f"HTTP {request.method} is no handshake", ("Allow: GET",))
    if "websocket" not in _tokens(request.upgrade) or "upgrade" not in _tokens(request.connection):
        return HttpRefusal(426, "Upgrade Required", "no Upgrade: websocket / Connection: upgrade",
                           ("Upgrade: websocket", "Connection: Upgrade"))
    if request.version is None or request.version.strip() != WS_VERSION:
        return HttpRefusal(426, "Upgrade Required", f"Sec-WebSocket-Version {request.version!r}, we speak 13",
                           (f"Sec-WebSocket-Version: {WS_VERSION}",))
    if not (request.key or "").strip():
        return HttpRefusal(400, "Bad Request", "no Sec-WebSocket-Key")
    if SUBPROTOCOL not in _tokens(request.protocols):
        return HttpRefusal(400, "Bad Request",
                           f"Sec-WebSocket-Protocol {request.protocols!r} does not offer sip (RFC 7118 §4.1)")
    if allowed_origins:
        origin = canonical_origin(request.origin) if request.origin is not None else None
        if origin is None or origin not in allowed_origins:
            return HttpRefusal(403, "Forbidden", f"Origin {request.origin!r} is not allowed")
    return Accept()
