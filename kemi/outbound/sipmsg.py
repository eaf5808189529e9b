"""Just enough SIP header parsing for the outbound decisions (RFC 3261 §7.3, §20, §25).

The adapter hands us the raw header block of the message (Kamailio has already
accepted its syntax); we pull out the few headers outbound needs: Via, Contact,
Path, Route, Supported, Require, Expires. Parsing is tolerant: whatever we
cannot read raises :class:`SipSyntaxError`, which the caller answers with 400.
"""

from __future__ import annotations

import re
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
    compact = COMPACT_FORMS
    for line in block.replace("\r\n", "\n").split("\n"):
        if not line:
            continue
        if name and line[0] in " \t":
            body += " " + line.strip()
            continue
        if name:
            yield name, body
        raw_name, colon, rest = line.partition(":")
        if not colon or not raw_name:
            raise SipSyntaxError(f"header line without a name: {line[:40]!r}")
        raw_name = raw_name.strip().lower()
        name = compact.get(raw_name, raw_name)
        body = rest.strip()
    if name:
        yield name, body


# Control characters other than HTAB have no place in the headers we read (RFC 3261
# §25.1 allows them only backslash-escaped inside a quoted string): a NUL in a
# Route would reach Kamailio's C functions, which refuse strings holding one.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _checked(name: str, body: str) -> str:
    found = _CONTROL.search(body)
    if found is not None:
        raise SipSyntaxError(f"control character {found.group()!r} in {name}: {body[:60]!r}")
    return body


class Headers:
    """Headers of one message, by lower-case name, in message order."""

    __slots__ = ("_by_name",)

    def __init__(self, block: str, wanted: frozenset[str] | None = None) -> None:
        # iter_headers() inlined: same rules, but the body of a header nobody
        # wants is never built (this runs for every message)
        by_name: dict[str, list[str]] = {}
        compact = COMPACT_FORMS
        name = ""
        body: str | None = None  # body of the current header, None when not kept
        for line in block.replace("\r\n", "\n").split("\n"):
            if not line:
                continue
            if name and line[0] in " \t":
                if body is not None:
                    body += " " + line.strip()
                continue
            if body is not None:
                by_name.setdefault(name, []).append(_checked(name, body))
            raw_name, colon, rest = line.partition(":")
            if not colon or not raw_name:
                raise SipSyntaxError(f"header line without a name: {line[:40]!r}")
            raw_name = raw_name.strip().lower()
            name = compact.get(raw_name, raw_name)
            body = rest.strip() if name and (wanted is None or name in wanted) else None
        if body is not None:
            by_name.setdefault(name, []).append(_checked(name, body))
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


# Outside quotes only '<', '>' and ',' matter; a quoted string runs to its closing
# quote (backslash escapes inside); a lone '"' is a quote that never ends.
_VALUE_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|"|[<>,]', re.S)


def split_values(body: str) -> list[str]:
    """Split a header body on commas outside quotes and angle brackets."""
    if '"' not in body and "<" not in body:
        # nothing can protect a comma: plain split (the common Via/Supported case)
        return [v for v in (part.strip() for part in body.split(",")) if v]
    values: list[str] = []
    start = 0
    in_angle = False
    for match in _VALUE_TOKENS.finditer(body):
        token = match.group()
        if token == "<":
            in_angle = True
        elif token == ">":
            in_angle = False
        elif token == ",":
            if not in_angle:
                values.append(body[start:match.start()].strip())
                start = match.end()
        elif token == '"':
            raise SipSyntaxError(f"unterminated quote or bracket in {body[:60]!r}")
    if in_angle:
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


# A quote toggles quoting (no escapes here); an unclosed one runs to the end.
_PARAM_TOKENS = re.compile(r'"[^"]*"?|;')


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    if '"' not in text:
        return text.split(sep)
    if sep != ";":
        raise ValueError(f"unsupported separator {sep!r}")
    parts: list[str] = []
    start = 0
    for match in _PARAM_TOKENS.finditer(text):
        if match.group() == ";":
            parts.append(text[start:match.start()])
            start = match.end()
    parts.append(text[start:])
    return parts


@dataclass(frozen=True, slots=True)
class NameAddr:
    """One Contact/Path/Route value: the URI and the header parameters."""

    uri: str
    params: dict[str, str | None] = field(default_factory=dict)
    star: bool = False
    _parsed: SipUri | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def sip_uri(self) -> SipUri:
        """The URI parsed once, on first use (routing asks several times)."""
        parsed = self._parsed
        if parsed is None:
            parsed = SipUri.parse(self.uri)
            object.__setattr__(self, "_parsed", parsed)
        return parsed


# RFC 3261 §25.1: hostname = *( domainlabel "." ) toplabel [ "." ];
# domainlabel = alphanum / alphanum *( alphanum / "-" ) alphanum;
# toplabel = ALPHA / ALPHA *( alphanum / "-" ) alphanum
_DOMAINLABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_TOPLABEL = r"[A-Za-z](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?:{_DOMAINLABEL}\.)*{_TOPLABEL}\.?")


def is_hostname(text: str) -> bool:
    """True for a host name as RFC 3261 §25.1 spells one (not an IP literal):
    only such a name is worth a DNS query (RFC 3263)."""
    return len(text) <= 253 and _HOSTNAME.fullmatch(text) is not None


def bracket(ip: str) -> str:
    """An IP address as the host of a URI or ``host:port``: IPv6 in brackets
    (RFC 3261 §25.1 IPv6reference)."""
    return f"[{ip}]" if ":" in ip else ip


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


def format_name_addr(value: NameAddr, *, without: tuple[str, ...] = ()) -> str:
    """A Contact/Path/Route value written back as ``<uri>;param=value...``
    (RFC 3261 §20.10; names lower-cased, values as received), leaving out the
    parameters named in ``without``. The display name is not kept."""
    if value.star:
        return "*"
    params = "".join(
        f";{name}" if param is None else f";{name}={param}"
        for name, param in value.params.items() if name not in without
    )
    return f"<{value.uri}>{params}"


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
