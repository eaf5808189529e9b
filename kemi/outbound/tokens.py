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
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

MAC_BYTES = 10
FORMAT_VERSION = 1
MIN_KEY_BYTES = 16
MAX_TOKEN_CHARS = 68

TRANSPORTS = ("udp", "tcp", "tls", "sctp", "ws", "wss")
_TRANSPORT_CODE = {name: index + 1 for index, name in enumerate(TRANSPORTS)}
_CODE_TRANSPORT = {code: name for name, code in _TRANSPORT_CODE.items()}
_IPV6_BIT = 0x08

_RAW_LEN_V4 = 1 + 4 + 2 + 4 + 2 + 4 + MAC_BYTES
_RAW_LEN_V6 = 1 + 16 + 2 + 16 + 2 + 4 + MAC_BYTES
_TOKEN_ALPHABET = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
)


class TokenError(ValueError):
    """A flow could not be encoded (bad address, port or transport)."""


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


class Verdict(Enum):
    NOT_A_TOKEN = "not-a-token"
    FORGED = "forged"
    VALID = "valid"


@dataclass(frozen=True, slots=True)
class Decoded:
    """Outcome of :meth:`FlowTokenCodec.decode`; ``flow`` is set only when valid."""

    verdict: Verdict
    flow: Flow | None = None


def _packed_ip(text: str) -> bytes:
    try:
        return ipaddress.ip_address(text.strip("[]")).packed
    except ValueError as exc:
        raise TokenError(f"not an IP address: {text!r}") from exc


def _port(value: int, what: str) -> bytes:
    if not 0 < value < 65536:
        raise TokenError(f"{what} port out of range: {value}")
    return struct.pack("!H", value)


class FlowTokenCodec:
    """Signs flows into tokens and verifies tokens back into flows."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("at least one flow-token key is required")
        for key in keys:
            if len(key) < MIN_KEY_BYTES:
                raise ValueError(f"flow-token keys need at least {MIN_KEY_BYTES} bytes")
        self._keys = tuple(bytes(k) for k in keys)

    def encode(self, flow: Flow) -> str:
        code = _TRANSPORT_CODE.get(flow.transport.lower())
        if code is None:
            raise TokenError(f"unknown transport: {flow.transport!r}")
        local = _packed_ip(flow.local_ip)
        remote = _packed_ip(flow.remote_ip)
        if len(local) != len(remote):
            raise TokenError("local and remote addresses are of different families")
        if not 0 <= flow.conn_id < 2**32:
            raise TokenError(f"connection id out of range: {flow.conn_id}")
        header = code | (_IPV6_BIT if len(local) == 16 else 0) | (FORMAT_VERSION << 4)
        body = (
            bytes((header,))
            + local
            + _port(flow.local_port, "local")
            + remote
            + _port(flow.remote_port, "remote")
            + struct.pack("!I", flow.conn_id)
        )
        return base64.urlsafe_b64encode(body + self._mac(self._keys[0], body)).decode("ascii")

    def decode(self, token: str) -> Decoded:
        raw = _raw_bytes(token)
        if raw is None:
            return Decoded(Verdict.NOT_A_TOKEN)
        body, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if not any(hmac.compare_digest(self._mac(k, body), mac) for k in self._keys):
            return Decoded(Verdict.FORGED)
        flow = _unpack(body)
        if flow is None:  # signed by us but not in a form we know: treat as forged
            return Decoded(Verdict.FORGED)
        return Decoded(Verdict.VALID, flow)

    @staticmethod
    def _mac(key: bytes, body: bytes) -> bytes:
        return hmac.new(key, body, hashlib.sha256).digest()[:MAC_BYTES]


def _raw_bytes(token: str) -> bytes | None:
    """The token's bytes, or None when the text cannot be one of our tokens."""
    if len(token) not in (36, 68) or not _TOKEN_ALPHABET.issuperset(token):
        return None
    try:
        raw = base64.urlsafe_b64decode(token)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) in (_RAW_LEN_V4, _RAW_LEN_V6) else None


def _unpack(body: bytes) -> Flow | None:
    header = body[0]
    transport = _CODE_TRANSPORT.get(header & 0x07)
    ip_len = 16 if header & _IPV6_BIT else 4
    if transport is None or header >> 4 != FORMAT_VERSION or len(body) != 1 + 2 * ip_len + 8:
        return None
    offset = 1
    local = ipaddress.ip_address(body[offset:offset + ip_len])
    offset += ip_len
    (lport,) = struct.unpack_from("!H", body, offset)
    offset += 2
    remote = ipaddress.ip_address(body[offset:offset + ip_len])
    offset += ip_len
    rport, conn_id = struct.unpack_from("!HI", body, offset)
    return Flow(transport, str(local), lport, str(remote), rport, conn_id)


def parse_key(text: str) -> bytes:
    """A key as configured: ``hex:...``, ``base64:...`` or a plain passphrase."""
    text = text.strip()
    if text.startswith("hex:"):
        return bytes.fromhex(text[4:])
    if text.startswith("base64:"):
        return base64.b64decode(text[7:], validate=True)
    return text.encode("utf-8")

