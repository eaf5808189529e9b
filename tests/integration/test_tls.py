"""Outbound flows over TLS, on real Kamailio (RFC 5626 §3.3, §5.2-§5.4, §7).

The edge (cfg/edge.cfg) and the single server (cfg/single.cfg) run with
``-A WITH_TLS`` and a tls.cfg holding a certificate from a CA made for this run.
Debian's SIPp has no TLS: each SIPp UA talks TCP to its own stunnel (client
mode, tests/tls_setup.py), which opens one real TLS connection to Kamailio from
the UA's address and checks Kamailio's certificate against the test CA. SIPp's
Via and Contact therefore say ``tcp`` while Kamailio sees ``tls``; RFC 5626
keys the flow on what the edge sees, and so do we.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import actors
from actors import instance, ob_params, tcp_stat, wait_bindings, wait_until
from harness import TEST_KEY, Kamailio, SippRun, describe, sipp, start_sipp
from outbound.sipmsg import parse_name_addr
from outbound.tokens import Flow, FlowTokenCodec, parse_key
from tls_setup import Certs, Stunnel, make_certs, write_tls_cfg
from topology import TLS_PORT, edge, ko_yaml, net, registrar, single, start, stop, subscriber

REGISTRAR = net(80)
EDGE = net(81)
UA_TLS = net(82)  # the SIPp UA and its stunnel (the TLS connection's source)
CALLER = net(83)
CORE = REGISTRAR  # requests "from the core", from the farm's address as the home proxy sends them
SINGLE = net(86)
PINGER = net(87)
SINGLE_IDLE = net(88)
SINGLE_ENV = net(89)
CODEC = FlowTokenCodec([parse_key(TEST_KEY)])
_YAML = yaml.safe_load(ko_yaml())
FLOW_LIFETIME = _YAML["registrar"]["flow_timer"] + _YAML["keepalive"]["grace_seconds"]
TCP_LIFETIME = 3605  # KO_TCP_LIFETIME's default in the cfgs


@pytest.fixture(scope="module")
def certs(workdir: Path) -> Certs:
    return make_certs(workdir / "tls", [EDGE, SINGLE, SINGLE_IDLE, SINGLE_ENV])


@pytest.fixture(scope="module")
def tls_cfg(workdir: Path, certs: Certs) -> Path:
    return write_tls_cfg(workdir / "tls", certs)


@pytest.fixture(scope="module")
def edge_net(workdir: Path, tls_cfg: Path) -> Iterator[dict[str, Kamailio]]:
    """A registrar and an edge listening on UDP/TCP 5060 and TLS 5061."""
    reg = registrar(workdir, name="registrar-tls", addr=REGISTRAR)
    edge_tls = edge(workdir, "edge-tls", EDGE, reg.uri, tls_cfg=tls_cfg)
    started: list[Kamailio] = []
    try:
        for kam in (reg, edge_tls):
            started.append(start(kam))
        yield {"registrar": reg, "edge": edge_tls}
    finally:
        for kam in started:
            stop(kam)


@pytest.fixture(scope="module")
def single_tls(workdir: Path, tls_cfg: Path) -> Iterator[Kamailio]:
    kam = start(single(workdir, name="single-tls", addr=SINGLE, tls_cfg=tls_cfg))
    yield kam
    stop(kam)


@pytest.fixture
def tunnels() -> Iterator[list[Stunnel]]:
    """stunnels a test started; stopped (by PID) when it ends."""
    started: list[Stunnel] = []
    yield started
    for tunnel in started:
        tunnel.stop()


def tls_callee(kam: Kamailio, workdir: Path, port: int, user: str, certs: Certs, tunnels: list[Stunnel],
               callees: list[SippRun], uas: str = "uas.xml") -> tuple[SippRun, Stunnel]:
    """An outbound UA (tests/sipp/callee_ob) registered over its own TLS connection."""
    tunnel = Stunnel(workdir / "stunnel", f"stunnel-{port}", accept=(UA_TLS, port + 10),
                     connect=(kam.addr, TLS_PORT), local=UA_TLS, certs=certs)
    tunnels.append(tunnel.start())
    callee = start_sipp("callee_ob/register.xml", f"{UA_TLS}:{port + 10}", workdir=workdir, local_ip=UA_TLS,
                        local_port=port, transport="tcp", timeout=30, auth=subscriber(user),
                        keys={"user": user, "domain": "example.com", "expires": "600", "who": user,
                              "cseq": "1", "cseq_auth": "2",
                              "cparams": ob_params(instance(port), 1)},
                        oocsf=f"callee_ob/{uas}")
    callees.append(callee)
    return callee, tunnel


def path_flow(binding: dict) -> Flow:
    flow = CODEC.decode(parse_name_addr(binding["Path"]).sip_uri.user or "").flow
    assert flow is not None, binding
    return flow


def connections_from(kam: Kamailio, ip: str, port: int) -> list[dict]:
    return [c for c in kam.rpc("core.tcp_list") if c["src_ip"] == ip and c["src_port"] == port]


def connect_attempts(kam: Kamailio) -> int:
    return tcp_stat(kam, "connect_success") + tcp_stat(kam, "connect_failed")


# ----- edge + registrar ------------------------------------------------------

def test_register_over_tls_binds_the_tls_connection(edge_net, workdir, local_port, certs, tunnels, callees):
    """RFC 5626 §5.2 (A2.5): the token names the TLS flow, connection id included;
    §5.4: the flow is kept open Flow-Timer + grace; §6: 200 with Require: outbound."""
    edge_tls = edge_net["edge"]
    callee, tunnel = tls_callee(edge_tls, workdir, local_port, "t-alice", certs, tunnels, callees)
    [binding] = wait_bindings(edge_net["registrar"], "t-alice", [callee])
    flow = path_flow(binding)
    assert (flow.transport, flow.local_ip, flow.local_port, flow.remote_ip) == ("tls", EDGE, TLS_PORT, UA_TLS)
    assert binding["Reg-Id"] == 1 and "ob" in parse_name_addr(binding["Path"]).sip_uri.params
    [conn] = connections_from(edge_tls, UA_TLS, flow.remote_port)
    assert conn["type"] == "TLS" and conn["id"] == flow.conn_id, "token names the very TLS connection"
    assert conn["lifetime"] == FLOW_LIFETIME, "an outbound TLS flow lives Flow-Timer + grace when idle"
    assert tunnel.tls_connections() == [f"{EDGE}:{TLS_PORT}"]
    assert "Certificate accepted" in tunnel.log(), "stunnel checked the edge's certificate against the CA"
    callee.kill()
    run = callee.wait(5)
    assert "Require: outbound" in run.messages and f"Flow-Timer: {_YAML['registrar']['flow_timer']}" in run.messages, \
        describe(run)


@pytest.mark.parametrize("hangup", ["caller", "callee"])
def test_call_arrives_over_the_registered_tls_connection(edge_net, workdir, local_port, certs, tunnels, callees,
                                                         hangup):
    """RFC 5626 §5.3.1: the edge sends over the TLS connection of the token and
    opens none; in-dialog requests both ways follow the token Record-Routes."""
    user = f"t-bob-{hangup}"
    edge_tls = edge_net["edge"]
    attempts = connect_attempts(edge_tls)
    callee, tunnel = tls_callee(edge_tls, workdir, local_port, user, certs, tunnels, callees,
                                uas="uas.xml" if hangup == "caller" else "uas_bye.xml")
    flow = path_flow(wait_bindings(edge_net["registrar"], user, [callee])[0])

    caller = actors.call(edge_tls, workdir, local_port + 1, user, ua_ip=CALLER,
                         scenario="uac.xml" if hangup == "caller" else "uac_wait_bye.xml")
    record_routes = actors.completed_call_routes(caller, user, hangup)
    # the caller came in through the same edge (UDP): one entry for its side too
    callee_side = [u for u in record_routes if u.host == EDGE and CODEC.decode(u.user or "").flow == flow]
    assert len(callee_side) == 2, "double Record-Route: UDP toward the core, TLS toward the UA"
    assert any(u.params.get("transport") == "tls" and u.port == TLS_PORT for u in callee_side)

    result = callee.wait(20)
    assert result.returncode == 0 and "call ended" in result.log, describe(result)
    assert f"Via: SIP/2.0/TLS {EDGE}:{TLS_PORT};" in result.messages, "the edge's Via names its TLS socket"
    assert connect_attempts(edge_tls) == attempts, "the edge opened a connection toward the UA"
    assert tunnel.tls_connections() == [f"{EDGE}:{TLS_PORT}"], "one TLS connection for everything"


def test_closed_tls_flow_gets_430_from_edge_and_480_for_the_caller(edge_net, workdir, local_port, certs,
                                                                    tunnels, callees):
    """RFC 5626 §5.3.1: the TLS connection is gone -> 430 from the edge and no
    new connection toward the UA; the home proxy turns 430 into 480 (§11.5)."""
    user = "t-gone"
    edge_tls = edge_net["edge"]
    callee, tunnel = tls_callee(edge_tls, workdir, local_port, user, certs, tunnels, callees)
    binding = wait_bindings(edge_net["registrar"], user, [callee])[0]
    flow = path_flow(binding)
    tunnel.kill()  # SIGKILL: the kernel closes the UA's TLS connection
    wait_until(lambda: not any(c["id"] == flow.conn_id for c in edge_tls.rpc("core.tcp_list")),
               "the edge noticing the closed TLS connection")
    attempts = connect_attempts(edge_tls)

    direct = sipp("caller/uac_final.xml", f"{edge_tls.addr}:{edge_tls.port}", workdir=workdir, local_ip=CORE,
                  local_port=local_port + 1, timeout=10,
                  keys={"callee": user, "domain": "example.com", "user": "core",
                        "ruri": binding["Address"], "extra": f"Route: {binding['Path']}"})
    assert direct.value("final") == "430"

    through_home = actors.call(edge_tls, workdir, local_port + 2, user, ua_ip=CALLER, scenario="uac_final.xml",
                               ruri=f"sip:{user}@example.com", extra="X-Case: tls-gone")
    assert through_home.value("final") == "480"
    assert connect_attempts(edge_tls) == attempts, "the edge tried to connect toward the UA"
    assert "flow Flow(transport='tls'" in edge_tls.log() and "is gone, no new connection opened" in edge_tls.log()


# ----- keepalive ---------------------------------------------------------------

@pytest.mark.parametrize("role", ["edge", "single"])
def test_double_crlf_over_tls_gets_single_crlf(edge_net, single_tls, certs, role):
    """RFC 5626 §5.4 (A2.10): CRLFCRLF over a TLS connection is answered with CRLF
    over it; a TLS connection without outbound lives KO_TCP_LIFETIME, like TCP."""
    kam = edge_net["edge"] if role == "edge" else single_tls
    with socket.create_connection((kam.addr, TLS_PORT), timeout=5, source_address=(PINGER, 0)) as raw, \
            certs.client_context().wrap_socket(raw, server_hostname=kam.addr) as conn:
        conn.sendall(b"\r\n\r\n")
        assert conn.recv(16) == b"\r\n"
        conn.sendall(b"\r\n\r\n")  # and again on the same connection
        assert conn.recv(16) == b"\r\n"
        [listed] = connections_from(kam, PINGER, conn.getsockname()[1])
        assert listed["type"] == "TLS" and listed["lifetime"] == TCP_LIFETIME


def test_tls_port_and_cfg_come_from_the_environment(workdir, tls_cfg, certs):
    """Like every setting, KO_TLS_PORT and KO_TLS_CFG may come from the environment
    (containers); only the switch WITH_TLS is given with -A."""
    kam = single(workdir, name="single-tls-env", addr=SINGLE_ENV, defines={"WITH_TLS": ""})
    kam.env.update({"KO_TLS_PORT": str(TLS_PORT + 1), "KO_TLS_CFG": str(tls_cfg)})
    start(kam)
    try:
        with socket.create_connection((SINGLE_ENV, TLS_PORT + 1), timeout=5, source_address=(PINGER, 0)) as raw, \
                certs.client_context().wrap_socket(raw, server_hostname=SINGLE_ENV) as conn:
            conn.sendall(b"\r\n\r\n")
            assert conn.recv(16) == b"\r\n"
        assert f"tls: {SINGLE_ENV} [{SINGLE_ENV}]:{TLS_PORT + 1}" in kam.log()
    finally:
        stop(kam)


# ----- single server -----------------------------------------------------------

def test_single_server_flow_over_tls(single_tls, workdir, local_port, certs, tunnels, callees):
    """Single-server mode over TLS: the registration records the TLS flow (§6),
    a call goes over it without a new connection (§7), and closing the TLS
    connection removes the binding at once (§7, A4.5)."""
    user = "ts-carol"
    attempts = connect_attempts(single_tls)
    callee, tunnel = tls_callee(single_tls, workdir, local_port, user, certs, tunnels, callees)
    [binding] = wait_bindings(single_tls, user, [callee])
    path = parse_name_addr(binding["Path"]).sip_uri
    assert "ob" in path.params and path.host == SINGLE and path.params.get("transport") == "tls"
    flow = path_flow(binding)
    assert (flow.transport, flow.remote_ip) == ("tls", UA_TLS)
    assert [c["id"] for c in connections_from(single_tls, UA_TLS, flow.remote_port)] == [flow.conn_id]

    result = actors.call(single_tls, workdir, local_port + 1, user, ua_ip=CALLER)
    assert result.value("who") == user
    assert "call ended" in callee.wait(20).log
    assert connect_attempts(single_tls) == attempts, "the server opened a connection instead of using the flow"
    assert tunnel.tls_connections() == [f"{SINGLE}:{TLS_PORT}"]

    # the callee's SIPp ended its call and exits: its TCP and so the TLS connection close
    second, tunnel2 = tls_callee(single_tls, workdir, local_port + 2, user + "-2", certs, tunnels, callees)
    wait_bindings(single_tls, user + "-2", [second])
    tunnel2.kill()
    wait_until(lambda: not single_tls.bindings(user + "-2"), "binding of the closed TLS flow removed")
    assert f"on tls:{SINGLE}:{TLS_PORT}>{UA_TLS}:" in single_tls.log()


def test_single_server_idle_tls_flow_closed_after_flow_timer_plus_grace(workdir, tls_cfg, local_port, certs,
                                                                         tunnels, callees):
    """RFC 5626 §5.4/§8 on TLS: the tls module gives a TLS connection its own idle
    lifetime; ours is set per flow to Flow-Timer + grace, and when the idle flow
    is closed its binding goes (the sweep, as for TCP)."""
    kam = single(workdir, name="single-tls-idle", addr=SINGLE_IDLE, tls_cfg=tls_cfg, defines={"KO_FLOW_TIMER": "1"})
    kam.yaml_text = (kam.yaml_text or "").replace("grace_seconds: 20", "grace_seconds: 2")
    start(kam)
    try:
        callee, _ = tls_callee(kam, workdir, local_port, "ts-idle", certs, tunnels, callees)
        flow = path_flow(wait_bindings(kam, "ts-idle", [callee])[0])
        # set right after save() in the same route: poll, the binding may be seen first
        wait_until(lambda: [(c["type"], c["lifetime"]) for c in connections_from(kam, UA_TLS, flow.remote_port)]
                   == [("TLS", 1 + 2)], "the TLS flow's lifetime set to Flow-Timer + grace")
        wait_until(lambda: kam.bindings("ts-idle") == [], "idle TLS flow closed and binding removed", timeout=20)
        assert f"idle timeout on tls:{SINGLE_IDLE}:{TLS_PORT}>{UA_TLS}:" in kam.log()
    finally:
        stop(kam)
