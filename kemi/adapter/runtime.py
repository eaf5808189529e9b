"""The thin KEMI layer shared by every role: start-up, message snapshots, replies.

This package is the only code that imports ``KSR``. It reads the message into
plain values, calls the pure core in ``outbound`` and carries the decision out.
"""

from __future__ import annotations

import functools
import os
import secrets
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import KSR  # provided by app_python3 inside Kamailio
import yaml

from outbound.config import Config, load_keys, parse_config
from outbound.decisions import Reply
from outbound.errors import ConfigError, OutboundError, SipSyntaxError
from outbound.metrics import REFUSALS
from outbound.sipmsg import Headers, bracket, is_digits
from outbound.tokens import Flow, FlowTokenCodec

from .names import ADDR_DEFINE, CONFIG_DEFINE, CONID_VAR, DEFINE_OVERRIDES, HDR_INDEX_VAR, PORT_DEFINE, TLS_PORT_DEFINE
from .observe import OBSERVER

# Kamailio's own view of the header fields we read (docs/parsing.md): $hdrc / $hdr
# match a known header by its type, so "v:" counts as Via, "m:" as Contact,
# "k:" as Supported. One $_s call gives every count, after $msg(hdrc): the
# number of header fields, null (written "<null>") when Kamailio's parser
# fails on any header of the message.
_READ_ORDER = ("via", "contact", "path", "route", "supported", "require", "expires")
# the same names as a set: the fields a second reading of the message compares
# (tests/integration/probe, the parser view)
WANTED_HEADERS = frozenset(_READ_ORDER)
_COUNTS = "$_s($msg(hdrc) " + " ".join(f"$hdrc({name})" for name in _READ_ORDER) + ")"
# $hdr(name)[i] with a literal index for the first fields (each spelling is one
# entry of Kamailio's pv cache); beyond, one spec with the index in a $var, so
# a message with thousands of Routes cannot fill the cache
_LITERAL_INDEXES = 16
_FIELD_SPECS = {name: tuple(f"$(hdr({name})[{i}])" for i in range(_LITERAL_INDEXES)) for name in _READ_ORDER}
_FIRST_FIELD = {name: specs[0] for name, specs in _FIELD_SPECS.items()}
_FIELD_BY_VAR = {name: f"$(hdr({name})[{HDR_INDEX_VAR}])" for name in _READ_ORDER}


def kamailio_fields() -> dict[str, list[str]]:
    """The bodies of each header field we read, by our name, as Kamailio's parser
    delimited them (LF or CRLF line ends, folding, compact forms: its rules, not
    a second parser's). Never the raw buffer, so a body is never decoded; a
    field we read that is not UTF-8 raises UnicodeDecodeError (answered 400)."""
    pv_get = KSR.pv.get
    all_fields, *counts = str(pv_get(_COUNTS)).split(" ")
    if not is_digits(all_fields):
        raise SipSyntaxError("Kamailio's parser cannot read every header field of the message")
    by_name: dict[str, list[str]] = {}
    for name, count in zip(_READ_ORDER, counts, strict=True):
        if count == "0":
            continue
        if count == "1":  # the common case, without a comprehension
            by_name[name] = [pv_get(_FIRST_FIELD[name]) or ""]
            continue
        specs = _FIELD_SPECS[name]
        total = int(count)  # Kamailio's count of fields: a small number
        bodies = [pv_get(spec) or "" for spec in specs[:total]]
        for index in range(_LITERAL_INDEXES, total):
            KSR.pv.seti(HDR_INDEX_VAR, index)
            bodies.append(pv_get(_FIELD_BY_VAR[name]) or "")
        by_name[name] = bodies
    return by_name


def define(name: str) -> str | None:
    """Value of a Kamailio cfg ``#!define`` (quotes removed), None when undefined."""
    value = KSR.kx.get_def(name)
    if value is None:
        return None
    value = str(value).strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value


@functools.lru_cache(maxsize=8)
def own_socket(transport: str) -> str:
    """This Kamailio's listen socket for ``transport`` ("udp:ADDR:PORT"), from
    the cfg defines KO_ADDR / KO_PORT / KO_TLS_PORT; "" when unknown. Forcing it
    ($fs) makes Kamailio bind a new TCP/TLS connection's source to the listen
    address too (tcp_main: a forced socket is the connection's local address),
    so peers that know us by address (outbound.relay) see that address. The
    defines do not change while Kamailio runs: read once per transport."""
    addr = define(ADDR_DEFINE)
    port = define(TLS_PORT_DEFINE) if transport == "tls" else define(PORT_DEFINE)
    if not addr or not port or transport not in ("udp", "tcp", "tls"):
        return ""
    return f"{transport}:{bracket(addr)}:{port}"


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


@dataclass(frozen=True, slots=True)
class Runtime:
    """Built once per process at mod_init: config, token codec."""

    config: Config
    codec: FlowTokenCodec | None


def bootstrap(role: str, *, needs_keys: bool) -> Runtime:
    """Load and validate cfg/outbound.yaml; raise (and so stop Kamailio) when invalid."""
    path = define(CONFIG_DEFINE) or os.environ.get(CONFIG_DEFINE) or ""
    try:
        if not path:
            raise ConfigError("(no file)", CONFIG_DEFINE,
                              f"define {CONFIG_DEFINE} (-A or environment) to the YAML path")
        try:
            data = yaml.safe_load(_read_text(path))
        except OSError as exc:
            raise ConfigError(path, "(file)", f"cannot read: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(path, "(syntax)", str(exc).replace("\n", " ")) from None
        overrides = {key: v for name, key in DEFINE_OVERRIDES.items() if (v := define(name))}
        config = parse_config(data, path, overrides)
        codec = FlowTokenCodec(load_keys(config, os.environ, _read_text)) if needs_keys else None
    except ConfigError as exc:
        KSR.err(f"kemi-outbound {role}: configuration error: {exc}\n")
        raise
    KSR.info(f"kemi-outbound {role}: configuration loaded from {path}\n")
    return Runtime(config, codec)


def dialog_keys(runtime: Runtime, role: str) -> tuple[bytes, ...]:
    """Keys for the Record-Route seal (outbound.relay.dialog_seal): the flow-token
    keys when configured (a farm shares them, so a dialog survives a restart),
    else one random key made at start (mod_init, before the workers fork)."""
    if runtime.codec is not None:
        return runtime.codec.keys
    config = runtime.config
    if config.keys_file or (config.keys_env and os.environ.get(config.keys_env)):
        try:
            return tuple(load_keys(config, os.environ, _read_text))
        except ConfigError as exc:
            KSR.err(f"kemi-outbound {role}: configuration error: {exc}\n")
            raise
    KSR.notice(f"kemi-outbound {role}: no flow-token key configured: Record-Route seals use a key of this "
               "start only (dialogs do not outlive a restart; set the same key on every registrar)\n")
    return (secrets.token_bytes(32),)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The parts of the current request the core reads."""

    method: str
    headers: Headers
    transport: str
    src_ip: str
    src_port: int
    rcv_ip: str
    rcv_port: int
    conn_id: int


# the last message this process read: one snapshot per message however many
# parts ask. Kamailio numbers the messages a process receives ($mi); tm's timer
# process runs failure routes on copies of other processes' requests, whose
# numbers may repeat, so the Call-ID is part of the key
_LAST_SNAPSHOT: list[tuple[object, Snapshot]] = []

# the key and the transport facts of a message in one pv call: the method and
# the addresses hold no space; the Call-ID goes last, so a space in it (a
# malformed one) stays inside it
_MESSAGE_FACTS = "$_s($mi $rm $pr $si $sp $Ri $Rp $conid $ci)"
_FACT_COUNT = 9


def snapshot() -> Snapshot:
    """The current message as the core reads it; read from Kamailio once per message."""
    facts = str(KSR.pv.get(_MESSAGE_FACTS)).split(" ", _FACT_COUNT - 1)
    message_id = (facts[0], facts[-1])
    if _LAST_SNAPSHOT and _LAST_SNAPSHOT[0][0] == message_id:
        return _LAST_SNAPSHOT[0][1]
    taken = _read_snapshot(facts)
    _LAST_SNAPSHOT[:] = [(message_id, taken)]
    return taken


def _read_snapshot(facts: list[str]) -> Snapshot:
    headers = Headers.from_kamailio(kamailio_fields())
    if len(facts) != _FACT_COUNT or not (is_digits(facts[4]) and is_digits(facts[6])):
        return _read_snapshot_by_call(headers)
    _, method, proto, src_ip, src_port, rcv_ip, rcv_port, conn_id, _ = facts
    return Snapshot(
        method=method,
        headers=headers,
        transport=proto.lower(),
        src_ip=src_ip,
        src_port=int(src_port),
        rcv_ip=rcv_ip,
        rcv_port=int(rcv_port),
        conn_id=int(conn_id) if is_digits(conn_id) else 0,
    )


def _read_snapshot_by_call(headers: Headers) -> Snapshot:
    """The same facts one KSR call each (a method Kamailio could not split on)."""
    conn_id = KSR.kx.get_conid()
    return Snapshot(
        method=KSR.kx.get_method(),
        headers=headers,
        transport=str(KSR.kx.get_proto()).lower(),
        src_ip=KSR.kx.get_srcip(),
        src_port=int(KSR.kx.get_srcport()),
        rcv_ip=KSR.kx.get_rcvip(),
        rcv_port=int(KSR.kx.get_rcvport()),
        conn_id=conn_id if isinstance(conn_id, int) and conn_id > 0 else 0,
    )


def send_reply(reply: Reply) -> None:
    """Send a core ``Reply`` (through tm when a transaction exists) and log why.
    An ACK is never answered (RFC 3261 §17.2.1, §16.7): it is dropped, and the
    log line says why."""
    if KSR.is_ACK():
        KSR.notice(f"kemi-outbound: ACK dropped, {reply.log}\n")
        return
    decided(reply)
    for header in reply.headers:
        KSR.hdr.append_to_reply(header + "\r\n")
    KSR.sl.send_reply(reply.code, reply.reason)


def decided(reply: Reply, toward: str = "") -> None:
    """The decision log line and counters of a reply of ours (adapter.observe),
    sent by us now or (``toward``, e.g. "the caller") through tm."""
    whom = toward or f"{KSR.kx.get_method()} from {KSR.kx.get_srcip()}:{KSR.kx.get_srcport()}"
    OBSERVER.decided(reply, f"{reply.code} {reply.reason} to {whom}: {reply.log}")


def t_reply(reply: Reply, toward: str) -> None:
    """Answer the transaction (a failure route, a relay that failed) with a reply of ours."""
    decided(reply, toward)
    KSR.tm.t_reply(reply.code, reply.reason)


Route = TypeVar("Route", bound=Callable[..., int])


# (connection id, peer address, port) already seen to match, in this process:
# ids are never reused while Kamailio runs, so a match stays true while the
# connection lives; bounded by clearing it
_PEER_CHECKED: set[tuple[int, str, int]] = set()
PEER_CHECKED_MAX = 4096


FLOW_ALIVE = ""


def stream_flow_state(flow: Flow) -> str:
    """``FLOW_ALIVE`` when the token's TCP/TLS connection is alive *and* still the
    one to the token's peer, else why not (a reason code: ``flow_closed``,
    ``flow_reused_connection``). Kamailio numbers connections from 1 again after
    a restart and sends by id alone, so a stale token's id may name another UA's
    connection by now (RFC 5626 §5.3.1: that flow is gone, 430)."""
    if KSR.tcpops.tcp_conid_state(flow.conn_id) <= 0:
        return "flow_closed"
    key = (flow.conn_id, flow.remote_ip, flow.remote_port)
    if key in _PEER_CHECKED:
        return FLOW_ALIVE
    # tcpops' tcp_get_conid has no KEMI export in 5.6: called by name
    KSR.x.modf("tcp_get_conid", f"{bracket(flow.remote_ip)}:{flow.remote_port}", CONID_VAR)
    if KSR.pv.get(CONID_VAR) != flow.conn_id:
        return "flow_reused_connection"
    if len(_PEER_CHECKED) >= PEER_CHECKED_MAX:
        _PEER_CHECKED.clear()
    _PEER_CHECKED.add(key)
    return FLOW_ALIVE


def stream_flow_alive(flow: Flow) -> bool:
    return stream_flow_state(flow) == FLOW_ALIVE


def guarded(route: Route) -> Route:
    """Turn any Python exception inside a route into a logged traceback and a
    500 reply (never silence, never a hung transaction)."""

    @functools.wraps(route)
    def wrapper(self: Any, msg: Any, *args: Any) -> int:
        try:
            return route(self, msg, *args)
        except SipSyntaxError as exc:
            _fail(exc.status, exc.reason, f"unparsable header: {exc}", KSR.notice, "unparsable_header")
        except OutboundError as exc:
            # any other refusal of the core answers with the status it carries
            _fail(exc.status, exc.reason, f"{type(exc).__name__}: {exc}", KSR.notice if exc.status < 500 else KSR.err,
                  "refused_by_core")
        except UnicodeDecodeError as exc:
            _fail(400, "Bad Request", f"a header field we read is not UTF-8: {exc}", KSR.notice, "not_utf8")
        except Exception:  # noqa: BLE001 - the last line of defence
            _fail(500, "Server Internal Error", "exception in route:\n" + traceback.format_exc(), KSR.err,
                  "internal_error")
        return 1

    return wrapper  # type: ignore[return-value]


def _fail(code: int, reason: str, why: str, log: Callable[[str], Any], cause: str) -> None:
    try:
        log(f"kemi-outbound: {code} {reason} to {KSR.kx.get_method()} from {KSR.kx.get_srcip()}: {why.rstrip()}\n")
        if KSR.is_ACK() or KSR.kx.get_msgtype() != 1:
            return
        OBSERVER.count(REFUSALS, str(code), cause)
        KSR.sl.send_reply(code, reason)
    except Exception:  # noqa: BLE001
        KSR.err("kemi-outbound: could not send the error reply:\n" + traceback.format_exc())


class InjectedFault(RuntimeError):
    """Raised on purpose by the test hook ``testing.fault_injection_header``."""


def check_fault_injection(runtime: Runtime) -> None:
    """Test hook (off unless configured): a request carrying the configured
    header raises inside the route, to prove exceptions end in a 500."""
    name = runtime.config.fault_injection_header
    if name and KSR.hdr.is_present(name) > 0:
        raise InjectedFault(f"fault injected by header {name}")
