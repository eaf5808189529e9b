"""RPC views over the metrics socket (issue 16): tools/ko-view against real Kamailios.

A farm of its own (a registrar and two edges, on addresses no other module uses,
with a location table of its own), devices registered with SIPp over TCP and UDP
through both edges; ``ko-view bindings`` at the registrar and ``ko-view flows``
at each edge, run as the operator runs them (a subprocess), must list exactly
those bindings and flows, and drop each one when it goes. The conftest hook
appends every running Kamailio's log to a failed test's report.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from actors import call, instance, ob_params, start_callee, wait_bindings
from harness import ROOT, TEST_KEY, Kamailio, SippRun, sipp
from topology import edge, farm_with_two_edges, ko_yaml, net, registrar, subscriber
from ws_ua import WsUA
from wsclient import WsClient

KO_VIEW = ROOT / "tools" / "ko-view"
UA_DEVICE = net(188)
UA_CALLER = net(189)
WS = 8080
ORIGIN = "https://phone.example.com"


def ws_yaml() -> str:
    data = yaml.safe_load(ko_yaml())
    data["websocket"] = {"allowed_origins": [ORIGIN]}
    return yaml.safe_dump(data)


@pytest.fixture(scope="module")
def farm(workdir: Path) -> Iterator[dict[str, Kamailio]]:
    """A registrar (its own location table) and two edges, WebSocket on :8080 too."""
    reg = registrar(workdir, name="reg-views", addr=net(185))
    edges = {n: edge(workdir, f"edge-views-{n}", net(185 + n), reg.uri, ws_port=WS, yaml_text=ws_yaml())
             for n in (1, 2)}
    yield from farm_with_two_edges(workdir, reg, edges)


def ko_view(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["/usr/bin/python3", str(KO_VIEW), *args], capture_output=True, text=True, timeout=30)
    if check:
        assert done.returncode == 0, f"ko-view {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
        assert done.stderr == "", done.stderr
    return done


def view(kind: str, kam: Kamailio, *args: str) -> list[dict]:
    out = ko_view(kind, *args, kam.metrics_url("")).stdout
    return [json.loads(line) for line in out.splitlines()]


def poll_view(kind: str, kam: Kamailio, want, what: str, *args: str, timeout: float = 10.0) -> list[dict]:
    """Poll the view until ``want(rows)`` holds (never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = view(kind, kam, *args)
        if want(rows):
            return rows
        assert time.monotonic() < deadline, f"timed out waiting for {what}; the {kind} view is:\n{rows}"
        time.sleep(0.1)


def conn_id_at(kam: Kamailio, port: int) -> int:
    """The id of the device's connection in the edge's own core.tcp_list (its unix RPC socket)."""
    found = [c["id"] for c in kam.rpc("core.tcp_list") if c["src_ip"] == UA_DEVICE and c["src_port"] == port]
    assert len(found) == 1, f"{kam.name} has {len(found)} connections from {UA_DEVICE}:{port}"
    return found[0]


def device(farm: dict[str, Kamailio], workdir: Path, callees: list[SippRun], edge_name: str, port: int,
           user: str, transport: str, reg_id: int) -> SippRun:
    run = start_callee(farm[edge_name], workdir, port, user, ua_ip=UA_DEVICE, transport=transport,
                       cparams=ob_params(instance(port), reg_id), who=f"{user}-{port}", timeout=90)
    callees.append(run)
    return run


def binding_facts(rows: list[dict]) -> set[tuple]:
    return {(r["aor"], r["instance"], r["reg_id"], r["edge"], r["transport"], r["remote"], r["conn_id"])
            for r in rows}


def flow_facts(rows: list[dict]) -> set[tuple]:
    return {(r["transport"], r["local"], r["remote"], r["conn_id"], tuple(r["aors"])) for r in rows}


def unregister(kam: Kamailio, workdir: Path, port: int, user: str, reg_id: int) -> None:
    """Expires: 0 for (instance, reg-id) from the device's own address and port (UDP):
    the same flow, so the edge unbooks it too."""
    contact = f"<sip:{user}@{UA_DEVICE}:{port};transport=udp;ob>" + ob_params(instance(port), reg_id)
    result = sipp("register_expect", f"{kam.addr}:{kam.port}", workdir=workdir, local_ip=UA_DEVICE, local_port=port,
                  transport="udp", auth=subscriber(user), extra=["-base_cseq", "10"],
                  keys={"user": user, "domain": "example.com", "expires": "0", "supported": "path, outbound",
                        "extra": "X-Case: unregister", "contact": contact})
    assert result.value("final") == "200", result.log


def test_views_list_exactly_the_registered_bindings_and_flows_and_drop_them_when_they_go(
        farm, workdir, local_port, callees):
    """Four devices, TCP and UDP, through both edges: the registrar's view shows each
    binding with its flow decoded (the edge's connection id among them), each edge's
    view shows its own TCP connections with a registration (UDP flows are not
    booked); an un-REGISTER removes a binding, a closed TCP connection leaves the
    edge's view at once and from the registrar's when a
    request finds the flow gone (430, RFC 5626 §5.3.1: the registrar learns no sooner)."""
    reg, e1, e2 = farm["registrar"], farm["edge1"], farm["edge2"]
    p = local_port
    # (edge, port, user, transport, reg-id)
    specs = [("edge1", p, "view-a", "tcp", 1), ("edge2", p + 1, "view-a", "udp", 2),
             ("edge2", p + 2, "view-b", "tcp", 1), ("edge1", p + 3, "view-c", "udp", 1)]
    runs = [device(farm, workdir, callees, *spec) for spec in specs]
    wait_bindings(reg, "view-a", runs, 2)
    wait_bindings(reg, "view-b", runs, 1)
    wait_bindings(reg, "view-c", runs, 1)
    conn = {p: conn_id_at(e1, p), p + 2: conn_id_at(e2, p + 2)}

    def binding(edge_name: str, port: int, user: str, transport: str, reg_id: int) -> tuple:
        kam = farm[edge_name]
        return (user, instance(port), reg_id, f"{kam.addr}:{kam.port}", transport, f"{UA_DEVICE}:{port}",
                conn.get(port))

    def flow(edge_name: str, port: int, user: str, transport: str, reg_id: int) -> tuple:
        kam = farm[edge_name]
        return (transport, f"{kam.addr}:{kam.port}", f"{UA_DEVICE}:{port}", conn.get(port),
                (f"sip:{user}@example.com",))

    # the registrar: exactly the four bindings (the whole table: this test runs first on the
    # module's farm, whose location table is its own), tokens verified with the edges' key
    rows = view("bindings", reg, "--keys", TEST_KEY)
    assert binding_facts(rows) == {binding(*s) for s in specs}
    assert all(r["path_token_valid"] is True for r in rows), rows
    assert all(0 <= r["age_s"] <= 60 and 0 < r["expires_s"] <= 600 for r in rows), rows
    assert rows == sorted(rows, key=lambda r: (r["aor"], r["instance"])), "the view is not sorted"
    # without keys: the same fields, read unverified (path_token_valid null)
    unverified = view("bindings", reg, "--keys", "")
    assert binding_facts(unverified) == binding_facts(rows)
    assert {r["path_token_valid"] for r in unverified} == {None}
    # --aor: ul.lookup of one AOR; an AOR without bindings is an empty view, not an error
    assert binding_facts(view("bindings", reg, "--aor", "view-a@example.com")) == {binding(*s) for s in specs[:2]}
    assert view("bindings", reg, "--aor", "nobody@example.com") == []

    # each edge: exactly its own TCP flows, each with its live connection (UDP flows are not booked)
    for kam, name in ((e1, "edge1"), (e2, "edge2")):
        rows = view("flows", kam)
        assert flow_facts(rows) == {flow(*s) for s in specs if s[0] == name and s[3] == "tcp"}, name
        for row in rows:
            assert row["state"] == "CONN_OK" and row["lifetime_s"] > 0, row

    # un-REGISTER of view-a reg-id 2 (UDP via edge2): gone from both views, the rest stay
    runs[1].kill()
    unregister(e2, workdir, p + 1, "view-a", 2)
    left = [specs[0], specs[2], specs[3]]
    poll_view("bindings", reg, lambda r: binding_facts(r) == {binding(*s) for s in left},
              "the un-registered binding to leave the registrar's view")
    assert flow_facts(view("flows", e2)) == {flow(*specs[2])}

    # view-a's TCP device dies: its flow leaves edge1's view when the connection closes ...
    runs[0].kill()
    poll_view("flows", e1, lambda r: flow_facts(r) == set(), "the closed TCP flow to leave edge1")
    assert binding(*specs[0]) in binding_facts(view("bindings", reg)), "the registrar cannot know yet"
    # ... and its binding when a call finds the flow gone (430 from edge1, the registrar drops it)
    result = call(e2, workdir, p + 10, "view-a", ua_ip=UA_CALLER, scenario="uac_final.xml",
                  ruri="sip:view-a@example.com", extra="X-Case: flow-gone")
    assert result.value("final") == "480", result.messages[-3000:]
    left = [specs[2], specs[3]]
    poll_view("bindings", reg, lambda r: binding_facts(r) == {binding(*s) for s in left},
              "the dead flow's binding to leave the registrar's view")
    assert flow_facts(view("flows", e2)) == {flow(*specs[2])}


def test_a_websocket_flow_is_in_both_views_with_its_connection_and_leaves_the_edges_when_it_closes(
        farm, sockets):
    """RFC 7118 flows: transport ws, the device's TCP address, the connection id of
    the edge's core.tcp_list; closing the WebSocket unbooks the flow at once."""
    reg, e2 = farm["registrar"], farm["edge2"]
    client = WsClient(e2.addr, WS, local_ip=UA_DEVICE)
    sockets.append(client)
    assert client.handshake(protocol="sip", origin=ORIGIN).status == 101
    ua = WsUA(client, *subscriber("view-ws"))
    assert ua.register(instance(9001), 1).status == 200
    ip, port = client.local
    conn_id = conn_id_at(e2, port)
    [row] = view("bindings", reg, "--aor", "view-ws@example.com", "--keys", TEST_KEY)
    # edge: the Path's hop (the edge's SIP socket toward the registrar); local: the device's side of the flow
    assert (row["instance"], row["reg_id"], row["edge"], row["transport"], row["local"], row["remote"],
            row["conn_id"]) == (instance(9001), 1, f"{e2.addr}:{e2.port}", "ws", f"{e2.addr}:{WS}", f"{ip}:{port}",
                                conn_id), row
    assert row["path_token_valid"] is True
    mine = [r for r in view("flows", e2) if r["remote"] == f"{ip}:{port}"]
    assert [(r["transport"], r["local"], r["conn_id"], r["aors"], r["state"]) for r in mine] == [
        ("ws", f"{e2.addr}:{WS}", conn_id, ["sip:view-ws@example.com"], "CONN_OK")], mine
    client.close()
    poll_view("flows", e2, lambda rows: all(r["remote"] != f"{ip}:{port}" for r in rows),
              "the closed WebSocket flow to leave edge2's view")


def post_rpc(kam: Kamailio, method: str, *params: object) -> tuple[int, str]:
    body = json.dumps({"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}).encode()
    request = urllib.request.Request(kam.metrics_url("/RPC"), data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_write_rpc_over_the_metrics_socket_is_refused_403_and_changes_nothing(farm, workdir, local_port, callees):
    """The metrics socket answers read-only methods only: ul.rm is 403, the binding stays."""
    reg = farm["registrar"]
    device(farm, workdir, callees, "edge1", local_port, "view-rm", "udp", 1)
    wait_bindings(reg, "view-rm", callees, 1)
    status, text = post_rpc(reg, "ul.rm", "location", "view-rm@example.com")
    assert status == 403 and "read-only" in text, (status, text)
    status, text = post_rpc(farm["edge1"], "htable.delete", "ko_flows", f"udp:{farm['edge1'].addr}:5060>x:1")
    assert status == 403, (status, text)
    rows = view("bindings", reg, "--aor", "view-rm@example.com")
    assert [(r["aor"], r["remote"]) for r in rows] == [("view-rm", f"{UA_DEVICE}:{local_port}")]
    status, text = post_rpc(reg, "ul.dump")
    assert status == 200 and '"view-rm"' in text


def test_an_unreachable_socket_or_a_wrong_role_is_one_error_line_and_exit_1(farm):
    """No traceback: a sentence on stderr and exit code 1."""
    gone = ko_view("flows", f"http://{net(184)}:9090", check=False)
    assert gone.returncode == 1 and gone.stdout == ""
    assert gone.stderr.startswith("ko-view: cannot reach") and "Traceback" not in gone.stderr, gone.stderr
    wrong_role = ko_view("flows", farm["registrar"].metrics_url(""), check=False)  # no ko_flows at a registrar
    assert wrong_role.returncode == 1 and "htable.dump failed" in wrong_role.stderr, wrong_role.stderr
    bad_key = ko_view("bindings", "--keys", "a passphrase", farm["registrar"].metrics_url(""), check=False)
    assert bad_key.returncode == 1 and "Traceback" not in bad_key.stderr, bad_key.stderr
