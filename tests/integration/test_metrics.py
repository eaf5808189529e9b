"""Metrics and decision logs after a scripted story (issue 16).

Each role's /metrics (xhttp_prom on the metrics socket, KO_METRICS_ADDR:9090) is
scraped before and after a story and must show exactly the increments the
story makes (kemi/outbound/metrics.py, CATALOGUE: names, labels, meanings),
read by tests/prom.py (prometheus_client and a strict reader of the text
format, which must agree). A metric never counted is absent: absent is 0.
Every decision that changes a call's path writes one log line
``kemi-outbound decision=<cause> code=<code> call-id=<Call-ID>``.

The farm: registrar B of farm.ko.test on net(22) (tests/dns/ko.test.zone:
SRV priority 10 reg-a on net(21), where nothing listens, then reg-b), two edges
toward sip:farm.ko.test asking the test nsd: each edge's first request times
out at reg-a (a registrar failover, a hold-down) and goes on to reg-b.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from actors import instance, ob_params, start_callee, wait_bindings, wait_until
from dns_setup import dns_yaml
from harness import Kamailio, SippResult, describe, sipp
from nsd import Nsd
from outbound.metrics import CALL_BRANCHES
from outbound.sipmsg import parse_name_addr
from prom import delta, key, scrape
from topology import farm_with_two_edges, net, registrar, single, start, stop, subscriber, two_edges

REG_B = net(22)  # reg-b.ko.test; reg-a.ko.test (net(21)), tried first, is dead
FARM = "sip:farm.ko.test"
NSD_VALUES = {"MOVING": REG_B}
UA_DEVICE = net(71)
UA_CALLER = net(72)
UA_DIRECT = net(73)
PREFIX = "kemi_outbound_"
HOLD_DOWN = 300  # long enough that reg-a stays held down for the whole story


@pytest.fixture(scope="module")
def farm(workdir: Path, nsd: Nsd) -> Iterator[dict[str, Kamailio]]:
    reg = registrar(workdir, name="metrics-reg", addr=REG_B)
    edges = two_edges(workdir, FARM, yaml_text=dns_yaml(hold_down=HOLD_DOWN))
    for n, kam in edges.items():
        kam.name = f"metrics-edge{n}"
    yield from farm_with_two_edges(workdir, reg, edges)


class Scrapes:
    """Scrapes of several Kamailios: ``mark()`` takes the "before", ``changes()``
    what each counted since (kemi_outbound_ metrics only, absent = 0)."""

    def __init__(self, kams: dict[str, Kamailio]) -> None:
        self.kams = kams
        self.before: dict[str, dict] = {}

    def now(self, name: str) -> dict:
        return scrape(self.kams[name].metrics_url())

    def mark(self) -> None:
        self.before = {name: self.now(name) for name in self.kams}

    def changes(self, name: str) -> dict:
        return delta(self.before[name], self.now(name), PREFIX)

    def value(self, name: str, metric: str, **labels: str) -> float:
        return self.now(name).get(key(metric, **labels), 0.0)


def k(metric: str, **labels: str):
    """The key of a kemi_outbound_ sample."""
    return key(PREFIX + metric, **labels)


def histogram(metric: str, observed: list[float], buckets: tuple[float, ...]) -> dict:
    """The sample deltas of a histogram after ``observed`` (xhttp_prom writes le="1.000000")."""
    out = {k(f"{metric}_bucket", le=f"{b:f}"): float(sum(v <= b for v in observed)) for b in buckets}
    out[k(f"{metric}_bucket", le="+Inf")] = float(len(observed))
    out[k(f"{metric}_count")] = float(len(observed))
    out[k(f"{metric}_sum")] = float(sum(observed))
    return {name: value for name, value in out.items() if value}


DECISION = re.compile(r"kemi-outbound decision=(\S+) code=(\d+) call-id=(\S+)")


def decisions(kam: Kamailio, call_id_prefix: str = "metrics-") -> list[tuple[str, int, str]]:
    """The decision log lines of ``kam`` as (cause, code, Call-ID up to its "-<n>@" part),
    those of the story's own Call-IDs (SIPp -cid_str ``metrics-<what>-...``) in log order."""
    found = []
    for line in kam.log().splitlines():
        match = DECISION.search(line)
        if match is None:
            continue
        cause, code, call_id = match.group(1), int(match.group(2)), match.group(3)
        assert call_id.startswith(call_id_prefix), f"a decision with a Call-ID not of the story: {line}"
        found.append((cause, code, call_id.split("-")[1]))
    return found


@contextmanager
def explained(kams: dict[str, Kamailio], *runs: list) -> Iterator[None]:
    """A failing assertion also shows the Kamailio logs and the SIPp runs (SippRun or
    SippResult) in the lists ``runs``, as they are then."""
    try:
        yield
    except AssertionError as failure:
        text = "\n".join(f"--- {name} log ---\n{kam.log()[-8000:]}" for name, kam in kams.items())
        for run in (run for group in runs for run in group):
            text += "\n" + describe(run if isinstance(run, SippResult) else run.wait(0 if run.alive else 5))
        raise AssertionError(f"{failure}\n{text}") from failure


def caller(runs: list, kam: Kamailio, workdir: Path, port: int, what: str, scenario: str,
           **keys: str) -> SippResult:
    """A caller over UDP through ``kam`` whose Call-ID is metrics-<what>-1@<ip>; its
    result also goes into ``runs`` (shown when the test fails)."""
    user = keys.pop("user", "alice")
    result = sipp(f"caller/{scenario}", f"{kam.addr}:{kam.port}", workdir=workdir, local_ip=UA_CALLER,
                local_port=port, timeout=15, check=scenario != "uac_final.xml", auth=subscriber(user),
                keys={"domain": "example.com", "user": user, **keys}, extra=["-cid_str", f"metrics-{what}-%u@%s"])
    runs.append(result)
    return result


def test_the_farm_counts_each_decision_once(farm, workdir, local_port, callees):
    """Story: a REGISTER with reg-id straight to the registrar (439), a device with
    two flows (reg-id 2 via edge2, then reg-id 1 via edge1; each edge's first
    REGISTER times out at dead reg-a and fails over to reg-b, which is held down),
    a forged flow token at edge1 (403), flow 1 closed and a call (430 at edge1,
    failover to flow 2, answered; the caller never sees the 430), flow 2 closed
    and a call (430 at edge2, no flow left: 480). Each role's /metrics shows
    exactly those increments, its gauges the flows and bindings there are, and
    each decision writes one log line with its reason code and Call-ID."""
    reg, edge1, edge2 = farm["registrar"], farm["edge1"], farm["edge2"]
    scrapes = Scrapes(farm)
    scrapes.mark()
    user = "metrics-dev"
    inst = instance(local_port)
    runs: list[SippResult] = []  # the callers' results
    with explained(farm, callees, runs):
        direct = sipp("register_expect", f"{reg.addr}:{reg.port}", workdir=workdir, local_ip=UA_DIRECT,
                      local_port=local_port + 5, auth=subscriber("metrics-direct"),
                      keys={"user": "metrics-direct", "domain": "example.com", "expires": "600",
                            "supported": "path, outbound", "extra": "X-Case: direct", "cseq": "1",
                            "contact": f"<sip:metrics-direct@{UA_DIRECT}:{local_port + 5};ob>" + ob_params(inst, 1)},
                      extra=["-cid_str", "metrics-direct-%u@%s"])
        assert direct.value("final") == "439"

        flow2 = start_callee(edge2, workdir, local_port + 1, user, ua_ip=UA_DEVICE, cparams=ob_params(inst, 2),
                             who="ua2", cid="metrics-flow2-%u-%p@%s")
        callees.append(flow2)
        wait_bindings(reg, user, [flow2], 1)
        flow1 = start_callee(edge1, workdir, local_port, user, ua_ip=UA_DEVICE, cparams=ob_params(inst, 1),
                             who="ua1", cid="metrics-flow1-%u-%p@%s")
        callees.append(flow1)
        bindings = wait_bindings(reg, user, [flow1, flow2], 2)
        # an edge books a flow when the registrar's 2xx passes it, just after the
        # registrar saved the binding: wait for each edge, as for the drops below
        for edge in ("edge1", "edge2"):
            wait_until(lambda edge=edge: scrapes.value(edge, PREFIX + "flows", transport="tcp") == 1,
                       f"{edge}'s flow gauge to count the flow its REGISTER's 2xx booked")
        assert scrapes.value("registrar", PREFIX + "bindings") == 2

        token = parse_name_addr(next(b for b in bindings if b["Reg-Id"] == 1)["Path"]).sip_uri.user or ""
        forged = token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB")
        refused = caller(runs, edge1, workdir, local_port + 2, "forged", "uac_final.xml", user="core", callee=user,
                         ruri=f"sip:{user}@{UA_DEVICE}:{local_port}",
                         extra=f"Route: <sip:{forged}@{edge1.addr};lr;ob>")
        assert refused.value("final") == "403"

        flow1.kill()  # flow 1's TCP connection closes
        wait_until(lambda: scrapes.value("edge1", PREFIX + "flows", transport="tcp") == 0,
                   "edge1's flow gauge to drop when the connection closed")
        answered = caller(runs, edge2, workdir, local_port + 3, "failover", "uac_short.xml", callee=user)
        assert answered.value("who") == "ua2"
        assert "SIP/2.0 430" not in answered.messages, "the caller saw a 430"
        assert scrapes.value("registrar", PREFIX + "bindings") == 1

        flow2.kill()
        wait_until(lambda: scrapes.value("edge2", PREFIX + "flows", transport="tcp") == 0,
                   "edge2's flow gauge to drop when the connection closed")
        unreachable = caller(runs, edge2, workdir, local_port + 4, "unreachable", "uac_final.xml", callee=user,
                             ruri=f"sip:{user}@example.com", extra="X-Case: unreachable")
        assert unreachable.value("final") == "480"
        assert scrapes.value("registrar", PREFIX + "bindings") == 0

        # flow tokens: one in the Path of each REGISTER an edge relays (the challenged one and the
        # authenticated one), one in the Record-Route of each INVITE it relays for the caller
        # (each call: the INVITE challenged 407 and the authenticated one)
        assert scrapes.changes("edge1") == {
            k("flow_tokens_total", transport="tcp", where="path"): 2,
            k("registrar_failovers_total", cause="timeout"): 1,
            k("hold_downs_total"): 1,
            k("refusals_total", code="403", cause="forged_token"): 1,
            k("forged_tokens_total", cause="forged_token"): 1,
            k("refusals_total", code="430", cause="flow_closed"): 1,
            k("flows_gone_total", cause="closed"): 1,
        }
        # edge2 also put the device's flow 2 token in the Record-Route of the one call it
        # sent over that flow (RFC 5626 §5.3.2, the callee's side)
        assert scrapes.changes("edge2") == {
            k("flow_tokens_total", transport="tcp", where="path"): 2,
            k("flow_tokens_total", transport="udp", where="record_route"): 4,
            k("flow_tokens_total", transport="tcp", where="record_route"): 1,
            k("registrar_failovers_total", cause="timeout"): 1,
            k("hold_downs_total"): 1,
            k("refusals_total", code="430", cause="flow_closed"): 1,
            k("flows_gone_total", cause="closed"): 1,
        }
        assert scrapes.changes("registrar") == {
            k("refusals_total", code="439", cause="first_hop_lacks_outbound"): 1,
            k("flow_failovers_total", cause="430"): 1,
            k("refusals_total", code="480", cause="all_flows_failed"): 1,
            k("calls_unreachable_total"): 1,
            **histogram("call_branches", [1, 1], CALL_BRANCHES.buckets),
        }

        assert decisions(edge1) == [("hold_down", 0, "flow1"), ("registrar_failover", 0, "flow1"),
                                    ("forged_token", 403, "forged"), ("flow_closed", 430, "failover")]
        assert decisions(edge2) == [("hold_down", 0, "flow2"), ("registrar_failover", 0, "flow2"),
                                    ("flow_closed", 430, "unreachable")]
        # the last flow's removal is a decision too (its line), but no failover: nothing was left to try
        assert decisions(reg) == [("first_hop_lacks_outbound", 439, "direct"), ("flow_failover", 0, "failover"),
                                  ("flow_failover", 0, "unreachable"), ("all_flows_failed", 480, "unreachable")]


@pytest.fixture(scope="module")
def server(workdir: Path) -> Iterator[Kamailio]:
    kam = start(single(workdir, name="metrics-single", addr=net(74)))
    yield kam
    stop(kam)


def test_the_single_server_counts_each_decision_once(server, workdir, local_port, callees):
    """Story on a single server (edge, registrar and home proxy in one): a device
    registers over TCP (a flow token in its own Path entry; the flow and the
    binding in the gauges), a forged flow token (403), a call answered over the
    flow after which the device leaves (its connection closes: the flow and its
    binding are gone at once), the caller's BYE over the closed flow (408), and a
    new call to the AOR, which has no binding left (404)."""
    kams = {"single": server}
    scrapes = Scrapes(kams)
    scrapes.mark()
    user = "metrics-solo"
    runs: list[SippResult] = []
    with explained(kams, callees, runs):
        device = start_callee(server, workdir, local_port, user, ua_ip=UA_DEVICE, who="solo", uas="uas_leave.xml",
                              cid="metrics-register-%u-%p@%s")
        callees.append(device)
        [binding] = wait_bindings(server, user, [device], 1)
        assert scrapes.value("single", PREFIX + "flows", transport="tcp") == 1
        assert scrapes.value("single", PREFIX + "bindings") == 1

        token = parse_name_addr(binding["Path"]).sip_uri.user or ""
        forged = token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB")
        refused = caller(runs, server, workdir, local_port + 2, "forged", "uac_final.xml", user="core", callee=user,
                         ruri=f"sip:{user}@{UA_DEVICE}:{local_port}",
                         extra=f"Route: <sip:{forged}@{server.addr};lr;ob>")
        assert refused.value("final") == "403"

        # the device answers, then leaves with the ACK; the caller's BYE comes 1.5 s later and is
        # answered 408, not 430 (in a dialog, toward the endpoint: RFC 5626 §11.5, RFC 3261 §12.2.1.2)
        late = caller(runs, server, workdir, local_port + 3, "leaving", "uac_bye_late.xml", callee=user)
        assert late.value("who") == "solo" and late.value("bye") == "408"
        assert scrapes.value("single", PREFIX + "flows", transport="tcp") == 0
        assert scrapes.value("single", PREFIX + "bindings") == 0

        gone = caller(runs, server, workdir, local_port + 4, "gone", "uac_final.xml", callee=user,
                      ruri=f"sip:{user}@example.com", extra="X-Case: gone")
        assert gone.value("final") == "404"

        # flow tokens issued: in the Path of the authenticated REGISTER (the single server
        # challenges before it adds its Path entry) and in the Record-Route of the one INVITE
        # relayed to the device (not in the INVITEs it answered itself: 407, 403, 404)
        assert scrapes.changes("single") == {
            k("flow_tokens_total", transport="tcp", where="path"): 1,
            k("flow_tokens_total", transport="udp", where="record_route"): 1,
            k("refusals_total", code="403", cause="forged_token"): 1,
            k("forged_tokens_total", cause="forged_token"): 1,
            k("refusals_total", code="408", cause="flow_closed"): 1,
            k("flows_gone_total", cause="closed"): 1,
            k("refusals_total", code="404", cause="no_binding"): 1,
            **histogram("call_branches", [1], CALL_BRANCHES.buckets),
        }
        assert decisions(server) == [("forged_token", 403, "forged"), ("flow_closed", 408, "leaving"),
                                     ("no_binding", 404, "gone")]
