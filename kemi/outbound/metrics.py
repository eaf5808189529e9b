"""What kemi-outbound counts, and the stable reason codes of its decisions.

The operator's view (docs/operations.md "Metrics, RPC views and decision logs"):
every metric the Python side exports through Kamailio's xhttp_prom module,
with its type, labels and meaning, and the reason code (``cause``) that every
refusal and every path-changing decision carries into its log line and its
counter. The cfg files declare the same metrics (cfg/metrics.cfg, checked by
tests/unit/test_metrics_catalogue.py); the adapter (adapter.observe) counts.

Names follow Prometheus' conventions: ``kemi_outbound_`` prefix, ``_total``
for counters, base units. Kamailio's own statistics (core, tm, sl, usrloc,
tcp, websocket, ...) are exported beside them under their group names.
"""

from __future__ import annotations

from dataclasses import dataclass

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
EDGE, REGISTRAR, SINGLE = "edge", "registrar", "single"
FIRST_HOPS = (EDGE, SINGLE)  # the roles that hold device flows
HOMES = (REGISTRAR, SINGLE)  # the roles that are home proxies and registrars


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    kind: str
    labels: tuple[str, ...]
    roles: tuple[str, ...]
    meaning: str
    buckets: tuple[float, ...] = ()

    def declaration(self) -> str:
        """The xhttp_prom modparam value that declares it (prom_counter / prom_gauge / prom_histogram)."""
        text = f"name={self.name};"
        if self.labels:
            text += f" label={':'.join(self.labels)};"
        if self.buckets:
            text += f" buckets={':'.join(f'{b:g}' for b in self.buckets)};"
        return text


FLOW_TOKENS = Metric(
    "kemi_outbound_flow_tokens_total", COUNTER, ("transport", "where"), FIRST_HOPS,
    "flow tokens issued (RFC 5626 §5.1, §5.3.2): `where` is `path` (a REGISTER's Path) or `record_route`")
REFUSALS = Metric(
    "kemi_outbound_refusals_total", COUNTER, ("code", "cause"), (EDGE, REGISTRAR, SINGLE),
    "requests our routes refused or ended with a final answer of their own, by status code and reason code "
    "(the decision log line says the same)")
FORGED_TOKENS = Metric(
    "kemi_outbound_forged_tokens_total", COUNTER, ("cause",), FIRST_HOPS,
    "requests refused 403 for their flow token: `forged_token` (bad MAC), `damaged_token` (unreadable), "
    "`replayed_token` (a token from outside the farm), `token_from_device` (a device presenting one)")
FLOWS_GONE = Metric(
    "kemi_outbound_flows_gone_total", COUNTER, ("cause",), FIRST_HOPS,
    "430 Flow Failed sent (RFC 5626 §5.3.1; toward an endpoint in a dialog it goes out as 408, §11.5): "
    "`closed` (the connection is gone), `reused_connection` (its id "
    "names another peer's connection now), `no_reply` (no answer over the flow), `not_here` (not a socket of ours)")
FLOW_FAILOVERS = Metric(
    "kemi_outbound_flow_failovers_total", COUNTER, ("cause",), HOMES,
    "a home proxy gave up on one flow of an instance and tried the next (RFC 5626 §7): `430`, `408_local` "
    "(no first reply within home.first_reply_timeout_ms), `503_local` (could not send)")
CALLS_UNREACHABLE = Metric(
    "kemi_outbound_calls_unreachable_total", COUNTER, (), HOMES,
    "callers answered 480 because every flow of the callee failed (none left to try)")
CALL_BRANCHES = Metric(
    "kemi_outbound_call_branches", HISTOGRAM, (), HOMES,
    "branches (one per instance, RFC 5626 §7) of each call's first wave", buckets=(1, 2, 3, 4, 6, 8, 16))
REGISTRAR_FAILOVERS = Metric(
    "kemi_outbound_registrar_failovers_total", COUNTER, ("cause",), (EDGE,),
    "an edge moved a request to the next registrar target (RFC 3263 §4.3): `503`, `timeout`, `transport_error`")
HOLD_DOWNS = Metric(
    "kemi_outbound_hold_downs_total", COUNTER, (), (EDGE, REGISTRAR, SINGLE),
    "a failed next-hop target was put in hold-down, tried last by later requests (docs/dns.md)")
AUTH_FAILURES = Metric(
    "kemi_outbound_auth_failures_total", COUNTER, ("cause",), HOMES,
    "digest authentication refusals: `auth_failed` (wrong credentials), `auth_bad_header`, `auth_wrong_aor` "
    "(another user's AOR), `auth_too_many_contacts` (challenges are not failures and are not counted)")
RELAY_REFUSALS = Metric(
    "kemi_outbound_relay_refusals_total", COUNTER, ("cause",), (EDGE, REGISTRAR, SINGLE),
    "requests refused because they would make us an open relay (docs/security.md): a Route set past us, "
    "an in-dialog request without our seal, a Path from a stranger, a KDMQ from outside the pair")
FLOWS = Metric(
    "kemi_outbound_flows", GAUGE, ("transport",), FIRST_HOPS,
    "TCP/TLS/WS connections holding at least one outbound registration now (edge: a REGISTER with a flow "
    "token answered 2xx over it; single server: the connections it watches); UDP flows are not counted")
BINDINGS = Metric(
    "kemi_outbound_bindings", GAUGE, (), HOMES,
    "bindings in the location table now (usrloc's statistic `location_contacts`: outbound or not)")

CATALOGUE: tuple[Metric, ...] = (
    FLOW_TOKENS, REFUSALS, FORGED_TOKENS, FLOWS_GONE, FLOW_FAILOVERS, CALLS_UNREACHABLE, CALL_BRANCHES,
    REGISTRAR_FAILOVERS, HOLD_DOWNS, AUTH_FAILURES, RELAY_REFUSALS, FLOWS, BINDINGS)

# ----- reason codes (Reply.cause) and the family counter each one also counts in ---

FORGED_CAUSES = frozenset({"forged_token", "damaged_token", "replayed_token", "token_from_device"})
FLOW_GONE_CAUSES = {"flow_closed": "closed", "flow_reused_connection": "reused_connection",
                    "flow_no_reply": "no_reply", "flow_not_here": "not_here"}
AUTH_CAUSES = frozenset({"auth_failed", "auth_bad_header", "auth_wrong_aor", "auth_too_many_contacts"})
RELAY_CAUSES = frozenset({"relay_route_past_us", "relay_unsealed_dialog", "relay_not_farm", "relay_untrusted_path",
                          "relay_kdmq_stranger", "relay_too_many_aors"})
UNREACHABLE_CAUSES = frozenset({"all_flows_failed", "no_usable_flow"})


def family_counts(cause: str) -> tuple[tuple[Metric, tuple[str, ...]], ...]:
    """The family counters (and their label values) a refusal with ``cause``
    counts in besides ``kemi_outbound_refusals_total``: one rule, one place."""
    if cause in FORGED_CAUSES:
        return ((FORGED_TOKENS, (cause,)),)
    if cause in FLOW_GONE_CAUSES:
        return ((FLOWS_GONE, (FLOW_GONE_CAUSES[cause],)),)
    if cause in AUTH_CAUSES:
        return ((AUTH_FAILURES, (cause,)),)
    if cause in RELAY_CAUSES:
        return ((RELAY_REFUSALS, (cause,)),)
    if cause in UNREACHABLE_CAUSES:
        return ((CALLS_UNREACHABLE, ()),)
    return ()


def decision_line(cause: str, code: int, call_id: str, detail: str) -> str:
    """The decision log line (docs/operations.md): stable key=value fields first,
    the free text last, so that ``grep decision=flow_closed`` finds every one."""
    return f"kemi-outbound decision={cause or 'unnamed'} code={code} call-id={call_id or '-'} {detail}".rstrip()


# ----- JSON-RPC over the metrics socket ---------------------------------------------

# What POST /RPC on the metrics socket may call: views, never a change (kamcmd on
# the local datagram socket stays the way to change things)
RPC_READ_ONLY = frozenset({
    "ul.dump", "ul.lookup", "htable.dump", "htable.get", "htable.stats", "htable.listTables",
    "core.uptime", "core.version", "core.tcp_info", "core.tcp_list", "core.sockets_list", "core.ps",
    "stats.get_statistics", "stats.fetch", "dmq.list_nodes", "tm.stats", "pkg.stats", "mod.stats", "system.listMethods",
})


def rpc_refusal(method: str, allowed: frozenset[str]) -> str | None:
    """Why a JSON-RPC request over HTTP is refused, or None to dispatch it."""
    if not method:
        return "not a JSON-RPC request with a method"
    if method not in allowed:
        return f"{method[:60]!r} is not a read-only view (use kamcmd on the local socket)"
    return None


def cfg_declarations() -> str:
    """cfg/metrics.cfg: the xhttp_prom declarations of CATALOGUE, which every role's
    cfg includes (tests/unit/test_metrics_catalogue.py keeps the file equal to this)."""
    kinds = {COUNTER: "prom_counter", GAUGE: "prom_gauge", HISTOGRAM: "prom_histogram"}
    lines = ["# kemi-outbound's metrics for xhttp_prom, included by cfg/edge.cfg, registrar.cfg, single.cfg",
             "# (unless WITH_NOMETRICS). Written from kemi/outbound/metrics.py (CATALOGUE): change it there and",
             "# run: python3 -c 'import sys; sys.path.insert(0, \"kemi\"); from outbound.metrics import "
             "cfg_declarations as c; print(c(), end=\"\")' > cfg/metrics.cfg",
             "# A metric appears in /metrics once it is first counted (docs/operations.md)."]
    lines += [f'modparam("xhttp_prom", "{kinds[m.kind]}", "{m.declaration()}")' for m in CATALOGUE]
    return "\n".join(lines) + "\n"
