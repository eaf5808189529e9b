"""Single-server mode: edge and registrar in one Kamailio, flows held locally (issue 4)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from netns import ipv6_loopback

from actors import (
    assert_refusal_acked_hop_by_hop,
    call,
    instance,
    ob_params,
    start_callee,
    tcp_stat,
    wait_bindings,
    wait_until,
)
from harness import SIPP_DIR, TEST_KEY, Kamailio, describe, start_sipp
from outbound.sipmsg import parse_name_addr
from outbound.tokens import FlowTokenCodec, parse_key
from topology import net, single, start, stop, subscriber

UA_DEVICE = net(61)
UA_CALLER = net(62)
CODEC = FlowTokenCodec([parse_key(TEST_KEY)])


@pytest.fixture(scope="module")
def server(workdir) -> Iterator[Kamailio]:
    kam = start(single(workdir))
    yield kam
    stop(kam)


def test_direct_registration_records_the_flow(server, workdir, local_port, callees):
    """RFC 5626 §6 (A3.8): the registrar that is the first hop stores the flow;
    we store it as our own Path entry with a flow token and ;ob."""
    callee = start_callee(server, workdir, local_port, "s-alice", ua_ip=UA_DEVICE)
    callees.append(callee)
    [binding] = wait_bindings(server, "s-alice", [callee])
    path = parse_name_addr(binding["Path"]).sip_uri
    assert "ob" in path.params and path.host == server.addr
    flow = CODEC.decode(path.user or "").flow
    assert flow is not None and flow.transport == "tcp" and flow.remote_ip == UA_DEVICE and flow.conn_id > 0
    assert binding["Reg-Id"] == 1 and binding["CFlags"] & (1 << 6)


@pytest.mark.parametrize("uas,scenario", [("uas.xml", "uac.xml"), ("uas_bye.xml", "uac_wait_bye.xml")],
                         ids=["caller-hangs-up", "callee-hangs-up"])
def test_call_over_the_local_flow_both_ways(server, workdir, local_port, callees, uas, scenario):
    user = f"s-bob-{uas[:-4]}"
    connects = tcp_stat(server, "connect_success") + tcp_stat(server, "connect_failed")
    callee = start_callee(server, workdir, local_port, user, ua_ip=UA_DEVICE, uas=uas)
    callees.append(callee)
    wait_bindings(server, user, [callee])
    result = call(server, workdir, local_port + 1, user, ua_ip=UA_CALLER, scenario=scenario)
    assert result.value("who") == user
    assert "call ended" in callee.wait(20).log
    assert tcp_stat(server, "connect_success") + tcp_stat(server, "connect_failed") == connects, \
        "the server opened a connection toward the UA instead of using its flow"


def test_ack_of_a_refusal_is_absorbed_hop_by_hop_and_the_refusal_not_repeated(server, workdir, local_port,
                                                                               callees):
    """RFC 3261 §17.2.1, §16.7 (S13): the caller's ACK of a 486 ends the server
    transaction that relayed it, which stops repeating the 486 (timer G), and it
    goes no further: the callee gets the server's own ACK, with one Via (§17.1.1.3)."""
    user = "s-refuses"
    callee = start_callee(server, workdir, local_port, user, ua_ip=UA_DEVICE, uas="uas_busy.xml")
    callees.append(callee)
    wait_bindings(server, user, [callee])
    result = call(server, workdir, local_port + 1, user, ua_ip=UA_CALLER, scenario="uac_refused.xml")
    assert_refusal_acked_hop_by_hop(result, callee.wait(20), server.addr)


def test_closed_connection_removes_its_bindings_at_once_and_calls_fail_over(server, workdir, local_port, callees):
    """RFC 5626 §7 (A4.5): a flow known dead invalidates every binding on it, for all AORs."""
    user = "s-device"
    inst = instance(local_port)
    flow2 = start_callee(server, workdir, local_port + 1, user, ua_ip=UA_DEVICE, cparams=ob_params(inst, 2),
                         who="ua2", cid="s2-%u-%p@%s")
    callees.append(flow2)
    wait_bindings(server, user, [flow2], 1)
    flow1 = start_callee(server, workdir, local_port, user, ua_ip=UA_DEVICE, cparams=ob_params(inst, 1),
                         who="ua1", cid="s1-%u-%p@%s")
    callees.append(flow1)
    wait_bindings(server, user, [flow1, flow2], 2)
    flow1.kill()
    wait_until(lambda: [b["Reg-Id"] for b in server.bindings(user)] == [2], "binding of the closed flow removed")
    assert "tcp:closed" in server.log() or "tcp:reset" in server.log()
    result = call(server, workdir, local_port + 2, user, ua_ip=UA_CALLER)
    assert result.value("who") == "ua2"


def test_closing_one_connection_removes_the_bindings_of_every_aor_on_it(server, workdir, local_port, callees):
    """RFC 5626 §7 (A4.5, D9): all AORs registered over the dead flow, not just one."""
    for aor in ("multi-a", "multi-b"):
        subscriber(aor)  # users.csv: [field2] is each user's password
    device = start_sipp("multi_aor/register.xml", f"{server.addr}:{server.port}", workdir=workdir,
                        local_ip=UA_DEVICE, local_port=local_port, transport="tcp", calls=2, timeout=60, rate=10,
                        keys={"domain": "example.com"},  # credentials per user: users.csv field 2
                        inf=SIPP_DIR / "multi_aor" / "users.csv")
    callees.append(device)
    wait_bindings(server, "multi-a", [device])
    wait_bindings(server, "multi-b", [device])
    paths = {parse_name_addr(server.bindings(aor)[0]["Path"]).sip_uri.user for aor in ("multi-a", "multi-b")}
    assert len({CODEC.decode(p or "").flow for p in paths}) == 1, "both AORs should share one flow"
    device.kill()
    wait_until(lambda: not server.bindings("multi-a") and not server.bindings("multi-b"),
               "bindings of both AORs removed")


def test_idle_flow_is_closed_after_flow_timer_plus_grace_and_its_binding_removed(workdir, local_port, callees):
    """RFC 5626 §5.4/§8: Flow-Timer from the YAML; the flow is closed only after
    Flow-Timer + grace without traffic, and then its bindings go."""
    kam = single(workdir, name="single-idle", addr=net(63), defines={"KO_FLOW_TIMER": "1"})
    kam.yaml_text = kam.yaml_text.replace("grace_seconds: 20", "grace_seconds: 2")
    start(kam)
    try:
        callee = start_callee(kam, workdir, local_port, "s-idle", ua_ip=UA_DEVICE)
        callees.append(callee)
        wait_bindings(kam, "s-idle", [callee])
        registered = time.monotonic()
        wait_until(lambda: kam.bindings("s-idle") == [], "idle flow closed and binding removed", timeout=20)
        idle = time.monotonic() - registered
        print(f"binding removed {idle:.1f}s after registering (Flow-Timer 1 s + grace 2 s)")
        assert idle >= 3, "the flow was closed before Flow-Timer + grace"
        assert "idle timeout on tcp:" in kam.log()
    finally:
        stop(kam)


def test_registration_reply_carries_flow_timer(server, workdir, local_port, callees):
    callee = start_callee(server, workdir, local_port, "s-ft", ua_ip=UA_DEVICE)
    callees.append(callee)
    wait_bindings(server, "s-ft", [callee])
    callee.kill()
    run = callee.wait(5)
    assert "Flow-Timer: 25" in run.messages and "Require: outbound" in run.messages, describe(run)


def test_closed_ipv6_connection_removes_its_bindings(workdir, local_port, callees):
    """RFC 5626 §7 (A4.5/D9) over IPv6 (issue 13 item 8): Kamailio spells the
    connection's addresses FD00:AB:CD::20, the token's decoder fd00:ab:cd::20;
    one key for both (Flow.key) or the closed connection never finds its
    bindings (before the fix the binding stayed)."""
    server_ip, device_ip = "fd00:ab:cd::10", "fd00:ab:cd::20"
    with ipv6_loopback(server_ip, device_ip) as ns:
        kam = start(single(workdir, name="single-v6", addr=f"[{server_ip}]", netns=ns))
        try:
            callee = start_callee(kam, workdir, local_port, "s-v6", ua_ip=device_ip, netns=ns)
            callees.append(callee)
            [binding] = wait_bindings(kam, "s-v6", [callee])
            flow = CODEC.decode(parse_name_addr(binding["Path"]).sip_uri.user or "").flow
            assert flow is not None and flow.remote_ip == device_ip and flow.transport == "tcp"
            callee.kill()
            wait_until(lambda: not kam.bindings("s-v6"), "binding of the closed IPv6 flow removed")
        finally:
            stop(kam)
