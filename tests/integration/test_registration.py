"""Outbound registration through real edges to a real registrar (issue 2).

SIPp (tests/sipp/register_expect) is the UA; Kamailio 5.6 runs our KEMI Python.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import TEST_KEY, Kamailio, ProcessError, SippResult, sipp
from outbound.sipmsg import parse_name_addr, split_values
from outbound.tokens import FlowTokenCodec, Verdict, parse_key
from topology import FAULT_HEADER, edge, net, registrar, start, stop, subscriber

UA_IP = net(10)
INSTANCE = '"<urn:uuid:6f1a2b3c-0000-4000-8000-00000000a001>"'
CODEC = FlowTokenCodec([parse_key(TEST_KEY)])


def register(kam: Kamailio, workdir: Path, port: int, *, user: str, contact_params: str = "",
             transport: str = "udp", expires: str = "600", supported: str = "path, outbound",
             extra: str = "X-Case: plain", contact: str | None = None, cid: str | None = None,
             cseq: int = 1) -> SippResult:
    uri = f"<sip:{user}@{UA_IP}:{port};transport={transport};ob>"
    keys = {
        "user": user, "domain": "example.com", "expires": expires, "supported": supported,
        "extra": extra,
        "contact": contact if contact is not None else uri + contact_params,
    }
    # [cseq] is SIPp's own counter: it starts at -base_cseq
    extra_args = ["-base_cseq", str(cseq), *(["-cid_str", cid] if cid else [])]
    return sipp("register_expect", f"{kam.addr}:{kam.port}", workdir=workdir, local_ip=UA_IP,
                local_port=port, transport=transport, keys=keys, extra=extra_args, auth=subscriber(user))


def ob_params(reg_id: str = "1", instance: str = INSTANCE) -> str:
    return f";+sip.instance={instance};reg-id={reg_id}"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_register_through_edge_applies_outbound(topology, workdir, local_port, transport):
    """RFC 5626 §5.1/§6: Path with token and ;ob, 200 with Require: outbound and Flow-Timer."""
    user = f"alice-{transport}"
    result = register(topology["edge1"], workdir, local_port, user=user, contact_params=ob_params(),
                      transport=transport)
    assert result.value("final") == "200", result.log
    assert result.value("require") == "outbound"
    assert result.value("flowtimer") == "25"
    path = parse_name_addr(result.value("path"))
    uri = path.sip_uri
    assert uri.host == net(2) and "lr" in uri.params and "ob" in uri.params
    decoded = CODEC.decode(uri.user or "")
    assert decoded.verdict is Verdict.VALID
    assert decoded.flow is not None
    assert (decoded.flow.transport, decoded.flow.remote_ip, decoded.flow.local_ip) == (transport, UA_IP, net(2))
    if transport == "udp":
        assert decoded.flow.remote_port == local_port and decoded.flow.conn_id == 0
    else:
        assert decoded.flow.conn_id > 0

    [binding] = topology["registrar"].bindings(user)
    assert binding["Instance"] == INSTANCE.strip('"')
    assert binding["Reg-Id"] == 1
    assert binding["Path"] == result.value("path")
    assert binding["CFlags"] & (1 << 6), "binding not marked as an outbound flow"


def test_one_instance_two_reg_ids_through_two_edges(topology, workdir, local_port):
    """RFC 5626 §6, checklist A3.7/A3.11: (AOR, instance, reg-id) keys two bindings."""
    user = "bob-two-flows"
    first = register(topology["edge1"], workdir, local_port, user=user, contact_params=ob_params("1"),
                     cid="flow1-%u@%s")
    second = register(topology["edge2"], workdir, local_port + 1000, user=user, contact_params=ob_params("2"),
                      cid="flow2-%u@%s")
    assert first.value("final") == second.value("final") == "200"
    bindings = {b["Reg-Id"]: b for b in topology["registrar"].bindings(user)}
    assert sorted(bindings) == [1, 2]
    assert f"@{net(2)};" in bindings[1]["Path"] and f"@{net(3)};" in bindings[2]["Path"]
    assert bindings[1]["Instance"] == bindings[2]["Instance"] == INSTANCE.strip('"')

    # Expires: 0 for reg-id 1 removes that binding only (RFC 5626 §4.2.2, A3.12).
    removed = register(topology["edge1"], workdir, local_port, user=user, contact_params=ob_params("1"),
                       expires="0", cid="flow1-%u@%s", cseq=2)
    assert removed.value("final") == "200"
    assert removed.value("flowtimer") == ""
    assert [b["Reg-Id"] for b in topology["registrar"].bindings(user)] == [2]

    # Contact: * with Expires: 0 removes every binding, outbound ones too (RFC 3261 §10.3).
    star = register(topology["edge2"], workdir, local_port + 1000, user=user, contact="*", expires="0",
                    cid="flow2-%u@%s", cseq=3)
    assert star.value("final") == "200"
    assert topology["registrar"].bindings(user) == []


NOT_FIRST_HOP = f"Via: SIP/2.0/UDP {net(99)}:5999;branch=z9hG4bK-lb-1"

BAD_CASES = [
    pytest.param(dict(contact_params=ob_params("0")), "400", id="reg-id-zero"),
    pytest.param(dict(contact_params=ob_params("2147483648")), "400", id="reg-id-too-big"),
    pytest.param(dict(contact_params=ob_params("abc")), "400", id="reg-id-not-a-number"),
    pytest.param(dict(contact_params=ob_params("1") + f", <sip:x@{UA_IP}:5999>" + ob_params("2")), "400",
                 id="two-contacts-with-reg-id"),
    pytest.param(dict(contact_params=ob_params("1"), extra=NOT_FIRST_HOP), "439", id="first-hop-lacks-outbound"),
    pytest.param(dict(contact="*", expires="3600"), "400", id="star-with-expiry"),
    pytest.param(dict(contact=f"<sip:x@{UA_IP}:5999;ob", contact_params=""), "400", id="unterminated-contact"),
]


@pytest.mark.parametrize(("case", "status"), BAD_CASES)
def test_bad_register_gets_its_status_and_stores_nothing(topology, workdir, local_port, case, status):
    user = f"bad-{local_port}"
    result = register(topology["edge1"], workdir, local_port, user=user, **case)
    assert result.value("final") == status, result.messages[-3000:]
    assert result.value("require") == ""
    assert topology["registrar"].bindings(user) == []


def test_reg_id_without_instance_is_ignored_not_an_error(topology, workdir, local_port):
    """RFC 5626 §6 (checklist A3.3, D3): no 400, no Require: outbound."""
    user = "carol-no-instance"
    result = register(topology["edge1"], workdir, local_port, user=user, contact_params=";reg-id=1")
    assert result.value("final") == "200"
    assert result.value("require") == "" and result.value("flowtimer") == ""
    [binding] = topology["registrar"].bindings(user)
    assert binding["Reg-Id"] == 0 and not binding["CFlags"] & (1 << 6)


def test_not_first_hop_without_supported_outbound_ignores_reg_id(topology, workdir, local_port):
    """RFC 5626 §6: not first hop, no ;ob, no Supported: outbound -> reg-id ignored, no Require."""
    user = "dave-behind-lb"
    result = register(topology["edge1"], workdir, local_port, user=user, contact_params=ob_params("1"),
                      supported="path", extra=NOT_FIRST_HOP)
    assert result.value("final") == "200"
    assert result.value("require") == "" and result.value("flowtimer") == ""
    path = parse_name_addr(result.value("path")).sip_uri
    assert path.user is None and "ob" not in path.params, "a non-first hop must not add ;ob"
    [binding] = topology["registrar"].bindings(user)
    assert not binding["CFlags"] & (1 << 6)
    # ignored means not stored either: usrloc must not key this binding by reg-id (A3.2)
    assert binding["Reg-Id"] == 0, binding
    assert "6f1a2b3c" in binding["Instance"], binding


def test_register_without_reg_id_gets_plain_path_and_no_require(topology, workdir, local_port):
    user = "erin-plain"
    result = register(topology["edge1"], workdir, local_port, user=user, contact_params="")
    assert result.value("final") == "200"
    assert result.value("require") == ""
    path = parse_name_addr(result.value("path")).sip_uri
    assert path.user is None and "ob" not in path.params and "lr" in path.params


@pytest.mark.parametrize("target", ["edge1", "registrar"])
def test_python_exception_in_route_ends_in_500_and_logged_traceback(topology, workdir, local_port, target):
    kam = topology[target]
    user = f"fault-{target}"
    result = register(kam, workdir, local_port, user=user, contact_params=ob_params(),
                      extra=f"{FAULT_HEADER}: on")
    assert result.value("final") == "500"
    log = kam.log()
    assert "Traceback (most recent call last)" in log and "InjectedFault" in log
    assert topology["registrar"].bindings(user) == []


def test_invalid_yaml_stops_kamailio_naming_key_and_file(workdir):
    kam = registrar(workdir, name="bad-yaml", port=5098)
    kam.yaml_text = "registrar:\n  flow_timer: 5000\n"
    with pytest.raises(ProcessError):
        start(kam)
    stop(kam)
    assert "registrar.flow_timer" in kam.log() and "bad-yaml.yaml" in kam.log()


def test_edge_without_key_refuses_to_start(workdir):
    kam = edge(workdir, "no-key", net(4), f"sip:{net(1)}:5070", key="")
    with pytest.raises(ProcessError):
        start(kam)
    stop(kam)
    assert "flow_tokens" in kam.log() and "no key" in kam.log()


def test_flow_token_survives_restart_and_is_valid_on_a_peer_edge(workdir, local_port):
    """Tokens come from configured keys, so another edge sharing the key (or this
    one after a restart) decodes them (unlike Kamailio 5.6's flow_token_secret)."""
    reg = start(registrar(workdir, name="restart-reg", addr=net(5)))
    try:
        tokens = []
        for run in range(2):
            kam = start(edge(workdir, f"restart-edge-{run}", net(6), reg.uri))
            try:
                result = register(kam, workdir, local_port, user="frank", contact_params=ob_params())
                tokens.append(parse_name_addr(result.value("path")).sip_uri.user)
            finally:
                stop(kam)
        assert tokens[0] == tokens[1], "same UDP flow, same key: same token across a restart"
        assert CODEC.decode(tokens[0] or "").verdict is Verdict.VALID
    finally:
        stop(reg)


def test_new_call_id_for_one_reg_id_keeps_the_other_flows(topology, workdir, local_port):
    """RFC 5626 §6: bindings are keyed by (AOR, instance, reg-id). Kamailio 5.6's
    usrloc drops every binding of the instance on a new Call-ID (docs/design.md,
    "Kamailio 5.6 behaviour we work around")."""
    user = "grace-reboot"
    for reg_id, kam, port, cid in ((1, "edge1", local_port, "a-%u@%s"), (2, "edge2", local_port + 1000, "b-%u@%s")):
        result = register(topology[kam], workdir, port, user=user, contact_params=ob_params(str(reg_id)), cid=cid)
        assert result.value("final") == "200"
    rebooted = register(topology["edge1"], workdir, local_port, user=user, contact_params=ob_params("1"),
                        cid="rebooted-%u@%s")
    assert rebooted.value("final") == "200"
    bindings = {b["Reg-Id"]: b for b in topology["registrar"].bindings(user)}
    assert sorted(bindings) == [1, 2]
    assert bindings[1]["Call-ID"].startswith("rebooted-") and bindings[2]["Call-ID"].startswith("b-")


def listed(result: SippResult) -> dict[int, dict[str, str | None]]:
    """The bindings a 200 lists (its Contacts), by reg-id."""
    contacts = map(parse_name_addr, split_values(result.value("contacts")))
    return {int(c.params.get("reg-id") or 0): c.params for c in contacts}


def test_two_reg_ids_with_one_contact_uri_are_two_bindings_both_listed(topology, workdir, local_port):
    """RFC 5626 §6 / §3.1 (A3.7, A3.11, D1): the key is (AOR, instance, reg-id), not the
    Contact URI; the 2xx lists every binding with its expires (RFC 3261 §10.3 step 8)
    and echoes only this request's Path (RFC 3327 §5.3, A3.14)."""
    user = "ivan-one-uri"
    same_uri = f"<sip:{user}@{UA_IP}:5999;transport=tcp;ob>"
    first = register(topology["edge1"], workdir, local_port, user=user, contact=same_uri + ob_params("1"),
                     cid="one-%u@%s")
    second = register(topology["edge2"], workdir, local_port + 1000, user=user, contact=same_uri + ob_params("2"),
                      cid="two-%u@%s")
    assert first.value("final") == second.value("final") == "200"
    assert sorted(b["Reg-Id"] for b in topology["registrar"].bindings(user)) == [1, 2]
    assert sorted(listed(first)) == [1]
    both = listed(second)
    assert sorted(both) == [1, 2], second.value("contacts")
    assert all(int(params.get("expires") or 0) > 0 for params in both.values())
    [path] = split_values(second.value("path"))
    assert parse_name_addr(path).sip_uri.host == net(3), "the 2xx echoed a Path of another binding"


def test_expires_zero_removes_by_instance_and_reg_id_and_keeps_cseq_order(topology, workdir, local_port):
    """RFC 5626 §4.2.2 / §6 (A3.12): removal matches (instance, reg-id), whatever the
    Contact URI now says; RFC 3261 §10.3 step 7: with the same Call-ID an older
    CSeq fails and changes nothing."""
    user = "judy-moved"
    stored = register(topology["edge1"], workdir, local_port, user=user, contact_params=ob_params("1"),
                      cid="judy-1-%u@%s", cseq=5)
    other = register(topology["edge2"], workdir, local_port + 1000, user=user, contact_params=ob_params("2"),
                     cid="judy-2-%u@%s")
    assert stored.value("final") == other.value("final") == "200"
    moved = f"<sip:{user}@{net(11)}:6000;transport=udp;ob>" + ob_params("1")
    late = register(topology["edge1"], workdir, local_port, user=user, contact=moved, expires="0",
                    cid="judy-1-%u@%s", cseq=4)
    assert late.value("final") == "400", "an older CSeq of the same Call-ID removed a binding"
    assert sorted(b["Reg-Id"] for b in topology["registrar"].bindings(user)) == [1, 2]
    removed = register(topology["edge1"], workdir, local_port, user=user, contact=moved, expires="0",
                       cid="judy-1-%u@%s", cseq=6)
    assert removed.value("final") == "200"
    assert [b["Reg-Id"] for b in topology["registrar"].bindings(user)] == [2]
    assert sorted(listed(removed)) == [2]


def test_phone_without_supported_path_registers_through_the_edge(topology, workdir, local_port):
    """RFC 3327 §5.3 (checklist C6, issue 13 item 4): most phones never send
    Supported: path. The edge's Path is stored all the same (calls reach the
    phone through its edge) and, the UA not knowing Path, the 2xx echoes none."""
    user = f"nopath-{local_port}"
    result = register(topology["edge1"], workdir, local_port, user=user, supported="outbound",
                      contact_params=ob_params())
    assert result.value("final") == "200", result.messages[-3000:]
    assert result.value("path") == ""
    assert result.value("require") == "outbound"
    [binding] = topology["registrar"].bindings(user)
    path = parse_name_addr(binding["Path"]).sip_uri
    assert path.host == net(2) and "ob" in path.params
    assert CODEC.decode(path.user or "").verdict is Verdict.VALID


@pytest.mark.parametrize("supported", ["path", ""], ids=["path-only", "nothing"])
def test_no_require_outbound_for_a_ua_that_did_not_list_it(topology, workdir, local_port, supported):
    """RFC 3261 §8.2.2.3 (checklist A3.5/A3.7, issue 13 item 2): a server never
    requires an extension the request did not declare. Outbound still keys the
    binding by its flow; neither Require: outbound nor Flow-Timer is sent."""
    user = f"noob-{local_port}"
    result = register(topology["edge1"], workdir, local_port, user=user, supported=supported,
                      contact_params=ob_params())
    assert result.value("final") == "200", result.messages[-3000:]
    assert (result.value("require"), result.value("flowtimer")) == ("", "")
    [binding] = topology["registrar"].bindings(user)
    assert binding["Reg-Id"] == 1 and binding["CFlags"] & (1 << 6)


@pytest.mark.parametrize(("supported", "status", "reg_id"), [("path, outbound", "439", None), ("path", "200", 0)],
                         ids=["supported-outbound", "no-supported-outbound"])
def test_registrar_as_first_hop_claims_no_flow_it_cannot_use(topology, workdir, local_port, supported, status,
                                                              reg_id):
    """RFC 5626 §6 (checklist A3.8/A3.10, issue 13 item 3): the registrar role
    cannot send over a device's own connection, so a REGISTER straight to it
    gets 439 First Hop Lacks Outbound Support (the UA may go through an edge,
    or register without outbound), or, without Supported: outbound, a plain
    binding with the reg-id ignored; never Require: outbound (it got 200 with
    Require: outbound and no flow before the fix)."""
    user = f"direct-{local_port}"
    result = register(topology["registrar"], workdir, local_port, user=user, supported=supported,
                      contact_params=ob_params())
    assert result.value("final") == status, result.messages[-3000:]
    assert result.value("require") == ""
    found = topology["registrar"].bindings(user)
    if reg_id is None:
        assert found == []
    else:
        [binding] = found
        assert binding["Reg-Id"] == reg_id and not binding["CFlags"] & (1 << 6)


def test_an_error_reply_carries_neither_require_outbound_nor_flow_timer(topology, workdir, local_port):
    """RFC 5626 §5.4/§6 (issue 13 item 9): Require: outbound and Flow-Timer go
    into a 2xx only. Kamailio's registrar refuses q=7 (RFC 3261 §20.10: 0..1)
    after outbound applied; its 400 carried both headers before the fix."""
    user = f"badq-{local_port}"
    result = register(topology["edge1"], workdir, local_port, user=user, contact_params=ob_params() + ";q=7")
    assert result.value("final") == "400", result.messages[-3000:]
    answer = result.messages[result.messages.rindex("SIP/2.0 400"):].split("\n\n", 1)[0]
    assert "Invalid q param" in answer, answer
    assert "Require:" not in answer and "Flow-Timer:" not in answer, answer
    assert topology["registrar"].bindings(user) == []
