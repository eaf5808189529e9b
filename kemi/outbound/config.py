"""The Python-side tunables (cfg/outbound.yaml), validated once at start.

Every error names the key and the file so an operator can fix it without
reading code. Parsing is pure: the YAML text, the environment and the file
reader are passed in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, SipSyntaxError
from .sipmsg import SipUri
from .tokens import parse_key
from .websocket import canonical_origin


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """Locating servers by DNS (RFC 3263, RFC 2782): section ``dns``. See docs/dns.md."""

    nameservers: tuple[str, ...] = ()  # empty: the servers of /etc/resolv.conf
    port: int = 53
    timeout_ms: int = 2000  # all DNS time for one request; a worker never waits longer
    attempt_ms: int = 1000  # one query to one server
    transports: tuple[str, ...] = ("udp", "tcp")  # what Kamailio listens on, preferred first
    families: tuple[str, ...] = ("ipv4", "ipv6")  # kept only if Kamailio listens on them
    max_targets: int = 8
    cache_entries: int = 1024  # per worker process
    max_ttl: int = 3600
    negative_ttl: int = 60  # NXDOMAIN / no data: SOA minimum, at most this (RFC 2308)
    failure_ttl: int = 5  # SERVFAIL / timeout remembered this long
    branch_timeout_ms: int = 4000  # no reply at all from a target in this time: next target
    peers: tuple[str, ...] = ()  # SIP URIs of trusted peer farms (edge: the registrar farm)
    hold_down: int = 30  # a failed target is tried last for this long (s): timeout, transport error, bare 503
    max_hold_down: int = 300  # cap on any hold-down, a 503's Retry-After included (s); 0: no memory
    hold_down_entries: int = 64  # failed targets remembered at most


DNS_TRANSPORTS = ("udp", "tcp", "tls", "sctp")
DNS_FAMILIES = ("ipv4", "ipv6")


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    keys_env: str
    keys_file: str
    registrar_uri: str
    force_outbound: bool
    location_table: str
    default_expires: int
    flow_timer: int
    fault_injection_header: str
    max_parallel_branches: int = 8
    first_reply_timeout_ms: int = 2000
    flow_reply_timeout_ms: int = 5000
    keepalive_grace_seconds: int = 20
    dns: DnsConfig = DnsConfig()
    trusted_edges: tuple[str, ...] = ()  # registrar: where a Path may come from (empty: the edge it names)
    max_contacts: int = 10  # bindings per AOR (auth.max_contacts); 0: no limit
    trusted_peers: tuple[str, ...] = ()  # core peers whose requests are not challenged (auth.trusted_peers)
    replication_peers: tuple[str, ...] = ()  # registrar: more DMQ nodes beside KO_DMQ_PEER (WITH_DMQ)
    ws_allowed_origins: tuple[str, ...] = ()  # WebSocket handshake: canonical origins (empty: any)


_SCHEMA: dict[str, dict[str, type]] = {
    "flow_tokens": {"keys_env": str, "keys_file": str},
    "edge": {"registrar": str, "force_outbound": bool, "flow_reply_timeout_ms": int},
    "home": {"max_parallel_branches": int, "first_reply_timeout_ms": int},
    "registrar": {"location_table": str, "default_expires": int, "flow_timer": int, "trusted_edges": list,
                  "replication_peers": list},
    "testing": {"fault_injection_header": str},
    "auth": {"max_contacts": int, "trusted_peers": list},
    "keepalive": {"grace_seconds": int},
    "websocket": {"allowed_origins": list},
    "dns": {
        "nameservers": list, "port": int, "timeout_ms": int, "attempt_ms": int, "transports": list,
        "families": list, "max_targets": int, "cache_entries": int, "max_ttl": int, "negative_ttl": int,
        "failure_ttl": int, "branch_timeout_ms": int, "peers": list, "hold_down": int, "max_hold_down": int,
        "hold_down_entries": int,
    },
}

DEFAULTS: dict[str, dict[str, Any]] = {
    "flow_tokens": {"keys_env": "KO_FLOW_KEYS", "keys_file": ""},
    "edge": {"registrar": "", "force_outbound": False, "flow_reply_timeout_ms": 5000},
    "home": {"max_parallel_branches": 8, "first_reply_timeout_ms": 2000},
    "registrar": {"location_table": "location", "default_expires": 3600, "flow_timer": 25, "trusted_edges": [],
                  "replication_peers": []},
    "testing": {"fault_injection_header": ""},
    "auth": {"max_contacts": 10, "trusted_peers": []},
    "keepalive": {"grace_seconds": 20},
    "websocket": {"allowed_origins": []},
    "dns": {
        "nameservers": [], "port": 53, "timeout_ms": 2000, "attempt_ms": 1000, "transports": ["udp", "tcp"],
        "families": ["ipv4", "ipv6"], "max_targets": 8, "cache_entries": 1024, "max_ttl": 3600,
        "negative_ttl": 60, "failure_ttl": 5, "branch_timeout_ms": 4000, "peers": [], "hold_down": 30,
        "max_hold_down": 300, "hold_down_entries": 64,
    },
}


def parse_config(data: object, source: str, overrides: Mapping[str, str] | None = None) -> Config:
    """Validate the YAML document ``data``; ``overrides`` ("section.key" -> text)
    come from Kamailio cfg defines and win over the file."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, "(top level)", "must be a mapping of sections")
    merged: dict[str, dict[str, Any]] = {}
    for section, value in data.items():
        if section not in _SCHEMA:
            raise ConfigError(source, str(section), f"unknown section (known: {', '.join(_SCHEMA)})")
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(source, section, "must be a mapping")
        for key, item in value.items():
            expected = _SCHEMA[section].get(key)
            if expected is None:
                raise ConfigError(source, f"{section}.{key}", "unknown key")
            if not _is_type(item, expected):
                raise ConfigError(source, f"{section}.{key}", f"must be {expected.__name__}, got {item!r}")
        merged[section] = dict(value)
    values = {s: {**DEFAULTS[s], **merged.get(s, {})} for s in _SCHEMA}
    for dotted, text in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        expected = _SCHEMA.get(section, {}).get(key)
        if expected is None:
            raise ConfigError(source, dotted, "unknown override key")
        values[section][key] = _coerce(text, expected, source, dotted)
    return _build(values, source)


def _is_type(item: object, expected: type) -> bool:
    if expected is int:
        return isinstance(item, int) and not isinstance(item, bool)
    return isinstance(item, expected)


def _coerce(text: str, expected: type, source: str, key: str) -> Any:
    if expected is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "yes", "true", "on"):
            return True
        if lowered in ("0", "no", "false", "off"):
            return False
        raise ConfigError(source, key, f"not a boolean: {text!r}")
    if expected is int:
        try:
            return int(text.strip())
        except ValueError:
            raise ConfigError(source, key, f"not an integer: {text!r}") from None
    return text


def _build(values: dict[str, dict[str, Any]], source: str) -> Config:
    registrar = values["edge"]["registrar"]
    if registrar:
        try:
            SipUri.parse(registrar)
        except SipSyntaxError as exc:
            raise ConfigError(source, "edge.registrar", str(exc)) from None
    expires = values["registrar"]["default_expires"]
    if not 0 < expires <= 2**31:
        raise ConfigError(source, "registrar.default_expires", "must be a positive number of seconds")
    flow_timer = values["registrar"]["flow_timer"]
    if not 0 <= flow_timer <= 999:
        raise ConfigError(source, "registrar.flow_timer", "must be 0 (off) to 999 seconds")
    table = values["registrar"]["location_table"]
    if not table.isidentifier():
        raise ConfigError(source, "registrar.location_table", f"not a table name: {table!r}")
    parallel = values["home"]["max_parallel_branches"]
    if not 1 <= parallel <= 11:
        raise ConfigError(source, "home.max_parallel_branches", "must be 1..11 (Kamailio forks at most 12 branches)")
    for section, key in (("home", "first_reply_timeout_ms"), ("edge", "flow_reply_timeout_ms")):
        if not 0 <= values[section][key] <= 120_000:
            raise ConfigError(source, f"{section}.{key}", "must be 0 (Kamailio default) to 120000 ms")
    grace = values["keepalive"]["grace_seconds"]
    if not 1 <= grace <= 3600:
        raise ConfigError(source, "keepalive.grace_seconds", "must be 1..3600 seconds")
    return Config(
        source=source,
        keys_env=values["flow_tokens"]["keys_env"],
        keys_file=values["flow_tokens"]["keys_file"],
        registrar_uri=registrar,
        force_outbound=values["edge"]["force_outbound"],
        location_table=table,
        default_expires=expires,
        flow_timer=flow_timer,
        fault_injection_header=values["testing"]["fault_injection_header"].strip().lower(),
        max_parallel_branches=parallel,
        first_reply_timeout_ms=values["home"]["first_reply_timeout_ms"],
        flow_reply_timeout_ms=values["edge"]["flow_reply_timeout_ms"],
        keepalive_grace_seconds=grace,
        dns=_build_dns(values["dns"], source),
        trusted_edges=tuple(_peer_uri(item, source, "registrar.trusted_edges")
                            for item in values["registrar"]["trusted_edges"]),
        max_contacts=_max_contacts(values["auth"]["max_contacts"], source),
        trusted_peers=tuple(_peer_uri(item, source, "auth.trusted_peers") for item in values["auth"]["trusted_peers"]),
        replication_peers=tuple(_peer_uri(item, source, "registrar.replication_peers")
                                for item in values["registrar"]["replication_peers"]),
        ws_allowed_origins=_origins(values["websocket"]["allowed_origins"], source),
    )


def _origins(items: list, source: str) -> tuple[str, ...]:
    """websocket.allowed_origins: each ``http(s)://host[:port]`` (RFC 6454),
    kept in its canonical spelling (outbound.websocket.canonical_origin)."""
    found = []
    for item in items:
        origin = canonical_origin(item) if isinstance(item, str) else None
        if origin is None:
            raise ConfigError(source, "websocket.allowed_origins",
                              f"{item!r} is no origin: write scheme://host[:port], e.g. https://phone.example.com")
        found.append(origin)
    return tuple(dict.fromkeys(found))


def _max_contacts(value: int, source: str) -> int:
    if not 0 <= value <= 1000:
        raise ConfigError(source, "auth.max_contacts", f"must be 0 (no limit) to 1000, got {value}")
    return value


def _int_in(values: dict[str, Any], source: str, key: str, low: int, high: int, unit: str = "") -> int:
    value = values[key]
    if not low <= value <= high:
        raise ConfigError(source, f"dns.{key}", f"must be {low} to {high}{unit}, got {value}")
    return value


def _names(values: dict[str, Any], source: str, key: str, known: tuple[str, ...]) -> tuple[str, ...]:
    items = values[key]
    if not items or not all(isinstance(i, str) for i in items):
        raise ConfigError(source, f"dns.{key}", f"must be a non-empty list of {', '.join(known)}")
    names = tuple(i.strip().lower() for i in items)
    for name in names:
        if name not in known:
            raise ConfigError(source, f"dns.{key}", f"unknown {name!r} (known: {', '.join(known)})")
    if len(set(names)) != len(names):
        raise ConfigError(source, f"dns.{key}", "lists a value twice")
    return names


def _peer_uri(item: object, source: str, key: str = "dns.peers") -> str:
    """A peer is a SIP URI or a bare domain or address (taken as sip:domain)."""
    if not isinstance(item, str) or not item.strip():
        raise ConfigError(source, key, f"each entry must be a SIP URI, a domain or an address, got {item!r}")
    uri = item.strip()
    if not uri.lower().startswith(("sip:", "sips:")):
        uri = "sip:" + uri
    try:
        SipUri.parse(uri)
    except SipSyntaxError as exc:
        raise ConfigError(source, key, f"{item!r}: {exc}") from None
    return uri


def _build_dns(values: dict[str, Any], source: str) -> DnsConfig:
    servers = values["nameservers"]
    for server in servers:
        try:
            ipaddress.ip_address(server if isinstance(server, str) else "")
        except ValueError:
            raise ConfigError(source, "dns.nameservers", f"not an IP address: {server!r}") from None
    timeout_ms = _int_in(values, source, "timeout_ms", 1, 30000, " ms")
    max_hold_down = _int_in(values, source, "max_hold_down", 0, 86400, " s")
    return DnsConfig(
        nameservers=tuple(servers),
        port=_int_in(values, source, "port", 1, 65535),
        timeout_ms=timeout_ms,
        attempt_ms=_int_in(values, source, "attempt_ms", 1, timeout_ms, " ms (at most dns.timeout_ms)"),
        transports=_names(values, source, "transports", DNS_TRANSPORTS),
        families=_names(values, source, "families", DNS_FAMILIES),
        max_targets=_int_in(values, source, "max_targets", 1, 64),
        cache_entries=_int_in(values, source, "cache_entries", 0, 1_000_000),
        max_ttl=_int_in(values, source, "max_ttl", 0, 7 * 86400, " s"),
        negative_ttl=_int_in(values, source, "negative_ttl", 0, 86400, " s"),
        failure_ttl=_int_in(values, source, "failure_ttl", 0, 3600, " s"),
        # below RFC 3261 Timer F (32 s), or the caller gives up before the next target is tried
        branch_timeout_ms=_int_in(values, source, "branch_timeout_ms", 100, 31000, " ms"),
        peers=tuple(_peer_uri(item, source) for item in values["peers"]),
        hold_down=_int_in(values, source, "hold_down", 0, max_hold_down, " s (at most dns.max_hold_down)"),
        max_hold_down=max_hold_down,
        hold_down_entries=_int_in(values, source, "hold_down_entries", 1, 4096),
    )


def load_keys(
    config: Config, environ: Mapping[str, str], read_text: Callable[[str], str]
) -> list[bytes]:
    """Flow-token keys: the file (one key per line, ``#`` comments) and/or the
    environment variable (comma-separated), file first. The first key signs;
    all verify. Each key is ``hex:`` or ``base64:`` with at least 32 random
    bytes (``tokens.parse_key``); a bad one is a ConfigError naming its source
    and line or entry, never quoting it. There is no built-in default: without
    a key the edge refuses to start."""
    texts: list[tuple[str, str, str]] = []  # (YAML key, where, text)
    if config.keys_file:
        try:
            content = read_text(config.keys_file)
        except OSError as exc:
            problem = f"cannot read {config.keys_file}: {exc}"
            raise ConfigError(config.source, "flow_tokens.keys_file", problem) from None
        texts += [("flow_tokens.keys_file", f"line {number} of {config.keys_file}", line)
                  for number, line in enumerate(content.splitlines(), 1)]
    if config.keys_env and environ.get(config.keys_env):
        texts += [("flow_tokens.keys_env", f"entry {number} of ${config.keys_env}", part)
                  for number, part in enumerate(environ[config.keys_env].split(","), 1)]
    keys: list[bytes] = []
    for key_name, where, text in texts:
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        try:
            keys.append(parse_key(text))
        except ValueError as exc:
            raise ConfigError(config.source, key_name, f"{where}: {exc}") from None
    if not keys:
        raise ConfigError(
            config.source, "flow_tokens",
            f"no key: set ${config.keys_env or 'KO_FLOW_KEYS'} or flow_tokens.keys_file",
        )
    return keys
