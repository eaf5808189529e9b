"""Just enough SIP header parsing for the outbound decisions (RFC 3261 §7.3, §20, §25).

The adapter hands us the raw header block of the message (Kamailio has already
accepted its syntax); we pull out the few headers outbound needs: Via, Contact,
Path, Route, Supported, Require, Expires. Parsing is tolerant: whatever we
cannot read raises :class:`SipSyntaxError`, which the caller answers with 400.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

COMPACT_FORMS = {
    "v": "via",
    "m": "contact",
    "k": "supported",
    "i": "call-id",
    "f": "from",
    "t": "to",
    "l": "content-length",
    "c": "content-type",
    "e": "content-encoding",
    "s": "subject",
    "o": "event",
    "r": "refer-to",
    "u": "allow-events",
}


class SipSyntaxError(ValueError):
    """A header we need could not be parsed; answered with 400 Bad Request."""


def header_block(raw: str) -> str:
    """The headers of a raw SIP message, without start line and body."""
    end = raw.find("\r\n\r\n")
    head = raw if end < 0 else raw[:end]
    first = head.find("\r\n")
    return "" if first < 0 else head[first + 2:]


def iter_headers(block: str) -> Iterator[tuple[str, str]]:
    """(lower-case full name, body) pairs, folded lines joined (RFC 3261 §7.3.1)."""
    name = ""
    body = ""
    for line in block.replace("\r\n", "\n").split("\n"):
        if not line:
            continue
        if line[0] in " \t" and name:
            body += " " + line.strip()
            continue
        if name:
            yield name, body
        colon = line.find(":")
        if colon <= 0:
            raise SipSyntaxError(f"header line without a name: {line[:40]!r}")
        raw_name = line[:colon].strip().lower()
        name = COMPACT_FORMS.get(raw_name, raw_name)
        body = line[colon + 1:].strip()
    if name:
        yield name, body


class Headers:
    """Headers of one message, by lower-case name, in message order."""

    __slots__ = ("_by_name",)

    def __init__(self, block: str, wanted: frozenset[str] | None = None) -> None:
        by_name: dict[str, list[str]] = {}
        for name, body in iter_headers(block):
            if wanted is None or name in wanted:
                by_name.setdefault(name, []).append(body)
        self._by_name = by_name

    def bodies(self, name: str) -> list[str]:
        return self._by_name.get(name, [])

    def values(self, name: str) -> list[str]:
        """Every comma-separated value of every header with this name."""
        out: list[str] = []
        for body in self.bodies(name):
            out.extend(split_values(body))
        return out

    def first(self, name: str) -> str | None:
        bodies = self._by_name.get(name)
        return bodies[0] if bodies else None

    def option_tags(self, name: str) -> frozenset[str]:
        return frozenset(v.strip().lower() for v in self.values(name) if v.strip())


def split_values(body: str) -> list[str]:
    """Split a header body on commas outside quotes and angle brackets."""
    values: list[str] = []
    start = 0
    in_quotes = False
    in_angle = False
    escaped = False
    for index, char in enumerate(body):
        if escaped:
            escaped = False
        elif in_quotes:
            if char == "\\":
                escaped = True
            elif char == '"':
                in_quotes = False
        elif char == '"':
            in_quotes = True
        elif char == "<":
            in_angle = True
        elif char == ">":
            in_angle = False
        elif char == "," and not in_angle:
            values.append(body[start:index].strip())
            start = index + 1
    if in_quotes or in_angle:
        raise SipSyntaxError(f"unterminated quote or bracket in {body[:60]!r}")
    tail = body[start:].strip()
    if tail or values:
        values.append(tail)
    return [v for v in values if v]


def parse_params(text: str) -> dict[str, str | None]:
    """``;a=1;b`` to {"a": "1", "b": None}; names are case-insensitive."""
    params: dict[str, str | None] = {}
    for piece in _split_outside_quotes(text, ";"):
        piece = piece.strip()
        if not piece:
            continue
        name, sep, value = piece.partition("=")
        params[name.strip().lower()] = value.strip() if sep else None
    return params


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    start = 0
    in_quotes = False
    for index, char in enumerate(text):
        if char == '"':
            in_quotes = not in_quotes
        elif char == sep and not in_quotes:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


@dataclass(frozen=True, slots=True)
class NameAddr:
    """One Contact/Path/Route value: the URI and the header parameters."""

    uri: str
    params: dict[str, str | None] = field(default_factory=dict)
    star: bool = False

    @property
    def sip_uri(self) -> SipUri:
        return SipUri.parse(self.uri)


def is_digits(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also accepts "²", which ``int`` rejects)."""
    return text.isascii() and text.isdigit()


def _find_outside_quotes(text: str, char: str) -> int:
    """Index of the first ``char`` outside a quoted string, -1 when there is none."""
    in_quotes = False
    escaped = False
    for index, current in enumerate(text):
        if escaped:
            escaped = False
        elif in_quotes:
            if current == "\\":
                escaped = True
            elif current == '"':
                in_quotes = False
        elif current == '"':
            in_quotes = True
        elif current == char:
            return index
    if in_quotes:
        raise SipSyntaxError(f"unterminated quote in {text[:60]!r}")
    return -1


def parse_name_addr(value: str) -> NameAddr:
    value = value.strip()
    if value == "*":
        return NameAddr(uri="*", star=True)
    # A '<' inside quotes (display name, +sip.instance="<urn:...>") does not open the URI.
    opening = _find_outside_quotes(value, "<")
    if opening >= 0:
        closing = value.find(">", opening)
        if closing < 0:
            raise SipSyntaxError(f"unterminated <...> in {value[:60]!r}")
        uri = value[opening + 1:closing].strip()
        params = parse_params(value[closing + 1:].lstrip().lstrip(";"))
    else:
        uri, _, rest = value.partition(";")
        uri = uri.strip()
        params = parse_params(rest)
    if ":" not in uri:
        raise SipSyntaxError(f"not a URI: {uri[:60]!r}")
    return NameAddr(uri=uri, params=params)


@dataclass(frozen=True, slots=True)
class SipUri:
    """The parts of a sip:/sips: URI that routing needs (RFC 3261 §19.1)."""

    scheme: str
    user: str | None
    host: str
    port: int | None
    params: dict[str, str | None]

    @classmethod
    def parse(cls, uri: str) -> SipUri:
        scheme, colon, rest = uri.partition(":")
        scheme = scheme.strip().lower()
        if not colon or scheme not in ("sip", "sips"):
            raise SipSyntaxError(f"not a SIP URI: {uri[:60]!r}")
        rest = rest.split("?", 1)[0]
        user: str | None = None
        if "@" in rest:
            user, rest = rest.rsplit("@", 1)
            user = user.split(":", 1)[0]
        hostport, _, param_text = rest.partition(";")
        host, port = _split_hostport(hostport)
        return cls(scheme, user, host, port, parse_params(param_text))


def _split_hostport(hostport: str) -> tuple[str, int | None]:
    hostport = hostport.strip()
    if hostport.startswith("["):
        closing = hostport.find("]")
        if closing < 0:
            raise SipSyntaxError(f"bad IPv6 reference: {hostport[:60]!r}")
        host, tail = hostport[: closing + 1], hostport[closing + 1:]
        port_text = tail[1:] if tail.startswith(":") else ""
        if tail and not tail.startswith(":"):
            raise SipSyntaxError(f"bad host: {hostport[:60]!r}")
    else:
        host, _, port_text = hostport.partition(":")
    if not host:
        raise SipSyntaxError("empty host")
    if not port_text:
        return host.lower(), None
    if not is_digits(port_text) or not 0 < int(port_text) < 65536:
        raise SipSyntaxError(f"bad port: {port_text[:10]!r}")
    return host.lower(), int(port_text)


def parse_name_addrs(headers: Headers, name: str) -> list[NameAddr]:
    return [parse_name_addr(v) for v in headers.values(name)]


def parse_delta_seconds(text: str | None) -> int | None:
    """Expires values (RFC 3261 §20.19); None when absent, error when not a number."""
    if text is None:
        return None
    text = text.strip().strip('"')
    if not is_digits(text):
        raise SipSyntaxError(f"bad expires value: {text[:20]!r}")
    return min(int(text), 2**32 - 1)
