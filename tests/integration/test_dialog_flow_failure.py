"""A flow that dies inside a dialog: 430 never reaches the caller (RFC 5626 §11.5, issue 13 item 1).

The callee's SIPp answers, takes the ACK and leaves (its TCP flow closes); the
caller's BYE then names a flow that is gone. The edge holding it answers 430
to the proxy that sent the BYE; the caller hears 408 (RFC 3261 §12.2.1.2: the
UAC ends the dialog), in the edge + registrar farm and in single-server mode.
Before the fix the caller got 430.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from actors import call, start_callee, wait_bindings, wait_until
from harness import Kamailio
from topology import net, single, start, stop

UA_CALLEE = net(120)
UA_CALLER = net(121)


@pytest.fixture(scope="module")
def single_server(workdir) -> Iterator[Kamailio]:
    kam = start(single(workdir, name="single-dialog", addr=net(122)))
    yield kam
    stop(kam)


def call_whose_callee_leaves(home: Kamailio, callee_edge: Kamailio, caller_edge: Kamailio, workdir, port: int,
                             user: str) -> str:
    """The caller's BYE status."""
    callee = start_callee(callee_edge, workdir, port, user, ua_ip=UA_CALLEE, uas="uas_leave.xml")
    wait_bindings(home, user, [callee])
    caller = call(caller_edge, workdir, port + 1, user, ua_ip=UA_CALLER, scenario="uac_bye_late.xml")
    left = callee.wait(20)
    assert "left after the ACK" in left.log, left.log
    return caller.value("bye")


def test_430_of_a_dead_flow_in_a_dialog_reaches_the_caller_as_408_through_the_farm(topology, workdir, local_port):
    """The callee's edge answers 430 to the registrar; the caller, behind the other
    edge, hears 408 (the registrar maps it, RFC 5626 §11.5)."""
    registrar, callee_edge = topology["registrar"], topology["edge1"]
    status = call_whose_callee_leaves(registrar, callee_edge, topology["edge2"], workdir, local_port, "dlg-farm")
    assert status == "408"
    # the registrar's decision line: the next hop's 430 answered 408 toward the endpoint
    decision = re.compile(r"decision=dialog_flow_failed code=408 .*408 Request Timeout to in-dialog BYE "
                          r"\(the next hop answered 430\)")
    wait_until(lambda: decision.search(registrar.new_log()), "the registrar's decision line")
    # the edge's own 430, toward the farm
    assert "is gone, no new connection opened" in callee_edge.new_log()


def test_430_of_a_dead_flow_in_a_dialog_reaches_the_caller_as_408_in_single_mode(single_server, workdir,
                                                                                local_port):
    """The single server holds the dead flow itself: its refusal toward the caller is 408, not 430."""
    status = call_whose_callee_leaves(single_server, single_server, single_server, workdir, local_port, "dlg-single")
    assert status == "408"
    wait_until(lambda: "430 in a dialog, answered 408 toward the endpoint" in single_server.new_log(), "the log line")
