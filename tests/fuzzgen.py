"""Seeded generator of mutated SIP requests for the robustness test (tests/integration/test_fuzz.py).

Pure: no sockets, no clock, no Kamailio. ``cases(seed, role, count, ctx)`` gives
the same list of :class:`Case` for the same arguments; the randomness is one
``random.Random(seed)``. Each case says what may come back:

* ``FINAL``: the script runs; a final reply must arrive and its code must be in
  ``allowed`` (never a Python exception's 500: ``allowed`` holds no 500 unless
  ``note`` says why one is right);
* ``NO_REPLY``: an ACK; nothing is answered;
* ``MAY_DROP``: Kamailio's own parser rejects the message before the script
  runs (bad start line, missing or empty Via, unparsable Content-Length on a
  stream): no reply, or one from ``allowed``; ``note`` names the reason.

Messages are raw text so that they can be malformed in ways SIPp cannot send.
Header values may carry lone surrogates (``\\udcff``), rendered as the raw byte
(invalid UTF-8) with ``surrogateescape``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum

# sanity's answers, any method (483 only when a case sets Max-Forwards: 0)
FINAL_CODES_SANITY = frozenset({400, 416, 420, 505})


# MAY_DROP reasons that are no parse failure of Kamailio's core
# ("silent": Kamailio drops these without a log line at the default level)
NOT_CORE = ("stream framing", "the Route now names", "silent")


DEAD_TCP_PORT = 5098  # on the sink's address; nothing listens there


class Expect(Enum):
    FINAL = "final"
    NO_REPLY = "no-reply"
    MAY_DROP = "may-drop"


@dataclass(frozen=True)
class Context:
    """Where the messages go and what they may name (all loopback test addresses)."""

    role: str  # "edge", "registrar" or "single"
    target_ip: str
    target_port: int
    sink_uri: str  # a UAS that answers every request 481 (in-dialog targets)
    domain: str = "example.com"
    # flow tokens (edge and single roles): a gone TCP flow, a flow to the sink,
    # one signed with a foreign key, one of a peer edge (another local socket);
    # the own flow is filled in at send time
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def sink_host(self) -> str:
        return self.sink_hostport.partition(":")[0]

    @property
    def sink_hostport(self) -> str:
        """Request-URIs name the sink, never a domain: whatever gets routed on by
        its R-URI reaches the sink (481), and nothing asks DNS off this machine."""
        return self.sink_uri.rpartition("@")[2]

    @property
    def has_tokens(self) -> bool:
        return self.role in ("edge", "single")


@dataclass
class Msg:
    method: str
    ruri: str
    headers: list[tuple[str, str]]
    body: str = ""
    start_line: str | None = None
    content_length: str | None = None  # None: the right one

    def render(self, host: str, port: int, transport: str, own_token: str) -> bytes:
        def fill(text: str) -> bytes:
            text = (text.replace("{HOST}", host).replace("{PORT}", str(port))
                    .replace("{TRANSPORT}", transport.upper()).replace("{OWN}", own_token))
            return text.encode("utf-8", "surrogateescape")

        start = self.start_line if self.start_line is not None else f"{self.method} {self.ruri} SIP/2.0"
        body = fill(self.body)
        lines = [start]
        for name, value in self.headers:
            lines.append(f"{name}: {value}" if name else value)
        length = self.content_length if self.content_length is not None else str(len(body))
        lines.append(f"Content-Length: {length}")
        return fill("\r\n".join(lines) + "\r\n\r\n") + body


@dataclass(frozen=True)
class Case:
    name: str
    transport: str
    msg: Msg
    expect: Expect
    allowed: frozenset[int]
    note: str = ""

    @property
    def method(self) -> str:
        return self.msg.method

    @property
    def core_rejects(self) -> bool:
        """MAY_DROP because Kamailio's own parser refuses it and logs so; the
        other MAY_DROP cases are stream framing, Routes to a dead port and what
        the core drops without a log line (start line, To)."""
        return self.expect is Expect.MAY_DROP and not self.note.startswith(NOT_CORE)


# ----- base requests ----------------------------------------------------------

def _common(rng: random.Random, method: str, cseq: int, ctx: Context, user: str, *,
            to_tag: bool, call_id: str) -> list[tuple[str, str]]:
    to = f"<sip:{user}@{ctx.domain}>" + (f";tag=tt{rng.randrange(10**6)}" if to_tag else "")
    return [
        ("Via", f"SIP/2.0/{{TRANSPORT}} {{HOST}}:{{PORT}};rport;branch=z9hG4bK-fz{rng.randrange(10**12)}"),
        ("Max-Forwards", "70"),
        ("From", f"<sip:fz-caller@{ctx.domain}>;tag=ft{rng.randrange(10**6)}"),
        ("To", to),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method}"),
    ]


def _contact(user: str, *, ob: bool = True, instance: int = 1, reg_id: int | None = 1) -> str:
    params = f';+sip.instance="<urn:uuid:00000000-0000-4000-8000-{instance:012d}>"'
    if reg_id is not None:
        params += f";reg-id={reg_id}"
    return f"<sip:{user}@{{HOST}}:{{PORT}};transport={{TRANSPORT}}{';ob' if ob else ''}>{params}"


def base_register(rng: random.Random, ctx: Context, n: int) -> Msg:
    user = f"fz-reg{n}"
    headers = _common(rng, "REGISTER", 1 + rng.randrange(1000), ctx, user, to_tag=False, call_id=f"fz-{n}@fuzz")
    headers[2] = ("From", f"<sip:{user}@{ctx.domain}>;tag=ft{rng.randrange(10**6)}")
    headers += [
        ("Contact", _contact(user, instance=n)),
        ("Expires", str(rng.choice((0, 60, 600, 3600)))),
        ("Supported", "path, outbound"),
    ]
    return Msg("REGISTER", f"sip:{ctx.domain}", headers)


def base_initial(rng: random.Random, ctx: Context, n: int, method: str) -> Msg:
    headers = _common(rng, method, 1, ctx, "fz-nobody", to_tag=False, call_id=f"fz-{n}@fuzz")
    headers.append(("Contact", "<sip:fz-caller@{HOST}:{PORT};transport={TRANSPORT};ob>"))
    if method == "SUBSCRIBE":
        headers += [("Event", "presence"), ("Expires", "60")]
    body = ""
    if method == "INVITE":
        headers.append(("Content-Type", "application/sdp"))
        body = "v=0\r\no=- 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"
    if ctx.has_tokens and rng.random() < 0.5:
        token = rng.choice(("{OWN}", ctx.tokens["gone"], ctx.tokens["sink"], ctx.tokens["forged"], ctx.tokens["peer"]))
        headers.insert(1, ("Route", f"<sip:{token}@{ctx.target_ip}:{ctx.target_port};lr;ob>"))
    return Msg(method, f"sip:fz-nobody@{ctx.sink_hostport}", headers, body=body)


def base_in_dialog(rng: random.Random, ctx: Context, n: int, method: str) -> Msg:
    """BYE / ACK / re-INVITE inside a dialog; the Route names the target (with a
    token on edge and single) and the R-URI is the sink, which answers 481."""
    cseq = 2 if method != "ACK" else 1
    headers = _common(rng, method, cseq, ctx, "fz-callee", to_tag=True, call_id=f"fz-{n}@fuzz")
    user = ""
    if ctx.has_tokens:
        user = rng.choice(("{OWN}", "{OWN}", ctx.tokens["gone"], ctx.tokens["sink"], ctx.tokens["forged"],
                           ctx.tokens["peer"], ""))
        user = f"{user}@" if user else ""
    headers.insert(1, ("Route", f"<sip:{user}{ctx.target_ip}:{ctx.target_port};lr>"))
    return Msg(method, ctx.sink_uri, headers)


def base_cancel(rng: random.Random, ctx: Context, n: int) -> Msg:
    headers = _common(rng, "CANCEL", 1, ctx, "fz-nobody", to_tag=False, call_id=f"fz-{n}@fuzz")
    return Msg("CANCEL", f"sip:fz-nobody@{ctx.sink_hostport}", headers)


# ----- mutations ----------------------------------------------------------------

FUZZED_HEADERS = ("Via", "From", "To", "Call-ID", "CSeq", "Contact", "Path", "Route", "Supported",
                  "Require", "Expires", "Max-Forwards")
JUNK = ("caf\u00e9 \u2603 \U0001f600", "\udcff\udcfe\udc80", "a\x00b", "\x00", "\u00ff\u00fe", "\t\t",
        "\udcc3(", "%00%ff", "\\\"\\", "<<<>>>", ",,,", ";;;=;=")
BAD_IPV6 = ("[::1", "::1", "[::g]", "[1:2:3:4:5:6:7:8:9]", "[::1]:99999", "[]", "[:::]", "[::1]]",
            "[::1%25lo]", "[::ffff:999.1.1.1]")
# headers the core needs before the script runs (receive_msg); those it parses there
CORE_REQUIRED = frozenset({"From", "To", "Call-ID", "CSeq"})
CORE_PARSED = frozenset({"Via", "To", "CSeq"})
# headers Kamailio's parser (sip_parser_mode strict, the default) refuses twice
STRICT_SINGLE = frozenset({"Call-ID", "To", "CSeq", "From", "Max-Forwards", "Content-Length"})
CONTACT_PARAMS = (";reg-id=0", ";reg-id=abc", ";reg-id=99999999999", ";reg-id=", ";reg-id",
                  ";reg-id=-1", ";reg-id=1;reg-id=2", ";+sip.instance=urn:uuid:1234;reg-id=1",
                  ";+sip.instance=\"urn:uuid:1234\";reg-id=1", ";+sip.instance=;reg-id=1",
                  ";+sip.instance=\"<\";reg-id=1", ";ob=value", ";expires=-1", ";expires=abc",
                  ";expires=99999999999", ";q=2.5", ";q=-1", ";q=abc", ";expires=0;reg-id=0",
                  ";+sip.instance=\"<urn:uuid:x>\";reg-id=\u00b2")


def _pick_header(rng: random.Random) -> str:
    """A header to mutate; those the core needs before the script are picked
    less often, so that most cases reach the script."""
    return rng.choices(FUZZED_HEADERS, weights=[1 if h in CORE_REQUIRED or h == "Via" else 3
                                                 for h in FUZZED_HEADERS])[0]


def _find(msg: Msg, name: str) -> list[int]:
    return [i for i, (n, _) in enumerate(msg.headers) if n.lower() == name.lower()]


def _set(msg: Msg, name: str, value: str) -> None:
    found = _find(msg, name)
    if found:
        msg.headers[found[0]] = (name, value)
    else:
        msg.headers.append((name, value))


@dataclass
class Mutated:
    msg: Msg
    label: str
    may_drop: str = ""  # why Kamailio's core may reject it before the script
    extra_codes: frozenset[int] = frozenset()


def _copy(msg: Msg) -> Msg:
    return replace(msg, headers=list(msg.headers))


def m_drop(rng: random.Random, msg: Msg, ctx: Context) -> Mutated:
    name = _pick_header(rng)
    msg.headers = [(n, v) for n, v in msg.headers if n.lower() != name.lower()]
    why = "no Via: the core drops it" if name == "Via" else ""
    if name in CORE_REQUIRED:
        why = f"no {name}: the core drops it (receive_msg: required headers)"
    return Mutated(msg, f"drop-{name}", why)


def m_duplicate(rng: random.Random, msg: Msg, ctx: Context) -> Mutated:
    name = _pick_header(rng)
    found = _find(msg, name)
    value = msg.headers[found[0]][1] if found else "x"
    msg.headers.insert(rng.randrange(len(msg.headers) + 1), (name, value))
    why = ""
    if name in STRICT_SINGLE:
        why = f"Kamailio's strict parser refuses a second {name} and cannot build a reply"
    return Mutated(msg, f"dup-{name}", why)


def m_empty(rng: random.Random, msg: Msg, ctx: Context) -> Mutated:
    name = _pick_header(rng)
    _set(msg, name, "")
    why = f"empty {name}: the core cannot parse it and drops the request" if name in CORE_PARSED else ""
    return Mutated(msg, f"empty-{name}", why)


def m_junk(rng: random.Random, msg: Msg, ctx: Context) -> Mutated:
    name = _pick_header(rng)
    junk = rng.choice(JUNK)
    found = _find(msg, name)
    old = msg.headers[found[0]][1] if found else ""
    cut = rng.randrange(len(old) + 1)
    _set(msg, name, old[:cut] + junk + old[cut:])
    why = f"junk in {name}: the core may fail to parse it" if name in CORE_PARSED else ""
    port = re.search(r"sip:[^>]*?:(\d+)[;>]", old[:cut] + junk + old[cut:]) if name == "Route" else None
    if port is not None and int(port.group(1)) != ctx.target_port:
        why = f"the Route now names port {port.group(1)}, where nobody listens: tm answers 408 only after fr_timer"
    if "\x00" in junk and name in ("From", "To", "Call-ID", "CSeq", "Max-Forwards"):
        why = why or f"silent: NUL in {name}, the core may fail to parse it"
    return Mutated(msg, f"junk-{name}", why)


def m_long_token(rng: random.Random, msg: Msg, ctx: Context) -> Mutated:
    size = rng.choice((1025, 2048, 4000))
    token = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
                    for _ in range(size))
    msg.headers.insert(1, ("Route", f"<sip:{token}@{ctx.target_ip}:{ctx.target_port};lr;ob>"))
    return Mutated(msg, f"route-token-{size}")


def m_many_contacts(rng: random.Random, msg: Msg, ctx: Context) -> Mutated:
    msg.headers = [(n, v) for n, v in msg.headers if n.lower() != "contact"]
    reg = rng.random() < 0.5
    for i in range(100):
        contact = f"<sip:fz-m{i}@{{HOST}}:{{PORT}}>" + (f";+sip.instance=\"<urn:uuid:fz-{i}>\";reg-id=1" if reg else "")
        msg.headers.append(("Contact", contact))
    return Mutated(msg, "contacts-100" + ("-reg-id" if reg else ""))


def m_many_routes(rng: random.Random, msg: Msg, ctx: Context) -> Mutated:
    own = f"<sip:{ctx.target_ip}:{ctx.target_port};lr>"
    for _ in range(60):
        msg.headers.insert(1, ("Route", own))
    # 60 hops through ourselves: two of these exhaust Max-Forwards 70 (483)
    return Mutated(msg, "routes-60", extra_codes=frozenset({483}))


def m_contact_param(rng: random.Random, msg: Msg, ctx: Context) -> Mutated:
    param = rng.choice(CONTACT_PARAMS)
    user = "fz-p"
    contact = f"<sip:{user}@{{HOST}}:{{PORT}};transport={{TRANSPORT}}>{param}"
    if "+sip.instance" not in param and rng.random() < 0.7:
        contact += ';+sip.instance="<urn:uuid:00000000-0000-4000-8000-00000000fa11>"'
    _set(msg, "Contact", contact)
    return Mutated(msg, f"contact-param{param}")


def m_garbled_token(rng: random.Random, msg: Msg, ctx: Context) -> Mutated:
    token = rng.choice([t for t in ctx.tokens.values()] or ["AAAA"])
    how = rng.choice(("truncate", "flip", "extend", "pad", "percent", "empty-user", "at-signs"))
    if how == "truncate":
        token = token[: rng.randrange(1, max(len(token), 2))]
    elif how == "flip":
        i = rng.randrange(len(token))
        token = token[:i] + rng.choice("AZaz09-_") + token[i + 1:]
    elif how == "extend":
        token = token + "A" * rng.choice((1, 4, 32))
    elif how == "pad":
        token = token + "=="
    elif how == "percent":
        token = token[:10] + "%41%00" + token[10:]
    elif how == "empty-user":
        token = ""
    else:
        token = token[:8] + "@@" + token[8:]
    msg.headers = [(n, v) for n, v in msg.headers if n.lower() != "route"]
    msg.headers.insert(1, ("Route", f"<sip:{token}@{ctx.target_ip}:{ctx.target_port};lr;ob>"))
    return Mutated(msg, f"token-{how}")


def m_ipv6(rng: random.Random, msg: Msg, ctx: Context) -> Mutated:
    bad = rng.choice(BAD_IPV6)
    where = rng.choice(("Contact", "From", "To", "Path", "Via"))
    if where == "Contact":
        _set(msg, "Contact", f"<sip:fz-v6@{bad}:5060>;+sip.instance=\"<urn:uuid:v6>\";reg-id=1")
    elif where in ("From", "To"):
        found = _find(msg, where)
        tag = msg.headers[found[0]][1].partition(">")[2] if found else ""
        _set(msg, where, f"<sip:fz-v6@{bad}>{tag}")
        if where == "To":
            return Mutated(msg, f"ipv6-To-{bad}", "silent: malformed IPv6 in To, the core may fail to parse it")
    elif where == "Path":
        _set(msg, "Path", f"<sip:{bad};lr;ob>")
    else:
        # the host of our own Via (a second Via would make the request one "from the core")
        _set(msg, "Via", f"SIP/2.0/{{TRANSPORT}} {bad};rport;branch=z9hG4bK-v6{rng.randrange(10**9)}")
        return Mutated(msg, f"ipv6-Via-{bad}", "malformed IPv6 in Via: the core may reject it")
    return Mutated(msg, f"ipv6-{where}-{bad}")


def m_star(rng: random.Random, msg: Msg, ctx: Context) -> Mutated:
    variant = rng.choice(("star-and-contact", "star-expires-600", "star-twice", "star-no-expires", "star-alone"))
    msg.headers = [(n, v) for n, v in msg.headers if n.lower() not in ("contact", "expires")]
    if variant == "star-and-contact":
        msg.headers += [("Contact", "*"), ("Contact", "<sip:fz-star@{HOST}:{PORT}>"), ("Expires", "0")]
    elif variant == "star-expires-600":
        msg.headers += [("Contact", "*"), ("Expires", "600")]
    elif variant == "star-twice":
        msg.headers += [("Contact", "*, *"), ("Expires", "0")]
    elif variant == "star-no-expires":
        msg.headers += [("Contact", "*")]
    else:
        msg.headers += [("Contact", "*"), ("Expires", "0")]
    return Mutated(msg, variant)


def m_content_length(rng: random.Random, msg: Msg, ctx: Context, transport: str = "udp") -> Mutated:
    size = len(msg.render("127.0.0.1", 5060, transport, "").partition(b"\r\n\r\n")[2])
    value = rng.choice((str(size + 10), str(max(size - 3, 0)), "abc", "-1", "99999999999", ""))
    msg.content_length = value
    if transport != "udp":
        # on a stream Content-Length frames the message: too long waits for bytes
        # that never come, unparsable closes the connection
        return Mutated(msg, f"content-length-{value or 'empty'}",
                       "stream framing: Kamailio waits for the body or closes the connection")
    why = "" if value.isdigit() and int(value) < 10**9 else "unparsable Content-Length: the core may reject it"
    return Mutated(msg, f"content-length-{value or 'empty'}", why)


def m_start_line(rng: random.Random, msg: Msg, ctx: Context) -> Mutated:
    variant = rng.choice(("garbage", "version", "no-uri", "lower-method", "tab"))
    if variant == "garbage":
        msg.start_line = "HELLO \udcff WORLD"
        return Mutated(msg, "start-garbage", "silent: a bad start line is dropped by the core")
    if variant == "version":
        msg.start_line = f"{msg.method} {msg.ruri} SIP/3.0"
        return Mutated(msg, "start-version", "silent: SIP/3.0 is dropped by the core")
    if variant == "no-uri":
        msg.start_line = f"{msg.method} SIP/2.0"
        return Mutated(msg, "start-no-uri", "silent: no Request-URI, dropped by the core")
    if variant == "lower-method":
        msg.start_line = f"{msg.method.lower()} {msg.ruri} SIP/2.0"
        return Mutated(msg, "start-lower-method", "silent: an unknown method may be dropped by the core")
    msg.start_line = f"{msg.method}\t{msg.ruri}\tSIP/2.0"
    return Mutated(msg, "start-tabs", "silent: tabs in the start line, may be dropped by the core")


def m_maxfwd(rng: random.Random, msg: Msg, ctx: Context) -> Mutated:
    value = rng.choice(("0", "1", "abc", "-1", "256", "99999999999", "7 0", "0x10"))
    _set(msg, "Max-Forwards", value)
    # 0: 483 Too Many Hops; a value that is no number: 400 (RFC 3261 §20.22)
    # 1: the next hop answers 483
    return Mutated(msg, f"max-forwards-{value}",
                   extra_codes=frozenset({483}) if value in ("0", "1") else frozenset())


def m_dead_next_hop(rng: random.Random, msg: Msg, ctx: Context) -> Mutated:
    """An in-dialog Route, after ours, to a loopback TCP port where nobody
    listens: the connection is refused at once."""
    found = _find(msg, "Route")
    at = found[-1] + 1 if found else 1
    msg.headers.insert(at, ("Route", f"<sip:{ctx.sink_host}:{DEAD_TCP_PORT};transport=tcp;lr>"))
    # a transport error is a 503 (RFC 3261 §16.9); a lone 503 becomes 500 (§16.7 step 6)
    return Mutated(msg, "route-dead-tcp", extra_codes=frozenset({500}))


def m_require(rng: random.Random, msg: Msg, ctx: Context) -> Mutated:
    value = rng.choice(("foo", "gruu", "path, foo", "path", "outbound", "Path, OUTBOUND", "100rel"))
    _set(msg, "Require", value)
    return Mutated(msg, f"require-{value}")


def m_ruri(rng: random.Random, msg: Msg, ctx: Context) -> Mutated:
    sink = ctx.sink_hostport
    variant = rng.choice(("tel:+123", "sip:", "sip:@", "sip:fz@[::1", f"sips:fz@{sink}", f"sip:fz@{sink};;;=",
                          f"sip:fz\udcff@{sink}", "sip:" + "x" * 1500 + f"@{sink}"))
    msg.ruri = variant
    # 500: a request routed on by its R-URI (sips:, no TLS) cannot be sent (R10)
    return Mutated(msg, f"ruri-{variant[:20]}", "silent: unparsable Request-URI, the core may drop it",
                   extra_codes=frozenset({500}))


MUTATIONS: tuple[tuple[Callable[..., Mutated], int, frozenset[str]], ...] = (
    # (mutation, weight, kinds of request it applies to (see cases()); empty: all)
    (m_drop, 6, frozenset()),
    (m_duplicate, 4, frozenset()),
    (m_empty, 5, frozenset()),
    (m_junk, 6, frozenset()),
    (m_long_token, 2, frozenset()),
    (m_many_contacts, 2, frozenset({"REGISTER", "INVITE"})),
    (m_many_routes, 2, frozenset()),
    (m_contact_param, 5, frozenset({"REGISTER"})),
    (m_garbled_token, 4, frozenset()),
    (m_ipv6, 3, frozenset()),
    (m_star, 3, frozenset({"REGISTER"})),
    (m_content_length, 2, frozenset()),
    (m_start_line, 1, frozenset()),
    # initial requests only: an in-dialog R-URI naming a domain would be looked up in DNS
    (m_ruri, 1, frozenset({"REGISTER", "INVITE", "OPTIONS"})),
    (m_maxfwd, 3, frozenset()),
    (m_require, 2, frozenset({"REGISTER"})),
    (m_dead_next_hop, 2, frozenset({"BYE", "ACK", "INVITE-dialog"})),
)


# ----- what may come back ----------------------------------------------------

def allowed_codes(ctx: Context, method: str, in_dialog: bool) -> frozenset[int]:
    """Final codes that are right for a mutated request of this kind at this role."""
    codes = set(FINAL_CODES_SANITY)
    if method == "REGISTER":
        codes |= {200, 403, 439}  # 403: a forged/garbled flow token does not matter for REGISTER
    elif method == "CANCEL":
        codes |= {481}
    elif in_dialog:
        codes |= {481, 404, 403, 430}  # 481 from the sink; 404 no route; 403/430 tokens
    else:
        codes |= {404, 403, 430, 481}  # no binding; forged token; gone flow; sink via token
    return frozenset(codes)


def required_unknown(msg: Msg) -> bool:
    """A Require header lists an option tag other than path / outbound."""
    tags = {tag.strip().lower() for name, value in msg.headers if name.lower() == "require"
            for tag in value.split(",") if tag.strip()}
    return bool(tags - {"path", "outbound"})


# a call to a registered AOR whose flows are gone: no usable flow / nobody answered
CALL_CODES = frozenset({480, 404})
# REGISTER cases whose AOR later cases call: only those whose mutations leave the
# outbound Contact alone (a junk contact host could make Kamailio ask DNS off this
# machine; a plain binding with a dead UDP contact takes fr_timer to fail; a
# hundred bindings take 13 waves)
SAFE_TO_CALL = ("dup-Supported", "drop-Supported", "empty-Supported", "junk-Supported", "dup-Expires",
                "drop-Expires", "empty-Expires", "junk-Expires", "dup-Route", "drop-Route", "empty-Route",
                "junk-Route", "route-", "token-", "routes-60", "max-forwards-", "dup-Max-Forwards",
                "drop-Max-Forwards", "empty-Max-Forwards", "junk-Max-Forwards", "drop-Path", "empty-Path",
                "require-", "dup-Require", "drop-Require", "empty-Require", "junk-Require")


def cases(seed: int, ctx: Context, count: int, transports: tuple[str, ...] = ("udp", "tcp")) -> list[Case]:
    """``count`` cases for one role; about one in eight is unmutated (a control)."""
    rng = random.Random(f"{seed}:{ctx.role}")
    kinds = ("REGISTER", "REGISTER", "INVITE", "OPTIONS", "SUBSCRIBE", "BYE", "ACK", "INVITE-dialog", "CANCEL")
    out: list[Case] = []
    registered: list[str] = []
    for n in range(count):
        kind = rng.choice(kinds)
        transport = rng.choice(transports)
        in_dialog = kind in ("BYE", "ACK", "INVITE-dialog")
        method = kind.partition("-")[0]
        if kind == "REGISTER":
            msg = base_register(rng, ctx, n)
        elif in_dialog:
            msg = base_in_dialog(rng, ctx, n, method)
        elif kind == "CANCEL":
            msg = base_cancel(rng, ctx, n)
        else:
            msg = base_initial(rng, ctx, n, method)
        labels = []
        may_drop = ""
        extra: frozenset[int] = frozenset()
        if kind == "INVITE" and registered and rng.random() < 0.35:
            # call an AOR an earlier case registered: the home proxy reads the
            # stored bindings (their flows are gone by now: 480, or 404)
            user = rng.choice(registered)
            msg.ruri = f"sip:{user}@{ctx.sink_hostport}"
            _set(msg, "To", f"<sip:{user}@{ctx.domain}>")
            labels.append(f"call-{user}")
            extra = CALL_CODES
        rounds = 0 if rng.random() < 0.125 else rng.choice((1, 1, 1, 2, 3))
        for _ in range(rounds):
            choices = [(f, w) for f, w, only in MUTATIONS if not only or kind in only]
            mutation = rng.choices([f for f, _ in choices], weights=[w for _, w in choices])[0]
            if mutation is m_content_length:
                done = mutation(rng, _copy(msg), ctx, transport)
            else:
                done = mutation(rng, _copy(msg), ctx)
            msg = done.msg
            labels.append(done.label)
            if done.may_drop.startswith(NOT_CORE) or not may_drop:
                may_drop = done.may_drop or may_drop  # a framing problem outranks a parse failure
            extra |= done.extra_codes
        allowed = allowed_codes(ctx, method, in_dialog) | extra
        routes = [value for name, value in msg.headers if name.lower() == "route"]
        if ctx.tokens.get("peer") and routes and f"sip:{ctx.tokens['peer']}@" in routes[0] and method != "REGISTER":
            # a valid token of another flow (a peer edge's socket) from a device, not
            # from the farm: refused by the relay policy (outbound.relay) before any
            # flow is looked at
            allowed = FINAL_CODES_SANITY | {403} | (extra & {483})
        if method == "REGISTER" and required_unknown(msg):
            # RFC 3261 §10.3 step 2: never saved; 420 (or 400 for other garbage)
            allowed = FINAL_CODES_SANITY | {420} | (extra & {483})
        if may_drop:
            expect = Expect.MAY_DROP
        elif method == "ACK":
            expect = Expect.NO_REPLY
        else:
            expect = Expect.FINAL
        if kind == "REGISTER" and all(label.startswith(SAFE_TO_CALL) for label in labels):
            registered.append(f"fz-reg{n}")
        name = f"{n:03d}-{transport}-{kind}-" + ("+".join(labels) or "control")
        out.append(Case(name, transport, msg, expect, allowed, may_drop))
    return out
