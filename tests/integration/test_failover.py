"""Forking and flow failover at the home proxy (issue 4, RFC 5626 §7).

One device (one +sip.instance) registers reg-id 1 through edge1 and reg-id 2
through edge2, each over its own TCP flow, each flow held by its own SIPp.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path

import pytest

from actors import call, instance, ob_params, start_callee, wait_bindings, wait_until
from harness import Kamailio, SippRun, describe, start_sipp
from topology import edge, net, registrar, start, stop, subscriber

UA_DEVICE = net(21)
UA_OTHER = net(22)
UA_CALLER = net(31)


def device_with_two_flows(topology: dict[str, Kamailio], workdir: Path, port: int, user: str,
                          callees: list[SippRun], uas1: str = "uas.xml",
                          uas2: str = "uas.xml") -> list[dict]:
    """reg-id 2 via edge2 first, then reg-id 1 via edge1: flow 1 is the most recent."""
    inst = instance(port)
    second = start_callee(topology["edge2"], workdir, port + 1, user, ua_ip=UA_DEVICE, uas=uas2,
                          cparams=ob_params(inst, 2), who="ua2", cid="flow2-%u-%p@%s")
    callees.append(second)
    wait_bindings(topology["registrar"], user, [second], 1)
    first = start_callee(topology["edge1"], workdir, port, user, ua_ip=UA_DEVICE, uas=uas1,
                         cparams=ob_params(inst, 1), who="ua1", cid="flow1-%u-%p@%s")
    callees.append(first)
    return wait_bindings(topology["registrar"], user, [first, second], 2)


def test_dead_flow_fails_over_to_the_other_flow_of_the_instance(topology, workdir, local_port, callees):
    """430 from the edge -> binding removed, next flow of the instance, no 430 to the caller."""
    user = "dev-failover"
    bindings = device_with_two_flows(topology, workdir, local_port, user, callees)
    assert sorted(b["Reg-Id"] for b in bindings) == [1, 2]
    callees[1].kill()  # flow 1 (reg-id 1, via edge1) dies
    result = call(topology["edge2"], workdir, local_port + 10, user, ua_ip=UA_CALLER)
    assert result.value("who") == "ua2"
    assert [b["Reg-Id"] for b in topology["registrar"].bindings(user)] == [2]
    ua2 = callees[0].wait(20)
    assert "call ended" in ua2.log, describe(ua2)
    assert f"of sip:{user}@example.com failed with 430" in topology["registrar"].new_log()


def test_busy_on_flow_1_is_final_for_the_instance(topology, workdir, local_port, callees):
    """RFC 5626 §7: after a final response other than 408/430, no other flow."""
    user = "dev-busy"
    device_with_two_flows(topology, workdir, local_port, user, callees, uas1="uas_busy.xml")
    result = call(topology["edge2"], workdir, local_port + 10, user, ua_ip=UA_CALLER, scenario="uac_final.xml",
                  ruri=f"sip:{user}@example.com", extra="X-Case: busy")
    assert result.value("final") == "486"
    ua1 = callees[1].wait(20)
    assert "call refused busy" in ua1.log
    callees[0].kill()
    ua2 = callees[0].wait(5)
    assert "incoming=" not in ua2.log and "INVITE sip:" not in ua2.messages, "flow 2 was tried after a 486"
    assert sorted(b["Reg-Id"] for b in topology["registrar"].bindings(user)) == [1, 2], "486 removed a binding"


def test_single_binding_aor_is_called(topology, workdir, local_port, callees):
    """Kamailio's example registrar answers 500 here (t_next_contacts returns -2)."""
    user = "dev-single"
    callee = start_callee(topology["edge1"], workdir, local_port, user, ua_ip=UA_DEVICE)
    callees.append(callee)
    wait_bindings(topology["registrar"], user, [callee])
    assert call(topology["edge2"], workdir, local_port + 10, user, ua_ip=UA_CALLER).value("who") == user


def message_times(messages: str, first_line: str) -> list[datetime]:
    """Timestamps of SIPp trace entries whose message starts with ``first_line``."""
    stamps = []
    for block in re.split(r"\n-{40,} ", messages):
        head, _, body = block.partition("\n")
        lines = [line for line in body.splitlines() if line.strip()]
        if lines and lines[1 if "bytes" in lines[0] else 0].startswith(first_line):
            stamps.append(datetime.strptime(head.strip()[:26], "%Y-%m-%d %H:%M:%S.%f"))
    return stamps


@pytest.mark.parametrize("low_q", ["0.5", "0"], ids=["q=0.5", "q=0"])
def test_q_values_parallel_then_serial(topology, workdir, local_port, callees, low_q):
    """RFC 3261 §16.6: q 1.0 and 1.0 ring together; the lower q only after both
    failed. q=0 is the lowest preference (§20.10), not "no q" (usrloc's 0 was
    read as unset, 1.0, and that device rang with the others)."""
    user = f"three-devices-q{low_q}"
    specs = [("d1", "1.0", "uas_busy.xml"), ("d2", "1.0", "uas_busy.xml"), ("d3", low_q, "uas.xml")]
    for index, (who, q, uas) in enumerate(specs):
        callees.append(start_callee(topology["edge1"], workdir, local_port + index, user, ua_ip=UA_DEVICE, uas=uas,
                                    cparams=ob_params(instance(local_port + index), 1, f";q={q}"), who=who))
    wait_bindings(topology["registrar"], user, callees, 3)
    result = call(topology["edge2"], workdir, local_port + 10, user, ua_ip=UA_CALLER)
    assert result.value("who") == "d3"
    runs = [callee.wait(20) for callee in callees]
    invite_d1 = message_times(runs[0].messages, "INVITE sip:")[0]
    invite_d2 = message_times(runs[1].messages, "INVITE sip:")[0]
    busy_d1 = message_times(runs[0].messages, "SIP/2.0 486")[0]
    busy_d2 = message_times(runs[1].messages, "SIP/2.0 486")[0]
    invite_d3 = message_times(runs[2].messages, "INVITE sip:")[0]
    assert invite_d1 < busy_d2 and invite_d2 < busy_d1, "the two q=1.0 devices did not ring in parallel"
    assert invite_d3 > max(busy_d1, busy_d2), f"the q={low_q} device rang before the others failed"


def test_outbound_device_and_plain_contact_ring_together(topology, workdir, local_port, callees):
    """RFC 5626 §6 (A3.6): outbound and non-outbound bindings of one AOR coexist and
    are forked in parallel; the outbound one rings until the plain one answers."""
    user = "mixed"
    plain = start_callee(topology["edge2"], workdir, local_port + 1, user, ua_ip=UA_OTHER, cparams="",
                         transport="udp", who="plain")
    device = start_callee(topology["edge1"], workdir, local_port, user, ua_ip=UA_DEVICE, uas="uas_ring.xml",
                          who="outbound")
    callees += [plain, device]
    bindings = wait_bindings(topology["registrar"], user, callees, 2)
    assert sorted(b["Reg-Id"] for b in bindings) == [0, 1]
    result = call(topology["edge2"], workdir, local_port + 10, user, ua_ip=UA_CALLER)
    assert result.value("who") == "plain"
    assert "call cancelled" in device.wait(20).log, "the outbound device was not forked to"


def test_killed_edge_is_given_up_quickly_and_the_call_moves_on(workdir, local_port, callees):
    """Edge 1 dies outright (no 100 Trying): the short first-reply timer moves the
    call to flow 2 well within the caller's own timeout."""
    reg = start(registrar(workdir, name="reg-kill", addr=net(50)))
    edges = [start(edge(workdir, f"edge-kill-{i}", net(50 + i), reg.uri)) for i in (1, 2)]
    try:
        topo = {"registrar": reg, "edge1": edges[0], "edge2": edges[1]}
        user = "dev-edge-dies"
        device_with_two_flows(topo, workdir, local_port, user, callees)
        edges[0].kill()
        started = time.monotonic()
        result = call(edges[1], workdir, local_port + 10, user, ua_ip=UA_CALLER, timeout=12)
        elapsed = time.monotonic() - started
        assert result.value("who") == "ua2"
        print(f"call answered over edge 2 after {elapsed:.2f}s")
        assert [b["Reg-Id"] for b in reg.bindings(user)] == [2]
        assert "failed with 408 (local)" in reg.new_log()
    finally:
        for kam in (*edges, reg):
            stop(kam)


def test_busy_device_is_not_hidden_by_another_devices_dead_flow(topology, workdir, local_port, callees):
    """Checklist A6.3: tm ranks 430 before 486 (4xx by code); a dead flow's 430 must
    rank last, so the caller hears the other device's 486, never 430 or 480."""
    user = "busy-and-gone"
    busy = start_callee(topology["edge1"], workdir, local_port, user, ua_ip=UA_DEVICE, uas="uas_busy.xml",
                        cparams=ob_params(instance(local_port), 1), who="busy")
    gone = start_callee(topology["edge1"], workdir, local_port + 1, user, ua_ip=UA_DEVICE,
                        cparams=ob_params(instance(local_port + 1), 1), who="gone")
    callees += [busy, gone]
    wait_bindings(topology["registrar"], user, callees, 2)
    gone.kill()  # its edge answers 430 at once; the other device rings, then 486
    result = call(topology["edge2"], workdir, local_port + 10, user, ua_ip=UA_CALLER, scenario="uac_final.xml",
                  ruri=f"sip:{user}@example.com", extra="X-Case: busy-and-gone")
    assert result.value("final") == "486", result.messages[-3000:]
    assert "SIP/2.0 486 Busy Here" in result.messages, "the busy device's reason phrase was lost"
    assert "call refused busy" in busy.wait(20).log
    assert f"of sip:{user}@example.com failed with 430" in topology["registrar"].new_log()


def test_a_408_the_device_sends_reaches_the_caller(topology, workdir, local_port, callees):
    """A device's own 408 is its answer, not a flow failure (issue 13 item 7,
    RFC 3261 §16.7): the caller hears 408 (it heard 480 before the fix)."""
    user = "dev-own-408"
    callee = start_callee(topology["edge1"], workdir, local_port, user, ua_ip=UA_OTHER, uas="uas_timeout.xml",
                          cparams=ob_params(instance(local_port), 1))
    callees.append(callee)
    wait_bindings(topology["registrar"], user, [callee])
    result = call(topology["edge2"], workdir, local_port + 10, user, ua_ip=UA_CALLER, scenario="uac_final.xml",
                  ruri=f"sip:{user}@example.com", extra="X-Case: own-408")
    assert result.value("final") == "408"
    assert len(topology["registrar"].bindings(user)) == 1, "a device's answer removes no binding"


def test_a_flow_registered_again_while_the_call_waits_on_the_old_one_is_kept_and_called(topology, workdir,
                                                                                        local_port, callees):
    """RFC 5626 §7: only the flow that failed is removed. The device's first flow
    carries the INVITE and nothing comes back; meanwhile the device registers the
    same reg-id again (same Call-ID, higher CSeq) over a new connection, so usrloc
    updates that binding in place. The edge's 430 for the old flow then must not
    remove the new registration: the call goes to the new flow (it found the race
    in the soak: the binding was removed and the device got 404 until its refresh)."""
    user = "dev-again"
    inst = instance(local_port)
    registrar_kam, edge1 = topology["registrar"], topology["edge1"]
    old = start_callee(edge1, workdir, local_port, user, ua_ip=UA_DEVICE, uas="uas_silent.xml",
                       cparams=ob_params(inst, 1), who="ua-old", cid="again-flow@test")
    callees.append(old)
    [first] = wait_bindings(registrar_kam, user, [old])
    caller = start_sipp("caller/uac_short.xml", f"{topology['edge2'].addr}:{topology['edge2'].port}",
                        workdir=workdir, local_ip=UA_CALLER, local_port=local_port + 10, timeout=20,
                        auth=subscriber("alice"), keys={"callee": user, "domain": "example.com", "user": "alice"})
    wait_until(lambda: "incoming=" in old_log(old), "the INVITE on the old flow")
    new = start_callee(edge1, workdir, local_port + 1, user, ua_ip=UA_DEVICE, cparams=ob_params(inst, 1),
                       who="ua-new", cid="again-flow@test", cseq=3)
    callees.append(new)
    wait_until(lambda: [b["Path"] for b in registrar_kam.bindings(user)] not in ([], [first["Path"]]),
               "the registration over the new flow")
    result = caller.wait()
    assert result.returncode == 0, describe(result)
    assert result.value("who") == "ua-new", describe(result)
    log = registrar_kam.new_log()
    assert f"430 from {first['Ruid']} of sip:{user}@example.com, registered again over another flow since" in log
    assert [b["Path"] for b in registrar_kam.bindings(user)] != [first["Path"]]
    assert len(registrar_kam.bindings(user)) == 1


def old_log(run: SippRun) -> str:
    path = run.run_dir / "log.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_nothing_answered_at_all_gives_the_caller_408(workdir, local_port, callees):
    """The only flow's edge is dead: no final response at all comes back, so the
    caller hears 408 (RFC 3261 §16.7 step 6, checklist C3; it heard 480 before
    issue 13 item 7)."""
    reg = start(registrar(workdir, name="reg-silent", addr=net(55)))
    edges = [start(edge(workdir, f"edge-silent-{i}", net(55 + i), reg.uri)) for i in (1, 2)]
    try:
        user = "dev-silent"
        callee = start_callee(edges[0], workdir, local_port, user, ua_ip=UA_OTHER,
                              cparams=ob_params(instance(local_port), 1))
        callees.append(callee)
        wait_bindings(reg, user, [callee])
        edges[0].kill()
        result = call(edges[1], workdir, local_port + 10, user, ua_ip=UA_CALLER, scenario="uac_final.xml",
                      timeout=12, ruri=f"sip:{user}@example.com", extra="X-Case: silent")
        assert result.value("final") == "408"
        assert "failed with 408 (local)" in reg.new_log()
    finally:
        for kam in (*edges, reg):
            stop(kam)


def test_instances_that_differ_in_the_case_of_their_urn_are_two_devices(topology, workdir, local_port, callees):
    """RFC 5626 §4.1 / RFC 8141 §3.1 (issue 13 item 9): only "urn:" and the
    namespace id compare without case. urn:x-test:Desk and urn:x-test:desk are
    two devices: both ring (both answer 486 here). Before the fix the instance
    ids were lowered whole: one device, one branch, the other never rang."""
    user = "dev-case"
    runs = []
    for n, name in enumerate(("Desk", "desk")):
        run = start_callee(topology["edge1"], workdir, local_port + n, user, ua_ip=UA_OTHER, uas="uas_busy.xml",
                           cparams=ob_params(f"urn:x-test:{name}", 1), who=name, cid=f"case{n}-%u-%p@%s")
        callees.append(run)
        runs.append(run)
        wait_bindings(topology["registrar"], user, runs, n + 1)
    result = call(topology["edge2"], workdir, local_port + 10, user, ua_ip=UA_CALLER, scenario="uac_final.xml",
                  ruri=f"sip:{user}@example.com", extra="X-Case: urn-case")
    assert result.value("final") == "486"
    for run in runs:
        ended = run.wait(20)
        assert "INVITE sip:" in ended.messages, describe(ended)


def test_the_most_recently_registered_flow_is_tried_first_not_the_lowest_reg_id(topology, workdir, local_port,
                                                                                  callees):
    """RFC 5626 §15 (compliance A4.6): the flow refreshed last goes first. Here
    reg-id 1 registers first and reg-id 2 last, so "lowest reg-id first" and
    "most recent first" disagree: reg-id 2 answers."""
    user = "dev-recent"
    inst = instance(local_port)
    older = start_callee(topology["edge1"], workdir, local_port, user, ua_ip=UA_DEVICE,
                         cparams=ob_params(inst, 1), who="ua1", cid="recent1-%u-%p@%s")
    callees.append(older)
    [first] = wait_bindings(topology["registrar"], user, [older], 1)
    # usrloc's last-modified counts whole seconds: the second flow must be a second newer
    wait_until(lambda: time.time() >= first["Last-Modified"] + 1, "the next second of usrloc's clock")
    newer = start_callee(topology["edge2"], workdir, local_port + 1, user, ua_ip=UA_DEVICE,
                         cparams=ob_params(inst, 2), who="ua2", cid="recent2-%u-%p@%s")
    callees.append(newer)
    wait_bindings(topology["registrar"], user, [older, newer], 2)
    result = call(topology["edge2"], workdir, local_port + 10, user, ua_ip=UA_CALLER)
    assert result.value("who") == "ua2"
