"""Serial registration clients (baresip "serreg") across two edges (issue 4, point 6).

The client has two accounts for one device (one +sip.instance): account 1 (priority
0, reg-id 1) through edge 1 and account 2 (priority 1, reg-id 2) through edge 2.
Only one account is active; the idle one is probed with REGISTER Expires: 0, and
when the better one is back the client switches back. The test plays the
client's steps with SIPp and checks the registrar and edges follow.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from actors import call, instance, ob_params, start_callee, wait_bindings, wait_until
from harness import Kamailio, SippResult, sipp
from topology import edge, net, registrar, start, stop, subscriber

UA = net(91)
CALLER = net(92)
USER = "serreg"


@pytest.fixture
def farm(workdir) -> Iterator[dict[str, Kamailio]]:
    reg = start(registrar(workdir, name="reg-serreg", addr=net(85)))
    edges = [start(edge(workdir, f"edge-serreg-{i}", net(85 + i), reg.uri)) for i in (1, 2)]
    yield {"registrar": reg, "edge1": edges[0], "edge2": edges[1]}
    for kam in (*edges, reg):
        stop(kam)


def probe(kam: Kamailio, workdir, port: int, reg_id: int, inst: str, *, expect_answer: bool = True) -> SippResult:
    """The idle account's probe: REGISTER with Expires: 0 for its (instance, reg-id)."""
    return sipp("register_expect", f"{kam.addr}:{kam.port}", workdir=workdir, local_ip=UA, local_port=port,
                transport="udp", timeout=3 if not expect_answer else 10, check=False, auth=subscriber(USER),
                keys={"user": USER, "domain": "example.com", "expires": "0", "supported": "path, outbound",
                      "extra": "X-Serreg: probe", "cseq": "1",
                      "contact": f"<sip:{USER}@{UA}:{port};ob>" + ob_params(inst, reg_id)})


def reg_ids(kam: Kamailio) -> list[int]:
    return sorted(b["Reg-Id"] for b in kam.bindings(USER))


def test_serial_registration_client_moves_calls_and_back(farm, workdir, local_port, callees):
    inst = instance(local_port)
    reg, edge1, edge2 = farm["registrar"], farm["edge1"], farm["edge2"]

    # 1. account 1 active through edge 1: calls go there
    acc1 = start_callee(edge1, workdir, local_port, USER, ua_ip=UA, cparams=ob_params(inst, 1), who="acc1",
                        cid="acc1-%u-%p@%s")
    callees.append(acc1)
    wait_bindings(reg, USER, [acc1])
    # the idle account 2 probes edge 2: removes nothing but its own (absent) binding
    assert probe(edge2, workdir, local_port + 50, 2, inst).value("final") == "200"
    assert reg_ids(reg) == [1]
    assert call(edge2, workdir, local_port + 60, USER, ua_ip=CALLER).value("who") == "acc1"

    # 2. edge 1 fails; the client falls back to account 2 through edge 2
    edge1.kill()
    acc1.kill()
    acc2 = start_callee(edge2, workdir, local_port + 1, USER, ua_ip=UA, cparams=ob_params(inst, 2), who="acc2",
                        cid="acc2-%u-%p@%s")
    callees.append(acc2)
    wait_bindings(reg, USER, [acc2], 2)
    assert call(edge2, workdir, local_port + 61, USER, ua_ip=CALLER).value("who") == "acc2"
    assert "call ended" in acc2.wait(20).log
    acc2 = start_callee(edge2, workdir, local_port + 2, USER, ua_ip=UA, cparams=ob_params(inst, 2), who="acc2",
                        cid="acc2b-%u-%p@%s")
    callees.append(acc2)
    wait_until(lambda: any(b["Call-ID"].startswith("acc2b-") for b in reg.bindings(USER)), "acc2 re-registered")

    # 3. probing account 1 while edge 1 is down: no answer, nothing removed
    assert probe(edge1, workdir, local_port + 51, 1, inst, expect_answer=False).value("final") == ""
    assert 2 in reg_ids(reg)

    # 4. edge 1 is back: the probe succeeds and removes only account 1's binding
    edge1.proc = None
    start(edge1)
    assert probe(edge1, workdir, local_port + 52, 1, inst).value("final") == "200"
    assert reg_ids(reg) == [2]

    # 5. switch back: account 1 registers again, account 2 unregisters; calls follow
    acc1 = start_callee(edge1, workdir, local_port + 3, USER, ua_ip=UA, cparams=ob_params(inst, 1), who="acc1-back",
                        cid="acc1b-%u-%p@%s")
    callees.append(acc1)
    wait_bindings(reg, USER, [acc1], 2)
    assert probe(edge2, workdir, local_port + 53, 2, inst).value("final") == "200"
    assert reg_ids(reg) == [1]
    assert call(edge2, workdir, local_port + 62, USER, ua_ip=CALLER).value("who") == "acc1-back"
