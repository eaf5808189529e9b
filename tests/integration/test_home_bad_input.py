"""Bad input at the home proxy (issue 4): defined behaviour, a log line, no crash,
no lost unrelated binding."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import call, instance, ob_params, start_callee, wait_bindings, wait_until
from harness import Kamailio, start_sipp
from topology import farm_with_two_edges, net, registrar, subscriber

UA = net(41)
UA_PLAIN = net(42)
CALLER = net(43)
RAW = net(44)
CROWD = 200  # bindings of one AOR in test_aor_with_hundreds_of_bindings


@pytest.fixture(scope="module")
def topology(workdir: Path) -> Iterator[dict[str, Kamailio]]:
    """conftest's topology, with a registrar that takes CROWD bindings per AOR
    (auth.max_contacts; the default is 10)."""
    reg = registrar(workdir)
    assert "max_contacts: 10 " in reg.yaml_text
    reg.yaml_text = reg.yaml_text.replace("max_contacts: 10 ", f"max_contacts: {CROWD} ")
    yield from farm_with_two_edges(workdir, reg)


def test_430_from_a_contact_without_flow_keeps_the_binding(topology, workdir, local_port, callees):
    """430 is an edge's word about a flow (RFC 5626 §11.5): from a plain contact it
    removes nothing, and the caller never sees it."""
    user = "plain-430"
    plain = start_sipp("callee_ob/register.xml", f"{topology['edge2'].addr}:5060", workdir=workdir,
                       local_ip=UA_PLAIN, local_port=local_port, transport="udp", timeout=30, auth=subscriber(user),
                       keys={"user": user, "domain": "example.com", "expires": "600", "who": "plain", "cparams": "",
                             "cseq": "1", "cseq_auth": "2"},
                       oocsf="callee_ob/uas_flow_failed.xml")
    callees.append(plain)
    wait_bindings(topology["registrar"], user, [plain])
    result = call(topology["edge2"], workdir, local_port + 1, user, ua_ip=CALLER, scenario="uac_final.xml",
                  ruri=f"sip:{user}@example.com", extra="X-Case: plain-430")
    assert result.value("final") == "480"
    assert len(topology["registrar"].bindings(user)) == 1
    assert "which is no outbound flow: binding kept" in topology["registrar"].new_log()


def test_reply_for_no_transaction_is_logged_and_forwarded_statelessly(topology, workdir):
    """RFC 3261 §16.7: a response with no matching transaction goes on along its Via."""
    registrar = topology["registrar"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((RAW, 0))
        sock.settimeout(5)
        host, port = sock.getsockname()
        stray = (
            "SIP/2.0 200 OK\r\n"
            f"Via: SIP/2.0/UDP {registrar.addr}:{registrar.port};branch=z9hG4bKnosuchtransaction.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-stray-1\r\n"
            "From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>;tag=2\r\n"
            "Call-ID: stray-reply@test\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n"
        )
        sock.sendto(stray.encode(), (registrar.addr, registrar.port))
        forwarded, _ = sock.recvfrom(4096)
    assert forwarded.startswith(b"SIP/2.0 200 OK") and b"stray-reply@test" in forwarded
    assert b"z9hG4bKnosuchtransaction" not in forwarded, "the proxy must remove its own Via"
    assert "matches no transaction: forwarded statelessly" in registrar.new_log()
    assert registrar.rpc("core.uptime")


def test_aor_with_hundreds_of_bindings(topology, workdir, local_port, callees):
    """Hundreds of instances: one wave of at most home.max_parallel_branches
    (8) branches, the rest serially; the caller can cancel; nothing else lost."""
    user = "crowd"
    bystander = start_callee(topology["edge1"], workdir, local_port, "bystander", ua_ip=UA)
    callees.append(bystander)
    wait_bindings(topology["registrar"], "bystander", [bystander])
    crowd = start_sipp("many_bindings/register.xml", f"{topology['edge1'].addr}:5060", workdir=workdir,
                       local_ip=UA, local_port=local_port + 1, transport="udp", calls=CROWD, timeout=60, rate=200,
                       auth=subscriber(user), keys={"user": user, "domain": "example.com"})
    callees.append(crowd)
    wait_until(lambda: len(topology["registrar"].bindings(user)) == CROWD, f"{CROWD} bindings", timeout=20)
    invites_before = invite_count(topology["edge1"])
    result = call(topology["edge2"], workdir, local_port + 2, user, ua_ip=CALLER, scenario="uac_cancel.xml")
    assert result.value("final") == "487"
    assert invite_count(topology["edge1"]) - invites_before == 8
    assert len(topology["registrar"].bindings("bystander")) == 1
    assert topology["registrar"].rpc("core.uptime")


def invite_count(kam) -> int:
    for line in kam.rpc("stats.get_statistics", "core:"):
        key, _, value = line.partition(" = ")
        if key == "core:rcv_requests_invite":
            return int(value)
    raise KeyError("core:rcv_requests_invite")


def test_binding_with_garbage_path_is_skipped_not_fatal(topology, workdir, local_port, callees):
    """A binding whose Path cannot be parsed (put in over RPC: our registrar never
    stores one) is skipped with a log line; the good flow is called."""
    user = "garbage-path"
    good = start_callee(topology["edge1"], workdir, local_port, user, ua_ip=UA,
                        cparams=ob_params(instance(local_port), 1))
    callees.append(good)
    wait_bindings(topology["registrar"], user, [good])
    topology["registrar"].rpc("ul.add", "location", user, f"sip:{user}@{UA}:9", 600, 1.0,
                              "<sip:[zz;lr>", 0, 64, 4294967295)
    assert len(topology["registrar"].bindings(user)) == 2
    assert call(topology["edge2"], workdir, local_port + 1, user, ua_ip=CALLER).value("who") == user
    assert "has an unusable Path" in topology["registrar"].new_log()
    assert "call ended" in good.wait(20).log
    assert len(topology["registrar"].bindings(user)) == 2, "no binding may be lost"

