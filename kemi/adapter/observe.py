"""What an operator sees: counters and gauges for Prometheus, decision log lines,
the metrics socket's HTTP answers (docs/operations.md "Metrics, RPC views and
decision logs").

The metrics are Kamailio's xhttp_prom metrics in shared memory, so every
worker counts into the same numbers; the catalogue (names, labels, what each
means) is outbound.metrics, declared in cfg/metrics.cfg. With
``-A WITH_NOMETRICS`` (or without xhttp_prom) counting is a no-op and the
decision log lines remain.

The metrics socket (KO_METRICS_ADDR:KO_METRICS_PORT, TCP) answers HTTP only:
``GET /metrics`` (the gauges are read first) and ``POST /RPC`` (Kamailio's
JSON-RPC, the read-only methods of outbound.metrics.RPC_READ_ONLY only).
"""

from __future__ import annotations

import json

import KSR

from outbound.decisions import Reply
from outbound.metrics import (
    BINDINGS,
    FLOWS,
    RPC_READ_ONLY,
    Metric,
    decision_line,
    family_counts,
    rpc_refusal,
)
from outbound.metrics import REFUSALS as REFUSALS_METRIC

from .names import FLOWS_TABLE, METRICS_ADDR_DEFINE, METRICS_PORT_DEFINE, NOMETRICS_SWITCH

TRANSPORTS = ("tcp", "tls", "ws", "wss")  # the connections ko_flows books (UDP flows are not)


def _define(name: str) -> str:
    value = KSR.kx.get_def(name)
    return str(value).strip().strip('"') if value is not None else ""


class Observer:
    """Counts into xhttp_prom and writes the decision log (one per process)."""

    def __init__(self) -> None:
        self._on: bool | None = None
        self._socket: tuple[str, int] | None = None

    @property
    def on(self) -> bool:
        if self._on is None:
            self._on = hasattr(KSR, "xhttp_prom") and not KSR.kx.ifdef(NOMETRICS_SWITCH)
        return self._on

    def count(self, metric: Metric, *labels: str, by: int = 1) -> None:
        if not self.on:
            return
        prom = KSR.xhttp_prom
        # xhttp_prom refuses an empty label value: "none" instead
        if not labels:
            prom.counter_inc_l0(metric.name, by)
        elif len(labels) == 1:
            prom.counter_inc_l1(metric.name, by, labels[0] or "none")
        else:
            prom.counter_inc_l2(metric.name, by, labels[0] or "none", labels[1] or "none")

    def observe(self, metric: Metric, value: float) -> None:
        if self.on:
            KSR.xhttp_prom.histogram_observe_l0(metric.name, str(value))

    def decided(self, reply: Reply, detail: str) -> None:
        """A refusal or final answer of ours: its decision log line, its counters."""
        KSR.notice(decision_line(reply.cause, reply.code, KSR.kx.get_callid(), detail) + "\n")
        if not self.on:
            return
        cause = reply.cause or "unnamed"
        self.count(REFUSALS_METRIC, str(reply.code), cause)
        for metric, labels in family_counts(cause):
            self.count(metric, *labels)

    def event(self, cause: str, metric: Metric | None, labels: tuple[str, ...], detail: str) -> None:
        """A decision that changes a call's path without answering it (a flow
        failover, a registrar failover, a hold-down): its log line and counter."""
        KSR.notice(decision_line(cause, 0, KSR.kx.get_callid(), detail) + "\n")
        if metric is not None:
            self.count(metric, *labels)

    # ----- the metrics socket -------------------------------------------------

    def metrics_socket(self) -> tuple[str, int]:
        if self._socket is None:
            port = _define(METRICS_PORT_DEFINE)
            self._socket = (_define(METRICS_ADDR_DEFINE), int(port) if port.isdigit() else 0)
        return self._socket

    def http_request(self, *, flows: bool, bindings: str) -> bool:
        """xhttp event: True when the request came to the metrics socket and was
        answered here (``flows``: the flows gauge; ``bindings``: the usrloc table
        whose size is the bindings gauge, "" for none)."""
        addr, port = self.metrics_socket()
        if not self.on or not port or int(KSR.kx.get_rcvport()) != port or KSR.kx.get_rcvip() != addr:
            return False
        path = str(KSR.pv.get("$hu") or "").split("?", 1)[0]
        if path == "/metrics":
            self._set_gauges(flows=flows, bindings=bindings)
            KSR.xhttp_prom.dispatch()
        elif path == "/RPC":
            self._rpc()
        else:
            KSR.xhttp.xhttp_reply(404, "Not Found", "text/plain", "only /metrics and /RPC here\n")
        return True

    def _set_gauges(self, *, flows: bool, bindings: str) -> None:
        prom = KSR.xhttp_prom
        if flows:
            for transport in TRANSPORTS:
                count = KSR.pv.get(f"$shtcn({FLOWS_TABLE}=>%~{transport}:)") or 0
                prom.gauge_set_l1(FLOWS.name, str(count), transport)
        if bindings:
            # usrloc's per-table statistic "<table>_contacts"
            prom.gauge_set_l0(BINDINGS.name, str(KSR.pv.get(f"$stat({bindings}_contacts)") or 0))

    def _rpc(self) -> None:
        body = str(KSR.pv.get("$rb") or "")
        try:
            method = json.loads(body).get("method", "") if body else ""
        except (ValueError, AttributeError):
            method = ""
        refusal = rpc_refusal(method if isinstance(method, str) else "", RPC_READ_ONLY)
        if refusal is not None:
            KSR.notice(f"kemi-outbound: RPC over HTTP from {KSR.kx.get_srcip()} refused: {refusal}\n")
            KSR.xhttp.xhttp_reply(403, "Forbidden", "text/plain", refusal + "\n")
            return
        KSR.jsonrpcs.dispatch()


OBSERVER = Observer()
