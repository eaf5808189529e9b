"""The key scenarios on the container topology (docker/compose.yaml).

A device (SIPp in ua-b, one +sip.instance) keeps two TCP flows: reg-id 1
through edge1 and reg-id 2 through edge2. A caller (SIPp in ua-a) calls its AOR
through edge2. Edges find the registrar by DNS SRV (_sip._udp.example.com:
reg1 preferred, reg2 backup) served by NSD in the dns container. reg1 and
reg2 are a DMQ pair (WITH_DMQ): a binding saved at one is replicated to the
other, and a registrar that starts again resyncs from its peer.
Authentication is on: every user is a subscriber of reg1 and reg2
(Topology.subscriber), REGISTERs answer a 401 and calls a 407.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import dataclass

from docker_topology import ContainerSipp, Topology
from harness import ROOT, SippResult, describe
from outbound.sipmsg import parse_name_addr

PORTS = itertools.count(20000)
DOMAIN = "example.com"


def instance(n: int) -> str:
    return f"urn:uuid:00000000-0000-4000-8000-{n:012d}"


@dataclass
class Device:
    user: str
    flows: dict[int, ContainerSipp]  # reg-id -> the SIPp holding that flow
    edges: dict[int, str]  # reg-id -> edge service

    def who(self, regid: int) -> str:
        return f"{self.user}-flow{regid}"


def wait_binding(topo: Topology, registrar: str, user: str, regid: int, flow: ContainerSipp,
                 timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for binding in topo.bindings(registrar, user):
            if binding.get("Reg-Id") == regid:
                return binding
        if not flow.alive:
            ended = flow.wait(1)
            raise AssertionError(f"device flow {regid} exited {ended.returncode} before registering:\n"
                                 + describe(ended))
        time.sleep(0.1)
    raise AssertionError(f"no binding reg-id {regid} for {user} on {registrar} after {timeout}s")


TWO_FLOWS = ((2, "edge2"), (1, "edge1"))


def register_device(topo: Topology, user: str, n: int, order: tuple[tuple[int, str], ...] = TWO_FLOWS) -> Device:
    """One device, one flow per (reg-id, edge), registered in the given order:
    reg-id 1 last, so it is the most recent flow and the one tried first."""
    device = Device(user, {}, {})
    for regid, edge in order:
        flow = topo.start_sipp("ua-b", "device_ob/register.xml", f"{topo.addr(edge)}:5060", local_port=next(PORTS),
                               transport="tcp", timeout=150, oocsf="device_ob/uas.xml",
                               keys={"user": user, "domain": DOMAIN, "instance": instance(n), "regid": str(regid),
                                     "expires": "600", "who": device.who(regid)},
                               name=f"{user}-flow{regid}", auth=topo.subscriber(user))
        device.flows[regid] = flow
        device.edges[regid] = edge
        wait_binding(topo, "reg1", user, regid, flow)
    return device


def wait_bindings(topo: Topology, registrar: str, user: str, count: int, timeout: float = 15.0) -> list[dict]:
    """The bindings of ``user`` at ``registrar`` once it holds ``count`` of them
    (replicated from its peer over DMQ, or resynced at its start)."""
    deadline = time.monotonic() + timeout
    while True:
        found = topo.bindings(registrar, user)
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{registrar} holds {len(found)} binding(s) of {user}, not {count}, "
                                 f"after {timeout}s")
        time.sleep(0.1)


def same_bindings(bindings: list[dict]) -> dict[int, tuple]:
    """What must be equal at both registrars of the pair, by reg-id."""
    return {b["Reg-Id"]: (b["AoR"], b["Address"], b["Instance"], b["Path"]) for b in bindings}


def record_routes(result: SippResult) -> str:
    """Every Record-Route of the first 200 OK (INVITE) the caller received (the
    dialog's route set; a re-INVITE's 200 has none)."""
    blocks = re.findall(r"^SIP/2.0 200 .*?(?=^-{5,}|\Z)", result.messages, re.M | re.S)
    invite_ok = [b for b in blocks if re.search(r"^CSeq:\s*\d+ INVITE", b, re.M | re.I)]
    assert invite_ok, "the caller received no 200 OK (INVITE)"
    return "\n".join(re.findall(r"^Record-Route:.*$", invite_ok[0], re.M | re.I))


def call(topo: Topology, user: str, edge: str = "edge2") -> SippResult:
    return topo.sipp("ua-a", "caller/uac.xml", f"{topo.addr(edge)}:5060", local_port=next(PORTS), timeout=20,
                     keys={"callee": user, "domain": DOMAIN, "user": "carol"}, auth=topo.subscriber("carol"))


def test_device_registers_through_two_edges(topo):
    """RFC 5626 §4.2, §6: two flows of one instance, each with the Path of its edge,
    stored side by side; the edge found reg1 by SRV (priority 10), and reg1
    replicated both bindings to reg2 (DMQ)."""
    taken = {reg: topo.accepted_regs(reg) for reg in ("reg1", "reg2")}
    device = register_device(topo, "dana", 1)
    bindings = {b["Reg-Id"]: b for b in topo.bindings("reg1", "dana")}
    assert sorted(bindings) == [1, 2]
    for regid, binding in bindings.items():
        assert binding["Instance"] == f"<{instance(1)}>"
        path = parse_name_addr(binding["Path"])
        assert path.sip_uri.host == topo.addr(device.edges[regid])
        assert "ob" in path.sip_uri.params and path.sip_uri.user, "a flow token in an ;ob Path"
    assert topo.accepted_regs("reg1") > taken["reg1"], "SRV priority 10 (reg1) takes the registrations"
    assert topo.accepted_regs("reg2") == taken["reg2"], "reg2 took no REGISTER itself"
    replicated = wait_bindings(topo, "reg2", "dana", 2)
    assert same_bindings(replicated) == same_bindings(list(bindings.values())), "reg2 holds reg1's bindings"
    # the record ids carry reg1's server_id (KO_SERVER_ID=1): never one that reg2 makes
    assert all(b["Ruid"].startswith("uloc-1-") for b in replicated), replicated


def test_call_is_answered_over_one_flow(topo):
    """RFC 5626 §5.3, §7: the call reaches the device over a registered flow, the
    most recently registered one first; re-INVITE and BYE follow the route set."""
    device = register_device(topo, "erin", 2)
    result = call(topo, "erin")
    assert result.value("who") == device.who(1)
    assert result.value("reinvite") == "200" and result.value("bye") == "200"


def test_flow_killed_next_call_answered_over_the_other_flow(topo):
    """RFC 5626 §5.3.1, §7: flow 1 dies (its SIPp is killed, the kernel closes the
    TCP connection); edge1 answers 430 and the home proxy tries flow 2: the caller
    gets 200 from flow 2 and never sees the 430."""
    device = register_device(topo, "fred", 3)
    assert call(topo, "fred").value("who") == device.who(1)
    device.flows[1].kill()
    result = call(topo, "fred")
    assert result.value("who") == device.who(2)
    assert not re.search(r"^SIP/2.0 430", result.messages, re.M), "the caller saw a 430"


def test_edge_killed_next_call_answered_over_the_other_edge(topo):
    """RFC 5626 §7, §9.3: edge1 dies (container SIGKILL); the home proxy gets no
    answer over it and tries the device's flow through edge2."""
    device = register_device(topo, "gina", 4)
    assert call(topo, "gina").value("who") == device.who(1)
    topo.kill("edge1")
    try:
        result = call(topo, "gina")
        assert result.value("who") == device.who(2)
        assert not re.search(r"^SIP/2.0 430", result.messages, re.M), "the caller saw a 430"
    finally:
        topo.start("edge1")


def one_char_changed(token: str) -> str:
    index = len(token) // 2
    return token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1:]


def test_forged_flow_token_is_refused_with_403(topo):
    """RFC 5626 §5.3.1: a Route whose flow token fails the HMAC check gets 403."""
    register_device(topo, "hank", 5, order=((1, "edge1"),))
    [binding] = topo.bindings("reg1", "hank")
    path = parse_name_addr(binding["Path"]).sip_uri
    forged = one_char_changed(path.user or "")
    result = topo.sipp("ua-a", "caller/uac_final.xml", f"{topo.addr('edge1')}:5060", local_port=next(PORTS),
                       timeout=10, check=False,
                       keys={"callee": "hank", "domain": DOMAIN, "user": "mallory",
                             "ruri": binding["Address"], "extra": f"Route: <sip:{forged}@{path.host};lr;ob>"})
    assert result.value("final") == "403", describe(result)
    assert "forged flow token" in topo.logs("edge1")


def test_registrar_found_by_srv_with_the_first_one_down(topo):
    """RFC 3263 §4.3, RFC 2782: reg1 (priority 10) is down; the edge's REGISTER
    reaches reg2 (priority 20), which challenges it and takes the answer (its own
    subscriber file, the farm's nonce secret), and the device gets its 200."""
    credentials = topo.subscriber("ivan")
    topo.stop("reg1")
    try:
        result = topo.sipp(
            "ua-b", "register_expect", f"{topo.addr('edge1')}:5060", local_port=next(PORTS), transport="tcp",
            timeout=45, check=False, auth=credentials,
            keys={"user": "ivan", "domain": DOMAIN, "expires": "600", "supported": "path, outbound",
                  "extra": "X-Case: srv", "cseq": "1",
                  "contact": f'<sip:ivan@{topo.addr("ua-b")}:5099;transport=tcp;ob>;'
                             f'+sip.instance="<{instance(6)}>";reg-id=1'})
        assert result.value("final") == "200", describe(result)
        [binding] = topo.bindings("reg2", "ivan")
        assert binding["Reg-Id"] == 1
    finally:
        topo.start("reg1")
    # reg1 was down when ivan registered: only its resync from reg2 at start
    # (dmq_usrloc sync) can have brought the binding
    [resynced] = wait_bindings(topo, "reg1", "ivan", 1)
    assert same_bindings([resynced]) == same_bindings([binding])


NONCE_PROBE = r'''
import json, socket, sys

def request(cseq, extra=""):
    return (f"REGISTER sip:example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {ME}:{PORT};branch=z9hG4bK-nonce-{cseq}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:{USER}@example.com>;tag=nonce\r\nTo: <sip:{USER}@example.com>\r\n"
            f"Call-ID: nonce-{USER}@{ME}\r\nCSeq: {cseq} REGISTER\r\n"
            f"Contact: <sip:{USER}@{ME}:{PORT}>\r\nExpires: 60\r\n{extra}Content-Length: 0\r\n\r\n")

def final(sock):
    while True:
        text = sock.recv(65535).decode(errors="replace")
        code = int(text.split(" ", 2)[1])
        if code >= 200:
            return code, text

ME, PORT, USER, PASSWORD, FIRST, SECOND = sys.argv[1:7]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((ME, int(PORT)))
sock.settimeout(10)
sock.sendto(request(1).encode(), (FIRST, 5060))
code1, text = final(sock)
[challenge] = challenges(text)
answer = authorization(challenge, "REGISTER", "sip:example.com", USER, PASSWORD)
sock.sendto(request(2, answer + "\r\n").encode(), (SECOND, 5060))
code2, _ = final(sock)
print(json.dumps({"challenge": code1, "realm": challenge.realm, "answer": code2}))
'''


def test_nonce_of_reg1_is_accepted_by_reg2(topo):
    """RFC 3261 §22.4, docs/containers.md: reg1 and reg2 share KO_AUTH_SECRET, so a
    REGISTER challenged by reg1 and answered to reg2 (an edge failing over between
    them) is accepted there; each has the subscriber in its own file."""
    user, password = topo.subscriber("nina")
    taken = {reg: topo.accepted_regs(reg) for reg in ("reg1", "reg2")}
    probe = (ROOT / "tests" / "digest.py").read_text() + NONCE_PROBE
    result = topo.exec("ua-b", "python3", "-", topo.addr("ua-b"), str(next(PORTS)), user, password,
                       topo.addr("reg1"), topo.addr("reg2"), input=probe)
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {"challenge": 401, "realm": DOMAIN, "answer": 200}, outcome
    assert [b["Address"] for b in topo.bindings("reg2", user)], "reg2 stored the binding"
    assert topo.accepted_regs("reg2") == taken["reg2"] + 1, "reg2 took the answered REGISTER"
    assert topo.accepted_regs("reg1") == taken["reg1"], "reg1 only challenged"
    wait_bindings(topo, "reg1", user, 1)  # and replicated it to reg1


def test_registrar_killed_next_call_answered_by_its_peer_over_the_same_flow(topo):
    """Issue 14, RFC 3263 §4.3, RFC 5626 §7: reg1, the registrar the edges send to
    first, takes the registrations and the first call; reg2 holds the replicated
    bindings (DMQ). reg1 dies (docker kill); the caller's edge gets no answer from
    reg1 and goes to reg2 by SRV, and reg2 sends the call over the device's flow
    through edge1: answered by flow 1, 0 failed calls, no 430. reg1 started
    again resyncs the bindings from reg2."""
    taken = topo.accepted_regs("reg1")
    device = register_device(topo, "kim", 7)
    assert topo.accepted_regs("reg1") > taken, "reg1 took the registrations"
    held = same_bindings(topo.bindings("reg1", "kim"))
    assert same_bindings(wait_bindings(topo, "reg2", "kim", 2)) == held, "reg2 holds the replicated bindings"
    first = call(topo, "kim")
    assert first.value("who") == device.who(1)
    assert topo.addr("reg1") in record_routes(first), "reg1 handled the first call"
    topo.kill("reg1")
    try:
        started = time.monotonic()
        result = call(topo, "kim")
        took = time.monotonic() - started
        assert result.returncode == 0, describe(result)  # SIPp: 1 call, 0 failed
        assert not re.search(r"^\s*Failed call\s*\|\s*[1-9]", result.stdout, re.M), describe(result)
        assert result.value("who") == device.who(1), "answered over the device's flow 1"
        routes = record_routes(result)
        assert topo.addr("reg2") in routes and topo.addr("reg1") not in routes, routes
        assert not re.search(r"^SIP/2.0 430", result.messages, re.M), "the caller saw a 430"
        assert device.flows[1].alive and device.flows[2].alive, "both flows held"
        assert took < 15, f"the call took {took:.1f}s"
    finally:
        topo.start("reg1")
    # reg1 lost what it had not written back when it was killed; its resync from
    # reg2 at start brings every binding
    assert same_bindings(wait_bindings(topo, "reg1", "kim", 2)) == held


LOCATION_ROWS = r'''
import json, sqlite3, sys
conn = sqlite3.connect("file:/var/lib/kemi-outbound/kemi-outbound.sqlite?mode=ro", uri=True)
rows = conn.execute("SELECT reg_id, path FROM location WHERE username = ? ORDER BY reg_id", (sys.argv[1],)).fetchall()
print(json.dumps({"journal": conn.execute("PRAGMA journal_mode").fetchone()[0], "rows": rows}))
'''


def test_bindings_are_written_back_to_each_registrars_sqlite_file(topo):
    """Issue 14: each registrar's usrloc writes its bindings (its own and the
    replicated ones) back to the SQLite file ko-entry made (WAL journal) within
    KO_USRLOC_TIMER (10 s); no database error in either log, after every stop,
    kill and resync of the tests before (without distinct KO_SERVER_IDs the two
    registrars made the same record ids and the writes failed: UNIQUE ruid)."""
    device = register_device(topo, "lena", 8)
    paths = {regid: b["Path"] for regid, b in ((b["Reg-Id"], b) for b in topo.bindings("reg1", "lena"))}
    assert sorted(paths) == [1, 2] and device.flows[1].alive
    for registrar in ("reg1", "reg2"):
        deadline = time.monotonic() + 25
        while True:
            found = json.loads(topo.exec(registrar, "python3", "-", "lena", input=LOCATION_ROWS).stdout)
            if len(found["rows"]) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert found["journal"] == "wal"
        assert {regid: path for regid, path in found["rows"]} == paths, f"{registrar}: {found}"
        log = topo.logs(registrar)
        assert not re.search(r"ERROR: (db_sqlite|usrloc)|database is locked", log), log[-3000:]
