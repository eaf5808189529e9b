"""Flow tokens for the edge proxy (RFC 5626 §5.2, checklist A2.5).

A flow token names one flow: the transport, the edge's local socket, the UA's
address and port and, on TCP/TLS/WS, the connection id of the very connection
the UA opened. Binding the connection id in means that a UA which reconnects
from the same address and port gets a *different* token (RFC 5626 §3.4: the
token must not match a later flow with the same addresses).

Layout of the raw token (all integers big-endian)::

    header   1 byte   bits 0-2 transport, bit 3 IPv6, bits 4-7 format version
    local    4|16     edge IP the UA sent to
    lport    2
    remote   4|16     UA source IP
    rport    2
    conn_id  4        Kamailio TCP connection id, 0 on UDP
    mac      10       HMAC-SHA256 truncated to 80 bits over all of the above

27 bytes on IPv4 and 51 on IPv6, both multiples of three, so the URL-safe
base64 text (36 or 68 characters) has no padding and uses only characters that
are *unreserved* in a SIP URI user part (RFC 3261 §25.1): no escaping needed.

The codec is pure: keys are passed in (the first signs, every key verifies, for
rotation), nothing here reads a clock, a socket or Kamailio.

Keys (:func:`parse_key`): at least 32 random bytes (the HMAC-SHA256 key size,
RFC 2104 §3), written ``hex:...`` or ``base64:...``. A passphrase is refused:
anyone who guesses it can forge tokens for every flow of every edge.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from .addresses import canonical_ip
from .errors import KeyFormatError, TokenError
from .memo import remember
from .sipmsg import bracket

MAC_BYTES = 10
FORMAT_VERSION = 1
MIN_KEY_BYTES = 32
# 32 random bytes show about 30 different values; fewer than this many is a
# pattern ("5eed" * 16, all zeros), not randomness (the odds of a random key
# falling below it are far under 1e-15)
MIN_DISTINCT_BYTES = 16
MAKE_KEY_COMMAND = "python3 -c 'import secrets; print(\"hex:\" + secrets.token_hex(32))'"
MAX_TOKEN_CHARS = 68

TRANSPORTS = ("udp", "tcp", "tls", "sctp", "ws", "wss")
_TRANSPORT_CODE = {name: index + 1 for index, name in enumerate(TRANSPORTS)}
_CODE_TRANSPORT = {code: name for name, code in _TRANSPORT_CODE.items()}
_IPV6_BIT = 0x08
# WebSocket flows live on TCP / TLS listen sockets (Kamailio's websocket module)
LISTEN_TRANSPORT = {"ws": "tcp", "wss": "tls"}
URI_TRANSPORT = {"wss": "ws"}

_RAW_LEN_V4 = 1 + 4 + 2 + 4 + 2 + 4 + MAC_BYTES
_RAW_LEN_V6 = 1 + 16 + 2 + 16 + 2 + 4 + MAC_BYTES
_TOKEN_ALPHABET = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
)
# header, local ip, local port, remote ip, remote port, conn_id
_BODY = {4: struct.Struct("!B4sH4sHI"), 16: struct.Struct("!B16sH16sHI")}
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


@dataclass(frozen=True, slots=True)
class Flow:
    """One flow as the edge sees it (RFC 5626 §3.3)."""

    transport: str
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    conn_id: int = 0

    @property
    def is_stream(self) -> bool:
        return self.transport != "udp"

    def canonical(self) -> Flow:
        """The flow spelled as a decoded token spells it: lower-case transport,
        addresses in one spelling (outbound.addresses.canonical_ip), whatever
        spelling the caller read. Unchanged when an address is no IP literal."""
        try:
            local, remote = canonical_ip(self.local_ip), canonical_ip(self.remote_ip)
        except ValueError:
            return self
        transport = self.transport.lower()
        if transport == self.transport and local == self.local_ip and remote == self.remote_ip:
            return self  # already spelled so (Kamailio's own $si, $Ri are)
        return Flow(transport, local, self.local_port, remote, self.remote_port, self.conn_id)

    @property
    def destination(self) -> str:
        """The device's end as a ``$du`` URI (RFC 5626 §5.3.1: send over this flow)."""
        return f"sip:{bracket(self.remote_ip)}:{self.remote_port};transport={self.uri_transport}"

    @property
    def uri_transport(self) -> str:
        """The ``transport`` URI parameter: ``ws`` for ws and wss alike (RFC 7118
        §5.2; Kamailio refuses ``transport=wss``)."""
        return URI_TRANSPORT.get(self.transport, self.transport)

    @property
    def listen_transport(self) -> str:
        """The transport of our listen socket: a WebSocket flow (RFC 7118) runs
        on a TCP (ws) or TLS (wss) socket."""
        return LISTEN_TRANSPORT.get(self.transport, self.transport)

    @property
    def socket(self) -> str:
        """Our end as a Kamailio socket (``$fs``): ``proto:[addr]:port``."""
        return f"{self.listen_transport}:{bracket(self.local_ip)}:{self.local_port}"

    def local_uri(self, user: str = "") -> str:
        """A URI naming our end of the flow, with ``user`` (a flow token) as
        user part: a Path or Record-Route entry (without ``;lr``)."""
        at = f"{user}@" if user else ""
        return f"sip:{at}{bracket(self.local_ip)}:{self.local_port};transport={self.uri_transport}"

    def socket_uri(self) -> str:
        """A URI naming our listen socket of the flow (for "is it ours", is_myself)."""
        return f"sip:{bracket(self.local_ip)}:{self.local_port};transport={self.listen_transport}"

    @property
    def key(self) -> str:
        """One text per flow (its canonical spelling), e.g. for an htable key."""
        flow = self.canonical()
        return f"{flow.transport}:{flow.local_ip}:{flow.local_port}>{flow.remote_ip}:{flow.remote_port}"


class Verdict(Enum):
    NOT_A_TOKEN = "not-a-token"
    FORGED = "forged"
    VALID = "valid"


@dataclass(frozen=True, slots=True)
class Decoded:
    """Outcome of :meth:`FlowTokenCodec.decode`; ``flow`` is set only when valid."""

    verdict: Verdict
    flow: Flow | None = None


# An edge sees few distinct addresses: parse each text once (pure, bounded).
@functools.lru_cache(maxsize=4096)
def _packed_ip(text: str) -> bytes:
    try:
        return ipaddress.ip_address(text.strip("[]")).packed
    except ValueError as exc:
        raise TokenError(f"not an IP address: {text!r}") from exc


@functools.lru_cache(maxsize=4096)
def _ip_text(packed: bytes) -> str:
    return str(ipaddress.ip_address(packed))


def _check_port(value: int, what: str) -> None:
    if not 0 < value < 65536:
        raise TokenError(f"{what} port out of range: {value}")


# A device refreshes over the same flow and its dialogs bring the same token
# back: a codec signs each flow, and checks each valid token, once (per process,
# bounded; only valid tokens are kept, so forged ones cannot fill it).
MEMO_MAX = 8192


class FlowTokenCodec:
    """Signs flows into tokens and verifies tokens back into flows."""

    __slots__ = ("_keys", "_signed", "_verified")

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("at least one flow-token key is required")
        for key in keys:
            if len(key) < MIN_KEY_BYTES:
                raise ValueError(f"flow-token keys need at least {MIN_KEY_BYTES} bytes")
        self._keys = tuple(bytes(k) for k in keys)
        self._signed: dict[Flow, str] = {}
        self._verified: dict[str, Decoded] = {}

    @property
    def keys(self) -> tuple[bytes, ...]:
        """Every key, the signing one first (for other MACs made with the same keys)."""
        return self._keys

    @property
    def signing_key(self) -> bytes:
        return self._keys[0]

    def encode(self, flow: Flow) -> str:
        token = self._signed.get(flow)
        if token is None:
            token = self._sign(flow)
            remember(self._signed, flow, token, MEMO_MAX)
        return token

    def _sign(self, flow: Flow) -> str:
        code = _TRANSPORT_CODE.get(flow.transport.lower())
        if code is None:
            raise TokenError(f"unknown transport: {flow.transport!r}")
        local = _packed_ip(flow.local_ip)
        remote = _packed_ip(flow.remote_ip)
        if len(local) != len(remote):
            raise TokenError("local and remote addresses are of different families")
        if not 0 <= flow.conn_id < 2**32:
            raise TokenError(f"connection id out of range: {flow.conn_id}")
        _check_port(flow.local_port, "local")
        _check_port(flow.remote_port, "remote")
        header = code | (_IPV6_BIT if len(local) == 16 else 0) | (FORMAT_VERSION << 4)
        body = _BODY[len(local)].pack(header, local, flow.local_port, remote, flow.remote_port, flow.conn_id)
        raw = body + _mac(self._keys[0], body)
        return binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE).decode("ascii")

    def flow_of(self, user: str | None) -> Flow | None:
        """The flow of ``user`` when it is a valid token of ours; None for
        anything else (no user part, not a token, forged)."""
        if not user:
            return None
        decoded = self.decode(user)
        return decoded.flow if decoded.verdict is Verdict.VALID else None

    def decode(self, token: str) -> Decoded:
        known = self._verified.get(token)
        if known is not None:
            return known
        decoded = self._verify(token)
        if decoded.verdict is Verdict.VALID:
            remember(self._verified, token, decoded, MEMO_MAX)
        return decoded

    def _verify(self, token: str) -> Decoded:
        raw = _raw_bytes(token)
        if raw is None:
            return Decoded(Verdict.NOT_A_TOKEN)
        body, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        for key in self._keys:
            if hmac.compare_digest(_mac(key, body), mac):
                break
        else:
            return Decoded(Verdict.FORGED)
        flow = _unpack(body)
        if flow is None:  # signed by us but not in a form we know: treat as forged
            return Decoded(Verdict.FORGED)
        return Decoded(Verdict.VALID, flow)


def peek_flow(token: str | None) -> Flow | None:
    """The flow a token's text spells, read WITHOUT checking its MAC: for display
    only (the RPC view tools/ko-view, where no key is at hand), never for routing
    or any decision (use :meth:`FlowTokenCodec.flow_of`). Anyone can write a text
    that peeks as any flow. None when the text cannot be one of our tokens."""
    raw = _raw_bytes(token) if isinstance(token, str) else None
    return None if raw is None else _unpack(raw[:-MAC_BYTES])


def _mac(key: bytes, body: bytes) -> bytes:
    """HMAC-SHA256 truncated to MAC_BYTES: one C call, no per-message objects."""
    return hmac.digest(key, body, "sha256")[:MAC_BYTES]


def _raw_bytes(token: str) -> bytes | None:
    """The token's bytes, or None when the text cannot be one of our tokens."""
    if len(token) not in (36, 68) or not _TOKEN_ALPHABET.issuperset(token):
        return None
    # only URL-safe base64 characters and a length that is a multiple of 4: no
    # padding, nothing for the decoder to reject
    try:
        raw = binascii.a2b_base64(token.encode("ascii").translate(_FROM_URLSAFE))
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) in (_RAW_LEN_V4, _RAW_LEN_V6) else None


def _unpack(body: bytes) -> Flow | None:
    header = body[0]
    transport = _CODE_TRANSPORT.get(header & 0x07)
    ip_len = 16 if header & _IPV6_BIT else 4
    if transport is None or header >> 4 != FORMAT_VERSION or len(body) != 1 + 2 * ip_len + 8:
        return None
    _, local, lport, remote, rport, conn_id = _BODY[ip_len].unpack(body)
    return Flow(transport, _ip_text(local), lport, _ip_text(remote), rport, conn_id)


def parse_key(text: str) -> bytes:
    """A key as configured: ``hex:<hex digits>`` or ``base64:<standard base64>``
    giving at least MIN_KEY_BYTES bytes that look random. A plain passphrase,
    an unreadable encoding, a short key or a repeated pattern raise
    KeyFormatError."""
    text = text.strip()
    prefix, colon, body = text.partition(":")
    if not colon or prefix not in ("hex", "base64"):
        raise KeyFormatError(
            "not hex:... or base64:... (a passphrase is not a key); give at least "
            f"{MIN_KEY_BYTES} random bytes, e.g. from: {MAKE_KEY_COMMAND}"
        )
    try:
        key = bytes.fromhex(body) if prefix == "hex" else base64.b64decode(body, validate=True)
    except (ValueError, binascii.Error):
        raise KeyFormatError(f"the text after {prefix}: is not {prefix}") from None
    if len(key) < MIN_KEY_BYTES:
        raise KeyFormatError(f"{len(key)} bytes; a key needs at least {MIN_KEY_BYTES} random bytes "
                             f"(make one: {MAKE_KEY_COMMAND})")
    distinct = len(set(key))
    if distinct < MIN_DISTINCT_BYTES:
        raise KeyFormatError(f"only {distinct} different byte values in {len(key)} bytes: a pattern, "
                             f"not random (make one: {MAKE_KEY_COMMAND})")
    return key
