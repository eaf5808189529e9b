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

Credentials (digest authentication at the registrar and home proxy): REGISTERs
carry ``Authorization`` for their own AOR, initial INVITE / OPTIONS / SUBSCRIBE
``Proxy-Authorization`` as ``fz-caller``, most of them valid, so that cases get
past the challenge to the code behind it. A nonce only exists at send time, so
a message holds a :class:`Credentials` slot; ``Msg.render`` signs it with a
``Signer`` (``signer()``: the challenges the test collected from the role) and
then applies the case's garbling (``m_credentials``: dropped, empty, unknown
user, wrong password, a nonce we never got, a missing or doubled parameter,
junk, a trailing comma ...). A case whose credentials are intact may not be
answered 401/407; one without, or with broken ones, may.

``with_credentials`` and ``ack_for`` are the two steps a UA takes after a
challenge, for the raw-socket tests: the request again with credentials and
CSeq + 1, and the ACK of a 407 to an INVITE.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum

from digest import ChallengeHeader, authorization, challenges

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


# ----- credentials ------------------------------------------------------------

AUTH_SLOT = "{AUTH}"  # a header value that render() replaces by the signed credentials
CALLER = "fz-caller"  # who places the initial requests (From), a subscriber
UNKNOWN_USER = "fz-nobody-knows"  # no subscriber
WRONG_PASSWORD = "fz-wrong-password"
OFFLINE_NONCE = "fz-offline-nonce"


@dataclass(frozen=True)
class Credentials:
    """What render() signs: ``header`` says which challenge answers it
    (Authorization: the 401 to a REGISTER; Proxy-Authorization: the 407 to an
    initial request); ``garble`` is applied to the signed value (see garbled())."""

    header: str
    username: str
    cnonce: str
    password_ok: bool = True
    garble: tuple[tuple, ...] = ()  # changes, in order


def _garble(creds: Credentials, *change: object) -> Credentials:
    return replace(creds, garble=(*creds.garble, change))


# (credentials, method, digest uri) -> the header value, "Digest username=..."
Signer = Callable[[Credentials, str, str], str]


def signer(found: Mapping[str, ChallengeHeader], password: Callable[[str], str]) -> Signer:
    """Sign with the challenges a test collected: ``found["Authorization"]`` (a
    401's WWW-Authenticate), ``found["Proxy-Authorization"]`` (a 407's)."""
    uses = itertools.count(1)  # nonce-count: every use of a collected nonce counts up, as a
    # UA reusing a nonce does (RFC 2617 §3.2.2)

    def sign(creds: Credentials, method: str, uri: str) -> str:
        secret = password(creds.username) if creds.password_ok else WRONG_PASSWORD
        line = authorization(found[creds.header], method, uri, creds.username, secret, cnonce=creds.cnonce,
                             nc=next(uses))
        return line.partition(": ")[2]
    return sign


def offline_signer(domain: str = "example.com") -> Signer:
    """Signs with a made-up nonce (no Kamailio to ask): for corpora and seeding checks."""
    made_up = {name: ChallengeHeader(challenge, domain, OFFLINE_NONCE, "auth", "MD5", False, None)
               for name, challenge in (("Authorization", "WWW-Authenticate"),
                                       ("Proxy-Authorization", "Proxy-Authenticate"))}
    return signer(made_up, lambda user: "pw-" + user)


def _param_span(value: str, name: str) -> re.Match | None:
    return re.search(rf'(,\s*)?\b{name}\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]+)', value)


def garbled(value: str, garble: tuple[tuple, ...]) -> str:
    """The signed credentials ``value`` changed as ``garble`` says (pure)."""
    for change in garble:
        value = _change(value, change)
    return value


def _change(value: str, change: tuple) -> str:
    how, *args = change
    if how == "drop-param":
        found = _param_span(value, args[0])
        if found is None:
            return value
        rest = value[found.end():]
        if found.group(1) is None:  # the first pair: take the comma after it
            rest = re.sub(r"^\s*,\s*", " ", rest, count=1)
        return value[:found.start()] + rest
    if how == "replace-param":
        found = _param_span(value, args[0])
        if found is None:
            return value
        return value[:found.start(2)] + args[1] + value[found.end(2):]
    if how == "append":
        return value + args[0]
    if how == "junk":
        cut = len(value) * args[0] // 1000
        return value[:cut] + args[1] + value[cut:]
    if how == "truncate":
        return value[:len(value) * args[0] // 1000]
    if how == "scheme":
        return args[0] + value.partition(" ")[1] + value.partition(" ")[2]
    if how == "unquote":
        return value.replace('"', "")
    if how == "no-commas":
        return value.replace(", ", " ")
    if how == "flip-response":
        found = _param_span(value, "response")
        if found is None:
            return value
        at = found.start(2) + 1
        return value[:at] + ("0" if value[at] != "0" else "1") + value[at + 1:]
    raise ValueError(f"unknown garble {how}")


# ----- a UA's answer to a challenge (raw-socket tests) -----------------------

def _split(request: bytes) -> tuple[str, list[str], bytes]:
    """(line end, header lines with the start line first, body) of a request."""
    eol = "\r\n" if b"\r\n" in request.split(b"\n", 1)[0] + b"\n" else "\n"
    head, _, body = request.partition((eol * 2).encode())
    return eol, head.decode("utf-8", "surrogateescape").split(eol), body


def _name(line: str) -> str:
    return line.partition(":")[0].strip().lower()


def with_credentials(request: bytes, reply: bytes | str, username: str, password: str) -> bytes:
    """What a UA sends after a 401/407 (RFC 3261 §22.2, §8.1.3.5): the request
    again with CSeq + 1, a new branch and the credentials answering the reply's
    first challenge; line ends as the request had them."""
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else reply
    found = challenges(text)
    if not found:
        raise ValueError(f"no digest challenge in {text.splitlines()[0] if text else text!r}")
    eol, lines, body = _split(request)
    method, uri = lines[0].split(" ")[:2]
    out, via_done = [lines[0]], False
    for line in lines[1:]:
        name = _name(line)
        if name in ("via", "v") and not via_done:
            line, via_done = re.sub(r"branch=([^;,\s]+)", r"branch=\1-auth", line, count=1), True
        elif name == "cseq":
            number, _, rest = line.partition(":")[2].strip().partition(" ")
            line = f"CSeq: {int(number) + 1} {rest}"
        out.append(line)
    credentials = authorization(found[0], method, uri, username, password)
    at = next((i for i, line in enumerate(out) if _name(line) in ("content-length", "l")), len(out))
    out.insert(at, credentials)
    return (eol.join(out) + eol + eol).encode("utf-8", "surrogateescape") + body


def ack_for(request: bytes, reply: bytes | str) -> bytes:
    """The ACK of a non-2xx final answer to an INVITE (RFC 3261 §17.1.1.3): the
    INVITE's R-URI, top Via, From, Call-ID and Routes, the reply's To (its tag)."""
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else reply
    to = next(line for line in text.replace("\r\n", "\n").split("\n")[1:] if _name(line) in ("to", "t"))
    eol, lines, _ = _split(request)
    uri = lines[0].split(" ")[1]
    out = [f"ACK {uri} SIP/2.0"]
    via_done = False
    for line in lines[1:]:
        name = _name(line)
        if name in ("via", "v") and not via_done:
            out.append(line)
            via_done = True
        elif name in ("from", "f", "call-id", "i", "route", "max-forwards"):
            out.append(line)
        elif name == "cseq":
            out.append(f"CSeq: {line.partition(':')[2].split()[0]} ACK")
    out += [to, "Content-Length: 0"]
    return (eol.join(out) + eol + eol).encode("utf-8", "surrogateescape")


@dataclass
class Msg:
    method: str
    ruri: str
    headers: list[tuple[str, str]]
    body: str = ""
    start_line: str | None = None
    content_length: str | None = None  # None: the right one
    credentials: Credentials | None = None  # signed at render() into every AUTH_SLOT value

    def render(self, host: str, port: int, transport: str, own_token: str, sign: Signer | None = None) -> bytes:
        auth = ""
        if self.credentials is not None and any(AUTH_SLOT in value for _, value in self.headers):
            uri = (self.ruri.replace("{HOST}", host).replace("{PORT}", str(port))
                   .replace("{TRANSPORT}", transport.upper()).replace("{OWN}", own_token))
            # a digest is over octets: a URI with a lone surrogate or other junk is
            # signed as its ASCII reading, and that is the uri the credentials name
            uri = uri.encode("utf-8", "surrogateescape").decode("ascii", "replace")
            signed = (sign or offline_signer())(self.credentials, self.method, uri)
            auth = garbled(signed, self.credentials.garble)

        def fill(text: str) -> bytes:
            text = (text.replace(AUTH_SLOT, auth).replace("{HOST}", host).replace("{PORT}", str(port))
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
    # kinds the role challenges (REGISTER, initial requests): "intact" (signed right,
    # nothing changed that they depend on: no 401/407 allowed), "broken", "none"
    credentials: str = ""

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
        ("From", f"<sip:{CALLER}@{ctx.domain}>;tag=ft{rng.randrange(10**6)}"),
        ("To", to),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method}"),
    ]


def _with_credentials(rng: random.Random, msg: Msg, header: str, username: str) -> Msg:
    """Valid credentials most of the time (the cases are about what comes after
    the challenge); about one in eight goes without."""
    if rng.random() < 0.125:
        return msg
    msg.credentials = Credentials(header, username, f"{rng.getrandbits(64):016x}")
    msg.headers.append((header, AUTH_SLOT))
    return msg


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
    return _with_credentials(rng, Msg("REGISTER", f"sip:{ctx.domain}", headers), "Authorization", user)


def base_initial(rng: random.Random, ctx: Context, n: int, method: str) -> Msg:
    headers = _common(rng, method, 1, ctx, "fz-nobody", to_tag=False, call_id=f"fz-{n}@fuzz")
    headers.append(("Contact", f"<sip:{CALLER}@{{HOST}}:{{PORT}};transport={{TRANSPORT}};ob>"))
    if method == "SUBSCRIBE":
        headers += [("Event", "presence"), ("Expires", "60")]
    body = ""
    if method == "INVITE":
        headers.append(("Content-Type", "application/sdp"))
        body = "v=0\r\no=- 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"
    if ctx.has_tokens and rng.random() < 0.5:
        token = rng.choice(("{OWN}", ctx.tokens["gone"], ctx.tokens["sink"], ctx.tokens["forged"], ctx.tokens["peer"]))
        headers.insert(1, ("Route", f"<sip:{token}@{ctx.target_ip}:{ctx.target_port};lr;ob>"))
    return _with_credentials(rng, Msg(method, f"sip:fz-nobody@{ctx.sink_hostport}", headers, body=body),
                             "Proxy-Authorization", CALLER)


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


CREDENTIAL_JUNK = (*JUNK, "\r\n", "\"", "=", ",", "Digest ", "\\")


def m_credentials(rng: random.Random, msg: Msg, ctx: Context) -> Mutated:
    """Credentials that are gone, malformed or wrong: a defined answer (a new
    challenge, 400 for what no digest check can read, 403 for a failed check),
    never a 500. A message without credentials gets some first."""
    creds = msg.credentials
    if creds is None or not any(AUTH_SLOT in value for _, value in msg.headers):
        header = "Authorization" if msg.method == "REGISTER" else "Proxy-Authorization"
        user = CALLER
        if msg.method == "REGISTER":
            to = next((v for n, v in msg.headers if n.lower() == "to"), "")
            user = re.search(r"sip:([^@>]*)@", to).group(1) if "sip:" in to and "@" in to else CALLER
        creds = Credentials(header, user, f"{rng.getrandbits(64):016x}")
        msg.headers.append((header, AUTH_SLOT))
    slots = [i for i, (_, value) in enumerate(msg.headers) if AUTH_SLOT in value]
    how = rng.choice(("drop", "empty", "dup", "many", "other-header", "unknown-user", "wrong-password",
                      "other-user", "foreign-nonce", "other-realm", "drop-param", "dup-param", "junk", "truncate",
                      "scheme", "unquote", "no-commas", "trailing-comma", "flip-response", "long-param",
                      "nc", "qop", "algorithm", "no-qop"))
    label = how
    if how == "drop":
        msg.headers = [(n, v) for n, v in msg.headers if AUTH_SLOT not in v]
    elif how == "empty":
        msg.headers[slots[0]] = (creds.header, "")
    elif how in ("dup", "many"):
        for _ in range(1 if how == "dup" else 20):
            msg.headers.insert(rng.randrange(1, len(msg.headers) + 1), (creds.header, AUTH_SLOT))
    elif how == "other-header":
        # the credentials in the header of the other kind of challenge
        other = "Proxy-Authorization" if creds.header == "Authorization" else "Authorization"
        msg.headers[slots[0]] = (other, AUTH_SLOT)
    elif how == "unknown-user":
        creds = replace(creds, username=UNKNOWN_USER)
    elif how == "wrong-password":
        creds = replace(creds, password_ok=False)
    elif how == "other-user":
        # a subscriber with the right password, but not the AOR's owner (REGISTER: 403)
        creds = replace(creds, username="fz-reg-owner" if creds.username == CALLER else CALLER)
    elif how == "foreign-nonce":
        creds = _garble(creds, "replace-param", "nonce", '"' + f"{rng.getrandbits(160):040x}" + '"')
    elif how == "other-realm":
        creds = _garble(creds, "replace-param", "realm", rng.choice(('"fz-other.example"', '""', "x")))
    elif how == "drop-param":
        name = rng.choice(("username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce"))
        creds, label = _garble(creds, "drop-param", name), f"drop-param-{name}"
    elif how == "dup-param":
        name = rng.choice(("username", "realm", "nonce", "uri", "response"))
        creds, label = _garble(creds, "append", f', {name}="fz-second"'), f"dup-param-{name}"
    elif how == "junk":
        junk = rng.choice(CREDENTIAL_JUNK)
        creds = _garble(creds, "junk", rng.randrange(1001), junk)
        if junk == "\r\n":
            # what follows the line break is a header line that Kamailio cannot
            # parse: the script answers 400, or (two Vias, a header the core needs
            # after it) no reply can be built at all
            msg.credentials = creds
            return Mutated(msg, "creds-junk-crlf", "a line break in the credentials: Kamailio may fail to parse "
                           "the rest and build no reply")
    elif how == "truncate":
        creds = _garble(creds, "truncate", rng.randrange(1000))
    elif how == "scheme":
        scheme = rng.choice(("Basic", "digest", "DIGEST", "Digestx", "", "Bearer"))
        creds, label = _garble(creds, "scheme", scheme), f"scheme-{scheme or 'none'}"
    elif how in ("unquote", "no-commas", "flip-response"):
        creds = _garble(creds, how)
    elif how == "trailing-comma":
        creds = _garble(creds, "append", rng.choice((",", ", ", ",,", ", x", ", x=")))
    elif how == "long-param":
        name, long = rng.choice(("username", "nonce", "cnonce", "uri", "opaque")), "x" * rng.choice((300, 5000))
        change = ("append", f', opaque="{long}"') if name == "opaque" else ("replace-param", name, f'"{long}"')
        creds, label = _garble(creds, *change), f"long-{name}"
    elif how == "nc":
        creds = _garble(creds, "replace-param", "nc", rng.choice(("zzzzzzzz", "0", "1" * 40, "-1", '""')))
    elif how == "qop":
        creds = _garble(creds, "replace-param", "qop", rng.choice(("auth-int", "AUTH", '"auth"', "x")))
    elif how == "algorithm":
        creds = _garble(creds, "append", rng.choice((", algorithm=SHA-512-256", ", algorithm=MD5-sess",
                                                     ", algorithm=x", ", algorithm=")))
    else:  # RFC 2069 style: no qop, nc, cnonce (the response is still the RFC 2617 one)
        for name in ("qop", "nc", "cnonce"):
            creds = _garble(creds, "drop-param", name)
    msg.credentials = creds
    return Mutated(msg, f"creds-{label}")


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
    (m_credentials, 6, frozenset({"REGISTER", "INVITE", "OPTIONS", "SUBSCRIBE"})),
)


# ----- what may come back ----------------------------------------------------

def allowed_codes(ctx: Context, method: str, in_dialog: bool) -> frozenset[int]:
    """Final codes that are right for a mutated request of this kind at this role
    (with intact credentials where the role challenges)."""
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


# mutations after which credentials signed for the message may no longer fit it:
# the realm and owner come from To (REGISTER) / From (initial requests), the
# digest's method from the start line
BREAKS_CREDENTIALS = ("creds-", "drop-From", "dup-From", "empty-From", "junk-From", "ipv6-From", "drop-To",
                      "dup-To", "empty-To", "junk-To", "ipv6-To", "start-")
# the To of an in-dialog request loses its tag: an initial request now (407)
LOSES_TO_TAG = ("drop-To", "dup-To", "empty-To", "junk-To", "ipv6-To")


def challenges_allowed(kind: str, msg: Msg, labels: list[str]) -> tuple[str, frozenset[int]]:
    """(the state of the case's credentials, the challenge codes it may get)."""
    if kind in ("BYE", "ACK", "INVITE-dialog", "CANCEL"):
        # never challenged, unless a mutation made it an initial request
        lost_tag = kind != "CANCEL" and any(label.startswith(LOSES_TO_TAG) for label in labels)
        return "", frozenset({407}) if lost_tag else frozenset()
    code = 401 if kind == "REGISTER" else 407
    if any(label.startswith("start-") for label in labels):
        code_set = frozenset({401, 407})  # a lower-case "register" is no REGISTER
    else:
        code_set = frozenset({code})
    if msg.credentials is None or not any(AUTH_SLOT in value for _, value in msg.headers):
        return "none", code_set
    if any(label.startswith(BREAKS_CREDENTIALS) for label in labels):
        return "broken", code_set
    return "intact", frozenset()


def required_unknown(msg: Msg) -> bool:
    """A Require header lists an option tag other than path / outbound / gruu
    (RFC 5627 §5.1) as Kamailio reads the body: without trailing CR, LF, NUL,
    docs/parsing.md."""
    tags = {tag.strip().lower() for name, value in msg.headers if name.lower() == "require"
            for tag in value.rstrip("\r\n\x00").split(",") if tag.strip()}
    return bool(tags - {"path", "outbound", "gruu"})


# a call to a registered AOR whose flows are gone: no usable flow (480), nobody
# answered at all (408, RFC 3261 §16.7), no binding left (404)
CALL_CODES = frozenset({480, 408, 404})
# REGISTER cases whose AOR later cases call: only those whose mutations leave the
# outbound Contact alone (a junk contact host could make Kamailio ask DNS off this
# machine; a plain binding with a dead UDP contact takes fr_timer to fail; a
# hundred bindings take 13 waves)
SAFE_TO_CALL = ("dup-Supported", "drop-Supported", "empty-Supported", "junk-Supported", "dup-Expires",
                "drop-Expires", "empty-Expires", "junk-Expires", "dup-Route", "drop-Route", "empty-Route",
                "junk-Route", "route-", "token-", "routes-60", "max-forwards-", "dup-Max-Forwards",
                "drop-Max-Forwards", "empty-Max-Forwards", "junk-Max-Forwards", "drop-Path", "empty-Path",
                "require-", "dup-Require", "drop-Require", "empty-Require", "junk-Require")


def subscribers_needed(all_cases: list[Case]) -> set[str]:
    """The users the cases sign as (every one but UNKNOWN_USER must be a subscriber)."""
    return {c.msg.credentials.username for c in all_cases if c.msg.credentials} - {UNKNOWN_USER}


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
            # stored bindings (their flows are gone by now: 480, 408, or 404)
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
        state, challenge = challenges_allowed(kind, msg, labels)
        allowed = allowed_codes(ctx, method, in_dialog) | extra | challenge
        routes = [value for name, value in msg.headers if name.lower() == "route"]
        peer_route = f"sip:{ctx.tokens.get('peer')}@{ctx.target_ip}:{ctx.target_port};"
        if ctx.tokens.get("peer") and routes and peer_route in routes[0] and method != "REGISTER":
            # a valid token of another flow (a peer edge's socket) from a device, not
            # from the farm: refused by the relay policy (outbound.relay) before any
            # flow is looked at (junk in the Route's host makes it no Route of ours)
            allowed = FINAL_CODES_SANITY | {403} | (extra & {483})
        if method == "REGISTER" and required_unknown(msg):
            # RFC 3261 §10.3 step 2: never saved; 420 (or 400 for other garbage),
            # after the credentials were checked (a 401, 403 first for broken ones)
            allowed = FINAL_CODES_SANITY | {420} | (extra & {483}) | challenge | ({403} if challenge else set())
        if may_drop:
            expect = Expect.MAY_DROP
        elif method == "ACK":
            expect = Expect.NO_REPLY
        else:
            expect = Expect.FINAL
        if kind == "REGISTER" and state == "intact" and all(label.startswith(SAFE_TO_CALL) for label in labels):
            registered.append(f"fz-reg{n}")
        name = f"{n:03d}-{transport}-{kind}-" + ("+".join(labels) or "control")
        name += "-nocreds" if state == "none" else ""
        out.append(Case(name, transport, msg, expect, allowed, may_drop, state))
    return out
