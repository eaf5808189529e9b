"""Just enough SIP header parsing for the outbound decisions (RFC 3261 §7.3, §20, §25).

Inside Kamailio the adapter reads the header fields Kamailio's own parser
delimited (``$hdrc`` / ``$hdr``, docs/parsing.md) and hands them to
:meth:`Headers.from_fields`; :class:`Headers` can also split a raw header block
itself, with the rules of Kamailio 5.6's parser (``get_hdr_field``). We pull
out the few headers outbound needs: Via, Contact, Path, Route, Supported,
Require, Expires. Whatever we cannot read raises :class:`SipSyntaxError`, which
the caller answers with 400.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from .errors import SipSyntaxError
from .memo import text_memo

V = TypeVar("V")

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
    # RFC 3841 (a, j, d), RFC 3892 (b), RFC 4028 (x), RFC 4474 (y): Kamailio's
    # parse_hname2 knows these too
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
    "b": "referred-by",
    "x": "session-expires",
    "y": "identity",
}


# ----- splitting a raw message the way Kamailio 5.6 does ------------------------
#
# parse_msg / parse_first_line: leading CR, LF, NUL, SP and HTAB before the start
# line are skipped; the start line ends at its LF (CRLF or bare LF).
# get_hdr_field: a line that starts with CR or LF ends the headers (CRLF CRLF,
# LF LF, even CR CR); a header field runs to the first LF that is not followed
# by SP or HTAB (folding, RFC 3261 §7.3.1); its body starts after the colon and
# any LWS, and loses trailing CR, LF and NUL (trim_r). parse_hname2: a name is
# [0-9A-Za-z._+~-]+, then only SP/HTAB up to the colon.

_LEADING = "\r\n\x00\t "


# the LF that ends the last header field: the next line starts with CR or LF
_EOH = re.compile(r"\n[\r\n]")


def header_block(raw: str) -> str:
    """The header fields of a raw SIP message as Kamailio delimits them: after
    the start line, up to the line that ends the headers; never the body."""
    start = len(raw) - len(raw.lstrip(_LEADING))
    first = raw.find("\n", start)
    if first < 0:
        return ""
    found = _EOH.search(raw, first)
    end = found.start() if found else len(raw)
    if end > first + 1 and raw[end - 1] == "\r":
        end -= 1  # the CR of the last field's CRLF
    return raw[first + 1:end]


_HNAME = re.compile(r"([0-9A-Za-z._+~-]+)[ \t]*:")
# folding: optional whitespace, an end of line, whitespace (RFC 3261 §7.3.1:
# "replaced with a single SP")
_FOLD = re.compile(r"[ \t]*\r?\n[ \t]*")


def unfold(body: str) -> str:
    """A header body with each folded line end replaced by one SP (RFC 3261
    §7.3.1) and the whitespace around it gone; trailing CR/LF/NUL dropped the
    way Kamailio's trim_r does."""
    if "\n" in body:
        body = _FOLD.sub(" ", body.rstrip("\r\n\x00"))
    return body.strip(" \t\r\n\x00") if body[-1:] in " \t\r\n\x00" or body[:1] in " \t" else body


def split_fields(block: str) -> Iterator[tuple[str, str]]:
    """(name as written, raw body) of every header field in a header block,
    with Kamailio's boundaries (see above); an empty line ends the block."""
    lines = block.split("\n")
    name = ""
    parts: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t") and name:
            parts.append(line)
            continue
        if name:
            yield name, "\n".join(parts)
        if not line or line[0] == "\r":
            return  # end of headers (Kamailio: a line starting with CR or LF)
        match = _HNAME.match(line)
        if match is None:
            raise SipSyntaxError(f"header line without a name: {line[:40]!r}")
        name = match.group(1)
        parts = [line[match.end():]]
    if name:
        yield name, "\n".join(parts)


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
    """Headers of one message, by lower-case full name (compact forms expanded),
    bodies unfolded, in message order."""

    __slots__ = ("_by_name", "_values", "_name_addrs")

    def __init__(self, block: str = "", wanted: frozenset[str] | None = None) -> None:
        self._by_name: dict[str, list[str]] = {}
        # split and parsed once per message however many parts ask (the bodies never change)
        self._values: dict[str, tuple[str, ...]] = {}
        self._name_addrs: dict[str, tuple[NameAddr, ...]] = {}
        if block:
            self._add(split_fields(block), wanted)

    @classmethod
    def from_fields(cls, fields: Iterable[tuple[str, str]], wanted: frozenset[str] | None = None) -> Headers:
        """Headers from (name, body) pairs as Kamailio's parser delimited them
        (``$hdr(name)[i]``: folded lines still in, trailing CR/LF trimmed)."""
        headers = cls()
        headers._add(fields, wanted)
        return headers

    def _add(self, fields: Iterable[tuple[str, str]], wanted: frozenset[str] | None) -> None:
        by_name = self._by_name
        compact = COMPACT_FORMS
        for raw_name, body in fields:
            name = raw_name.lower()
            name = compact.get(name, name)
            if wanted is not None and name not in wanted:
                continue  # a header nobody reads is never unfolded nor checked
            by_name.setdefault(name, []).append(_checked(name, unfold(body) if body else body))

    @classmethod
    def from_kamailio(cls, by_name: dict[str, list[str]]) -> Headers:
        """Headers from Kamailio's bodies already keyed by our lower-case full
        names (the adapter's ``$hdr`` reads): the per-message fast path, the
        same normalisation as :meth:`from_fields`."""
        headers = cls()
        control = _CONTROL.search
        kept = headers._by_name
        for name, bodies in by_name.items():  # plain loops: no comprehension frame per name
            normal = []
            for body in bodies:
                normal.append(body.strip(" \t") if control(body) is None else _checked(name, unfold(body)))
            kept[name] = normal
        return headers

    def as_dict(self) -> dict[str, list[str]]:
        """Every header kept, by name (a copy)."""
        return {name: list(bodies) for name, bodies in self._by_name.items()}

    def bodies(self, name: str) -> list[str]:
        return self._by_name.get(name, [])

    @property
    def first_hop(self) -> bool:
        """The request comes straight from the UA: it carries exactly one Via
        value (RFC 5626 §5.1 "the edge proxy is the first hop", §6 "the
        registrar is the first hop"; RFC 3261 §16.6: every proxy adds one).
        The one place this rule lives."""
        return self.value_count("via") == 1

    def values(self, name: str) -> list[str]:
        """Every comma-separated value of every header with this name."""
        split = self._values.get(name)
        if split is None:
            split = tuple(value for body in self.bodies(name) for value in split_values(body))
            self._values[name] = split
        return list(split)

    def value_count(self, name: str) -> int:
        """``len(self.values(name))``, without splitting a field that is one
        plain value (the common Via) nor building the list."""
        count = 0
        for body in self.bodies(name):
            count += 1 if _single_value(body) else len(split_values(body))
        return count

    def name_addrs(self, name: str) -> tuple[NameAddr, ...]:
        """Every value of a Contact/Path/Route-like header, parsed (:func:`parse_name_addr`)."""
        parsed = self._name_addrs.get(name)
        if parsed is None:
            bodies = self.bodies(name)
            if len(bodies) == 1:
                parsed = name_addrs_of(bodies[0])  # the common case: one field
            else:
                parsed = tuple(value for body in bodies for value in name_addrs_of(body))
            self._name_addrs[name] = parsed
        return parsed

    def first(self, name: str) -> str | None:
        bodies = self._by_name.get(name)
        return bodies[0] if bodies else None

    def option_tags(self, name: str) -> frozenset[str]:
        return frozenset(v.strip().lower() for v in self.values(name) if v.strip())


def _single_value(body: str) -> bool:
    """The (normalised, so never blank) body is one value for
    :func:`split_values` beyond doubt: not empty, no comma, and nothing (a
    quote, an angle bracket) that could make the split fail."""
    return bool(body) and "," not in body and '"' not in body and "<" not in body


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

    def without(self, *names: str) -> NameAddr:
        """The same value without the header parameters ``names`` (lower-case)."""
        return NameAddr(self.uri, {k: v for k, v in self.params.items() if k not in names}, self.star)


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
    return f"[{ip}]" if ":" in ip and not ip.startswith("[") else ip


def is_digits(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also accepts "²", which ``int`` rejects)."""
    return text.isascii() and text.isdigit()


def parse_uint(text: str, what: str, max_digits: int) -> int:
    """A number of at most ``max_digits`` ASCII digits (RFC 3261 §25.1: 1*DIGIT),
    else :class:`SipSyntaxError`. The length is checked before ``int()`` ever
    sees the text: Python refuses to convert more than 4300 digits with a plain
    ValueError, and no field we read holds more than ten."""
    if len(text) > max_digits or not is_digits(text):
        raise SipSyntaxError(f"bad {what}: {text[:20]!r}" + (f" ({len(text)} characters)" if len(text) > 20 else ""))
    return int(text)


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


# Values are parsed once per process (outbound.memo): a device's Contact comes
# again with the REGISTER that answers our challenge, our Record-Route entries
# with the dialog's next requests. Only short values are kept, and few: at most
# 1024 values of up to 512 characters in each memo, about 1.5 kB per
# Contact-like value in the three, so about 1.5 MB per process. A repeat comes
# soon, or (a refresh an hour later) after thousands of other values anyway.
MEMO_ENTRIES = 1024
MEMO_VALUE_CHARS = 512
_NAME_ADDRS: dict[str, NameAddr] = {}
_BODY_NAME_ADDRS: dict[str, tuple[NameAddr, ...]] = {}
_SIP_URIS: dict[str, SipUri] = {}


def _memo(function: Callable[[str], V], memo: dict[str, V]) -> Callable[[str], V]:
    return text_memo(function, memo, limit=MEMO_ENTRIES, max_chars=MEMO_VALUE_CHARS)


def _parse_name_addr(value: str) -> NameAddr:
    """One Contact/Path/Route value (RFC 3261 §20.10 name-addr / addr-spec
    with header parameters); the same result object for the same text."""
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
        if "?" in uri:
            # RFC 3261 §20: a URI with a comma, question mark or semicolon MUST be in <>
            raise SipSyntaxError(f"URI with headers outside <>: {uri[:60]!r}")
        params = parse_params(rest)
    if ":" not in uri:
        raise SipSyntaxError(f"not a URI: {uri[:60]!r}")
    return NameAddr(uri=uri, params=params)


parse_name_addr = _memo(_parse_name_addr, _NAME_ADDRS)


def _name_addrs_of(body: str) -> tuple[NameAddr, ...]:
    """Every value of one Contact/Path/Route-like header field, parsed (split
    with :func:`split_values`, each value with :func:`parse_name_addr`); the
    same result for the same text."""
    return tuple(parse_name_addr(value) for value in split_values(body))


name_addrs_of = _memo(_name_addrs_of, _BODY_NAME_ADDRS)


@dataclass(frozen=True, slots=True)
class SipUri:
    """The parts of a sip:/sips: URI that routing needs (RFC 3261 §19.1)."""

    scheme: str
    user: str | None
    host: str
    port: int | None
    params: dict[str, str | None]

    @staticmethod
    def parse(uri: str) -> SipUri:
        """The URI's parts; the same result object for the same text."""
        return _parse_sip_uri(uri)

    @classmethod
    def _parse(cls, uri: str) -> SipUri:
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
        host, port = split_hostport(hostport)
        return cls(scheme, user, host, port, parse_params(param_text))


_parse_sip_uri = _memo(SipUri._parse, _SIP_URIS)


def split_hostport(hostport: str) -> tuple[str, int | None]:
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
    # leading zeros are still 1*DIGIT (RFC 3261 §25.1); more than five others is no port
    port = parse_uint(port_text.lstrip("0") or "0", "port", 5) if is_digits(port_text) else -1
    if not 0 < port < 65536:
        raise SipSyntaxError(f"bad port: {port_text[:10]!r}")
    return host.lower(), port


def format_name_addr(value: NameAddr) -> str:
    """A Contact/Path/Route value written back as ``<uri>;param=value...``
    (RFC 3261 §20.10; names lower-cased, values as received). The display
    name is not kept."""
    if value.star:
        return "*"
    params = "".join(f";{name}" if param is None else f";{name}={param}" for name, param in value.params.items())
    return f"<{value.uri}>{params}"


def parse_name_addrs(headers: Headers, name: str) -> list[NameAddr]:
    return list(headers.name_addrs(name))


# delta-seconds longer than this is refused, as Kamailio's parse_expires does
# ("more then 32bit/maxuint cant be valid"): its registrar would not read it either
DELTA_SECONDS_DIGITS = 10


def parse_delta_seconds(text: str | None) -> int | None:
    """Expires values (RFC 3261 §20.19, §20.10 expires param); None when absent,
    :class:`SipSyntaxError` when not a number or longer than ten digits; a
    ten-digit value above 2**32-1 counts as 2**32-1."""
    if text is None:
        return None
    text = text.strip().strip('"')
    return min(parse_uint(text, "expires value", DELTA_SECONDS_DIGITS), 2**32 - 1)
