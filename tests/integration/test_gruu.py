"""GRUUs of the instance bindings (issue 13, RFC 5627) at the registrar and the single server.

Devices (tests/sipp/gruu) register asking for GRUUs, refresh once, hold their
flows and answer with their public GRUU as Contact; callers call a GRUU
(tests/sipp/gruu/uac.xml, or caller/uac_final.xml for a call that must fail).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from actors import instance, ob_params, wait_bindings
from harness import Kamailio, SippResult, SippRun, describe, read_log, sipp, start_sipp
from outbound.bindings import normalize_instance
from outbound.sipmsg import parse_name_addr, split_values
from topology import net, registrar, single, start, stop, subscriber

UA_DEVICE = net(41)
UA_OTHER = net(42)
UA_CALLER = net(43)
DOMAIN = "example.com"


def start_device(kam: Kamailio, workdir: Path, port: int, user: str, inst: str, *, reg_id: int = 1,
                 who: str | None = None, cid: str | None = None, ua_ip: str = UA_DEVICE) -> SippRun:
    """One flow of ``inst`` asking for GRUUs (tests/sipp/gruu/register.xml), registered and refreshed."""
    run = start_sipp("gruu/register.xml", f"{kam.addr}:{kam.port}", workdir=workdir, local_ip=ua_ip,
                     local_port=port, transport="tcp", timeout=60, auth=subscriber(user), oocsf="gruu/uas.xml",
                     keys={"user": user, "domain": DOMAIN, "expires": "600", "who": who or user,
                           "cparams": ob_params(inst, reg_id)}, extra=["-cid_str", cid] if cid else None)
    deadline = time.monotonic() + 10
    while "registered gruu=" not in read_log(run.run_dir / "log.log"):
        if not run.alive:
            raise AssertionError("device SIPp ended before it registered:\n" + describe(run.wait(1)))
        assert time.monotonic() < deadline, "device did not register:\n" + describe(run.wait(1))
        time.sleep(0.05)
    return run


def contacts(log: str, inst: str) -> list[dict[str, str]]:
    """The parameters of ``inst``'s Contact in each logged 200 (contacts=...), quotes removed."""
    found = []
    for line in log.splitlines():
        if not line.startswith("contacts="):
            continue
        for value in split_values(line[len("contacts="):]):
            params = parse_name_addr(value).params
            if normalize_instance(params.get("+sip.instance") or "") == inst:
                found.append({k: (v or "").strip('"') for k, v in params.items()})
    return found


def device_gruus(run: SippRun, inst: str) -> tuple[str, list[str]]:
    """The device's public GRUU and its temporary GRUUs, one per 200."""
    seen = contacts(read_log(run.run_dir / "log.log"), inst)
    publics = {c["pub-gruu"] for c in seen}
    assert len(publics) == 1, seen
    return publics.pop(), [c["temp-gruu"] for c in seen]


def call_gruu(kam: Kamailio, workdir: Path, port: int, ruri: str, user: str = "gruu-caller") -> SippResult:
    """A call to ``ruri`` that is answered, with a re-INVITE and a BYE in the dialog."""
    return sipp("gruu/uac.xml", f"{kam.addr}:{kam.port}", workdir=workdir, local_ip=UA_CALLER, local_port=port,
                transport="udp", timeout=15, auth=subscriber(user), keys={"ruri": ruri, "user": user, "domain": DOMAIN})


def call_fails(kam: Kamailio, workdir: Path, port: int, ruri: str, user: str = "gruu-caller") -> str:
    """The final status of a call to ``ruri`` that must fail (caller/uac_final.xml)."""
    result = sipp("caller/uac_final.xml", f"{kam.addr}:{kam.port}", workdir=workdir, local_ip=UA_CALLER,
                  local_port=port, transport="udp", timeout=15, check=False, auth=subscriber(user),
                  keys={"ruri": ruri, "callee": "gruu", "user": user, "domain": DOMAIN, "extra": "X-Case: gruu"})
    return result.value("final")


def invited(run: SippRun) -> bool:
    """Whether a device's SIPp received any INVITE."""
    return "INVITE sip:" in read_log(run.run_dir / "messages.log")


def register(kam: Kamailio, workdir: Path, port: int, user: str, contact_params: str, *, supported: str,
             expires: str = "600", extra: str = "X-Case: gruu", cid: str = "gruu-%u@%s", cseq: int = 1) -> SippResult:
    """One REGISTER over UDP (tests/sipp/register_expect): its final status and the Contacts of its 200."""
    keys = {"user": user, "domain": DOMAIN, "expires": expires, "supported": supported, "extra": extra,
            "contact": f"<sip:{user}@{UA_OTHER}:{port};transport=udp;ob>{contact_params}"}
    return sipp("register_expect", f"{kam.addr}:{kam.port}", workdir=workdir, local_ip=UA_OTHER, local_port=port,
                transport="udp", keys=keys, extra=["-base_cseq", str(cseq), "-cid_str", cid], auth=subscriber(user))


def listed(result: SippResult, inst: str) -> dict[str, str]:
    [found] = contacts("contacts=" + result.value("contacts"), inst)
    return found


def test_register_asking_for_gruus_gets_a_public_and_a_new_temporary_one(topology, workdir, local_port):
    """RFC 5627 §5.1-§5.2, §5.4: pub-gruu is the AOR with gr=<instance>, the same at
    every refresh; temp-gruu is new in every 2xx; none without Supported: gruu;
    Require: gruu is understood (it was 420 before)."""
    user, inst = "gruu-reg", instance(local_port)
    first = register(topology["edge1"], workdir, local_port, user, ob_params(inst, 1), supported="path, outbound, gruu")
    assert first.value("final") == "200", first.messages[-3000:]
    gruus = listed(first, inst)
    assert gruus["pub-gruu"] == f"sip:{user}@{DOMAIN};gr={inst}"
    temp = parse_name_addr(f"<{gruus['temp-gruu']}>").sip_uri
    assert temp.user and temp.user.startswith("tgruu.") and temp.host == DOMAIN and "gr" in temp.params
    assert user not in temp.user and inst not in temp.user, "a temporary GRUU hides its AOR and instance"
    assert gruus["reg-id"] == "1" and int(gruus["expires"]) > 0
    assert first.value("require") == "outbound"

    refreshed = register(topology["edge1"], workdir, local_port, user, ob_params(inst, 1),
                         supported="path, outbound, gruu", extra="Require: gruu", cseq=5)
    assert refreshed.value("final") == "200", refreshed.messages[-3000:]
    again = listed(refreshed, inst)
    assert again["pub-gruu"] == gruus["pub-gruu"] and again["temp-gruu"] != gruus["temp-gruu"]

    plain = register(topology["edge1"], workdir, local_port, user, ob_params(inst, 1), supported="path, outbound",
                     cseq=9)
    assert plain.value("final") == "200"
    assert "pub-gruu" not in listed(plain, inst) and "temp-gruu" not in plain.value("contacts")
    assert len(topology["registrar"].bindings(user)) == 1


def test_a_register_asking_for_gruus_that_kamailio_refuses_gets_kamailios_own_answer(topology, workdir, local_port):
    """Saved without Kamailio's reply, a REGISTER it refuses (a Call-ID over 255
    characters) still gets its answer (reg_send_reply): 400 with P-Registrar-Error,
    nothing stored. A regression guard: it passed before too."""
    user = "gruu-long"
    result = register(topology["edge1"], workdir, local_port, user, ob_params(instance(local_port), 1),
                      supported="path, outbound, gruu", cid="x" * 300 + "-%u@%s")
    assert result.value("final") == "400" and "P-Registrar-Error: Callid too long" in result.messages
    assert topology["registrar"].bindings(user) == []


def test_a_call_to_a_public_gruu_reaches_that_instance_only(topology, workdir, local_port, callees):
    """RFC 5627 §6.1: two instances share the AOR; each one's public GRUU reaches
    it alone (before, both were forked to, like the AOR)."""
    user = "gruu-two"
    phone = start_device(topology["edge1"], workdir, local_port, user, instance(local_port), who="phone")
    laptop = start_device(topology["edge2"], workdir, local_port + 1, user, instance(local_port + 1), who="laptop",
                          ua_ip=UA_OTHER)
    callees += [phone, laptop]
    wait_bindings(topology["registrar"], user, callees, 2)
    laptop_gruu, _ = device_gruus(laptop, instance(local_port + 1))
    assert call_gruu(topology["edge2"], workdir, local_port + 10, laptop_gruu).value("who") == "laptop"
    assert not invited(phone), "the other instance was called too"
    phone_gruu, _ = device_gruus(phone, instance(local_port))
    assert call_gruu(topology["edge2"], workdir, local_port + 11, phone_gruu).value("who") == "phone"


def test_a_gruu_call_fails_over_between_the_instances_flows_on_430(topology, workdir, local_port, callees):
    """RFC 5627 §6.1 with RFC 5626 §7: the GRUU's instance has two flows; the
    first one's edge answers 430, the call moves to its other flow and never to
    the other instance of the AOR."""
    user, inst = "gruu-failover", instance(local_port)
    flow2 = start_device(topology["edge2"], workdir, local_port + 1, user, inst, reg_id=2, who="flow2",
                         cid="gflow2-%u-%p@%s")
    wait_bindings(topology["registrar"], user, [flow2], 1)
    flow1 = start_device(topology["edge1"], workdir, local_port, user, inst, reg_id=1, who="flow1",
                         cid="gflow1-%u-%p@%s")
    other = start_device(topology["edge1"], workdir, local_port + 2, user, instance(local_port + 2), who="other",
                         ua_ip=UA_OTHER)
    callees += [flow2, flow1, other]
    wait_bindings(topology["registrar"], user, callees, 3)
    public, _ = device_gruus(flow1, inst)
    flow1.kill()  # flow 1 (the most recent) dies: edge1 answers 430
    assert call_gruu(topology["edge2"], workdir, local_port + 10, public).value("who") == "flow2"
    assert f"of sip:{user}@{DOMAIN} failed with 430" in topology["registrar"].new_log()
    assert not invited(other), "a GRUU call reached another instance"


def test_temporary_gruus_live_with_their_registration_and_die_with_a_new_call_id(topology, workdir, local_port,
                                                                                 callees):
    """RFC 5627 §5.1, §5.3: the temporary GRUUs of the first and the refreshing
    REGISTER both reach the device; once it registers again under a new Call-ID
    (a restart) the old ones are 404 and the new ones reach it."""
    user, inst = "gruu-temp", instance(local_port)
    device = start_device(topology["edge1"], workdir, local_port, user, inst, who="before", cid="gt-a-%u@%s")
    callees.append(device)
    _, (first, refreshed) = device_gruus(device, inst)
    assert first != refreshed
    assert call_gruu(topology["edge2"], workdir, local_port + 10, first).value("who") == "before"
    assert call_gruu(topology["edge2"], workdir, local_port + 11, refreshed).value("who") == "before"

    restarted = start_device(topology["edge1"], workdir, local_port + 1, user, inst, who="after", cid="gt-b-%u@%s")
    callees.append(restarted)
    [binding] = topology["registrar"].bindings(user)
    assert binding["Call-ID"].startswith("gt-b-")
    _, (_, newest) = device_gruus(restarted, inst)
    assert call_fails(topology["edge2"], workdir, local_port + 12, first) == "404"
    assert call_fails(topology["edge2"], workdir, local_port + 13, refreshed) == "404"
    assert call_gruu(topology["edge2"], workdir, local_port + 14, newest).value("who") == "after"


def test_a_gruu_of_an_absent_instance_is_480_and_one_never_made_is_404(topology, workdir, local_port, callees):
    """RFC 5627 §6.1: the instance registered and left (Expires: 0): its public
    and temporary GRUUs get 480; a public GRUU of an instance never registered
    and a temporary GRUU we never made get 404. Another device of the AOR is
    never called (before, every case reached it like the AOR)."""
    user, gone, stranger = "gruu-absent", instance(local_port), instance(local_port + 7)
    device = start_device(topology["edge1"], workdir, local_port + 1, user, instance(local_port + 1), who="device")
    callees.append(device)
    stored = register(topology["edge2"], workdir, local_port, user, ob_params(gone, 1),
                      supported="path, outbound, gruu", cid="gone-%u@%s")
    assert stored.value("final") == "200"
    gruus = listed(stored, gone)
    removed = register(topology["edge2"], workdir, local_port, user, ob_params(gone, 1), supported="path, outbound",
                       expires="0", cid="gone-%u@%s", cseq=3)
    assert removed.value("final") == "200"
    assert len(topology["registrar"].bindings(user)) == 1
    token = parse_name_addr(f"<{gruus['temp-gruu']}>").sip_uri.user or ""
    forged = gruus["temp-gruu"].replace(token, token[:-2] + ("AA" if token[-2:] != "AA" else "BB"))
    cases = [(gruus["pub-gruu"], "480"), (gruus["temp-gruu"], "480"),
             (f"sip:{user}@{DOMAIN};gr={stranger}", "404"), (forged, "404"),
             (f"sip:tgruu.nothing-of-ours@{DOMAIN};gr", "404")]
    for index, (ruri, status) in enumerate(cases):
        assert call_fails(topology["edge2"], workdir, local_port + 10 + index, ruri) == status, ruri
    assert not invited(device), "a call to a GRUU of another instance reached this device"


def test_gruu_as_contact_keeps_the_dialog_on_the_flow_through_the_edges(topology, workdir, local_port, callees):
    """RFC 5627 §4.4 with RFC 5626 §5.3: the device answers with its public
    GRUU (learned from its 2xx) as Contact; the re-INVITE and BYE follow the
    Record-Route (the edge's entry carries the flow token) to the GRUU over its flow."""
    user, inst = "gruu-dialog", instance(local_port)
    device = start_device(topology["edge1"], workdir, local_port, user, inst, who="device")
    callees.append(device)
    public, _ = device_gruus(device, inst)
    result = call_gruu(topology["edge2"], workdir, local_port + 10, public)
    assert result.value("who") == "device"
    assert result.value("reinvite") == "200" and result.value("bye") == "200"
    routes = [parse_name_addr(v).sip_uri for v in split_values(result.value("rr"))]
    assert any(r.host == topology["edge1"].addr and r.user for r in routes), "no edge entry with the flow token"
    device.kill()
    assert f"bye-to={public}" in read_log(device.run_dir / "log.log")


@pytest.fixture(scope="module")
def server(workdir):
    kam = start(single(workdir, name="gruu-single", addr=net(66)))
    yield kam
    stop(kam)


def test_the_single_server_gives_and_honours_gruus(server, workdir, local_port, callees):
    """RFC 5627 §5-§6.1 in single-server mode: the same 2xx GRUUs, and each
    instance's GRUUs reach that instance alone over the flow we hold."""
    user = "gruu-single"
    phone = start_device(server, workdir, local_port, user, instance(local_port), who="phone")
    laptop = start_device(server, workdir, local_port + 1, user, instance(local_port + 1), who="laptop",
                          ua_ip=UA_OTHER)
    callees += [phone, laptop]
    wait_bindings(server, user, callees, 2)
    laptop_public, _ = device_gruus(laptop, instance(local_port + 1))
    _, (_, phone_temp) = device_gruus(phone, instance(local_port))
    assert laptop_public == f"sip:{user}@{DOMAIN};gr={instance(local_port + 1)}"
    assert call_gruu(server, workdir, local_port + 10, laptop_public).value("who") == "laptop"
    assert not invited(phone)
    assert call_gruu(server, workdir, local_port + 11, phone_temp).value("who") == "phone"


def test_with_nogruu_no_gruu_is_given_and_a_gr_uri_is_its_aor(workdir, local_port, callees):
    """-A WITH_NOGRUU: the 2xx carries no GRUU (Kamailio's own reply), Require:
    gruu is still understood (RFC 5627 §5.1), a Request-URI with gr is looked
    up as the AOR."""
    reg = start(registrar(workdir, name="reg-nogruu", addr=net(67), defines={"WITH_NOGRUU": ""}))
    try:
        user, inst = "gruu-off", instance(local_port)
        # straight to the registrar role: an instance without reg-id (outbound is for
        # edges there, issue 13 item 3; GRUU needs only the instance, RFC 5627 §4.1)
        result = register(reg, workdir, local_port, user, f';+sip.instance="<{inst}>"', supported="path, gruu",
                          extra="Require: gruu")
        assert result.value("final") == "200", result.messages[-3000:]
        assert "-gruu=" not in result.value("contacts") and len(reg.bindings(user)) == 1
        assert call_fails(reg, workdir, local_port + 10, f"sip:{user}@{DOMAIN};gr=urn:uuid:nobody") != "404"
    finally:
        stop(reg)
