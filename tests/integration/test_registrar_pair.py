"""A registrar pair on DMQ (cfg WITH_DMQ: dmq + dmq_usrloc; docs/operations.md
"A registrar pair (DMQ)").

reg1 (net(121)) and reg2 (net(122)) are each other's DMQ peer and share the
nonce secret. Two edges find them by DNS SRV (Debian's nsd, tests/dns/ko.test.zone):
edge1's `edge.registrar` is duo1.ko.test (reg1 first, then reg2), edge2's is
duo2.ko.test (reg2 first, then reg1), so REGISTERs through edge1 reach reg1
first-hand and those through edge2 reach reg2, and each edge fails over to the
other registrar when its first one is dead. The devices are SIPp processes
(tests/sipp/pair), each holding ONE TCP flow to its edge for many AORs, and
answering calls on it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from actors import call, wait_until
from digest import authorization, challenges
from dns_setup import dns_yaml
from harness import Kamailio, SippResult, SippRun, describe, start_sipp, stop_group
from locations import sqlite_location_db, sqlite_rows
from nsd import Nsd
from subscribers import password_for
from topology import PORTS, edge, net, registrar, start, stop, subscriber, subscribers

REG_ADDR = {1: net(121), 2: net(122)}
REG_PORT = 5070
EDGE_ADDR = {1: net(123), 2: net(124)}
SRV_NAME = {1: "sip:duo1.ko.test", 2: "sip:duo2.ko.test"}  # edge n prefers reg n
UA_ADDR = {1: net(131), 2: net(132)}
CALLER = net(141)
STRANGER = net(150)
DOMAIN = "example.com"
NSD_VALUES = {"MOVING": net(45)}  # a placeholder of the shared zone this module does not use
# the registrars of a farm share the nonce secret: a REGISTER challenged by one
# may bring its credentials to the other (tests/integration/test_dns.py)
PAIR_SECRET = {"KO_AUTH_SECRET": '"registrar-pair-nonce-secret-for-the-tests"'}
# 1,000 REGISTERs (and their 401s) come from one UA address into an edge and from
# one edge into a registrar within a second or two: far above the default flood
# limit (400 per 2 s), which is not what these tests are about
PIKE = {"KO_PIKE_REQS": "50000"}
HOLD_MS = 300_000  # a device SIPp holds its flow this long; the test kills it first
# the fields of a binding that must be the same at both registrars (ul.dump/ul.lookup names)
# (not the Socket: replicate_socket_info is off, a copy has none and is sent from the
# peer's own socket; not the Tcpconn-Id: -1 on both, the edges hold the flows)
SAME_FIELDS = ("Address", "Ruid", "Path", "Instance", "Reg-Id", "Call-ID", "CSeq", "Q", "Flags", "CFlags", "Received",
               "User-Agent", "Methods", "Last-Modified")


def pair_registrar(workdir: Path, prefix: str, n: int) -> Kamailio:
    """Registrar n of the pair (not started): WITH_DMQ, the other one its peer."""
    other = 3 - n
    return registrar(workdir, name=f"{prefix}-reg{n}", addr=REG_ADDR[n], port=REG_PORT,
                     defines={"WITH_DMQ": "", "KO_SERVER_ID": str(n),
                              "KO_DMQ_ADDRESS": f'"sip:{REG_ADDR[n]}:{REG_PORT}"',
                              "KO_DMQ_PEER": f'"sip:{REG_ADDR[other]}:{REG_PORT}"', **PAIR_SECRET, **PIKE})


def pair_edge(workdir: Path, prefix: str, n: int) -> Kamailio:
    """Edge n (not started): its registrar is SRV_NAME[n], resolved at the test's nsd."""
    kam = edge(workdir, f"{prefix}-edge{n}", EDGE_ADDR[n], SRV_NAME[n])
    kam.defines.update(PIKE)
    kam.yaml_text = dns_yaml()
    return kam


def wipe_location(reg: Kamailio) -> None:
    """An empty location table for ``reg`` (a registrar whose disk was lost):
    whatever it holds after its next start came from its peer."""
    url = reg.defines["KO_USRLOC_DB_URL"].strip('"')
    path = Path(url.removeprefix("sqlite://"))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    sqlite_location_db(path)


def stat(reg: Kamailio, name: str) -> int:
    """One of Kamailio's statistics ("group:name") over RPC."""
    group = name.partition(":")[0] + ":"
    for line in reg.rpc("stats.get_statistics", group):
        key, _, value = line.partition(" = ")
        if key == name:
            return int(value)
    raise KeyError(name)


def contacts(reg: Kamailio) -> int:
    """usrloc's count of contacts. It follows additions at once; a removal of a
    binding already written to the database counts only when usrloc's timer
    drops it (write-back mode), so removals are checked by lookup."""
    return stat(reg, "usrloc:location_contacts")


def accepted_regs(reg: Kamailio) -> int:
    """REGISTERs saved first-hand (a binding that came over DMQ is not counted)."""
    return stat(reg, "registrar:accepted_regs")


def table(reg: Kamailio, names: list[str]) -> dict[str, dict]:
    """Every binding of ``names`` at ``reg`` by Ruid, read AOR by AOR (ul.lookup):
    ul.dump of 1,000 outbound bindings is a 600 kB answer, more than the JSON-RPC
    datagram socket can send (jsonrpcs logs EMSGSIZE and never answers)."""
    out = {}
    for user in names:
        now = time.time()
        for b in reg.bindings(f"{user}@{DOMAIN}"):
            # usrloc answers the seconds left: the absolute expiry is what replicates
            out[b["Ruid"]] = {**b, "Expires-At": now + b["Expires"]}
    return out


def wait_contacts(reg: Kamailio, count: int, timeout: float = 20.0, runs: list[SippRun] = ()) -> float:
    """Poll usrloc until ``reg`` holds ``count`` contacts; the seconds it took."""
    began = time.monotonic()
    deadline = began + timeout
    while True:
        found = contacts(reg)
        if found == count:
            return time.monotonic() - began
        for run in runs:
            if not run.alive:
                ended = run.wait(1)
                raise AssertionError(f"device SIPp exited {ended.returncode}:\n{describe(ended)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{reg.name} holds {found} contacts after {timeout}s, wanted {count}")
        time.sleep(0.02)


def wait_dmq_peer(reg: Kamailio, peer: Kamailio, timeout: float = 10.0) -> None:
    """Readiness of replication: DMQ at ``reg`` lists ``peer`` as an active node."""
    def active() -> bool:
        nodes = reg.rpc("dmq.list_nodes") or []
        return any(n.get("host") == peer.addr and n.get("status") == "active" and not n.get("local") for n in nodes)
    wait_until(active, f"{peer.name} active in {reg.name}'s DMQ node list", timeout)


@dataclass
class Pair:
    """reg1, reg2 and edge1, edge2 of one test, and the SIPps it started."""

    workdir: Path
    prefix: str
    regs: dict[int, Kamailio]
    edges: dict[int, Kamailio]
    devices: list[SippRun] = field(default_factory=list)

    def restart(self, n: int) -> float:
        """Start registrar n again (after kill()); seconds until it answers RPC."""
        began = time.monotonic()
        self.regs[n].start()
        return time.monotonic() - began


@pytest.fixture
def pair(request: pytest.FixtureRequest, workdir: Path, nsd: Nsd) -> Iterator[Pair]:
    """A fresh pair for each test (its own location files), stopped at the end."""
    prefix = "pair-" + request.node.name.removeprefix("test_")[:24]
    regs = {n: pair_registrar(workdir, prefix, n) for n in (1, 2)}
    edges = {n: pair_edge(workdir, prefix, n) for n in (1, 2)}
    the_pair = Pair(workdir, prefix, regs, edges)
    try:
        for kam in (*regs.values(), *edges.values()):
            start(kam)
        wait_dmq_peer(regs[1], regs[2])
        wait_dmq_peer(regs[2], regs[1])
        yield the_pair
    finally:
        for run in the_pair.devices:
            run.kill()
        for kam in (*edges.values(), *regs.values()):
            stop(kam)


def users(prefix: str, count: int) -> list[str]:
    names = [f"{prefix}-{n:04d}" for n in range(count)]
    known = {r.username for r in subscribers().rows()}
    subscribers().add_many([(u, DOMAIN, password_for(u)) for u in names if u not in known])
    return names


def instance_of(user: str) -> str:
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'sip:' + user + '@' + DOMAIN)}"


def chunks(names: list[str], count: int) -> list[list[str]]:
    """``names`` cut into ``count`` runs of consecutive names (the last may be shorter)."""
    size = -(-len(names) // count)
    return [names[i * size:(i + 1) * size] for i in range(count)]


def register_devices(the_pair: Pair, n: int, names: list[str], flows: int) -> list[SippRun]:
    """``names`` register through edge n, spread over ``flows`` SIPps (one TCP flow
    each), each holding its flow and answering calls on it (tests/sipp/pair)."""
    runs = []
    for index, part in enumerate(chunks(names, flows)):
        inf = the_pair.workdir / f"{the_pair.prefix}-edge{n}-flow{index}.csv"
        inf.write_text("SEQUENTIAL\n" + "".join(
            f"{u};{instance_of(u)};[authentication username={u} password={password_for(u)}]\n" for u in part))
        run = start_sipp("pair/register.xml", f"{EDGE_ADDR[n]}:5060", workdir=the_pair.workdir,
                         name=f"{the_pair.prefix}-edge{n}-flow{index}", local_ip=UA_ADDR[n], local_port=next(PORTS),
                         transport="tcp", calls=len(part), timeout=HOLD_MS // 1000, inf=inf,
                         oocsf="pair/uas.xml", rate=500, keys={"domain": DOMAIN}, timeout_error=False,
                         extra=["-d", str(HOLD_MS)])
        runs.append(run)
    the_pair.devices += runs
    return runs


def call_all(the_pair: Pair, via: int, callees: list[str], name: str) -> SippResult:
    """One caller SIPp through edge ``via`` calling each of ``callees`` once."""
    inf = the_pair.workdir / f"{the_pair.prefix}-{name}.csv"
    inf.write_text("SEQUENTIAL\n" + "".join(f"{u}\n" for u in callees))
    run = start_sipp("pair/uac.xml", f"{EDGE_ADDR[via]}:5060", workdir=the_pair.workdir,
                     name=f"{the_pair.prefix}-{name}", local_ip=CALLER, local_port=next(PORTS), transport="udp",
                     calls=len(callees), timeout=40, inf=inf, rate=20, call_limit=5, auth=subscriber("alice"),
                     keys={"domain": DOMAIN, "user": "alice"})
    return run.wait()


def assert_all_answered(result: SippResult, callees: list[str]) -> None:
    answered = result.values("who")
    assert result.returncode == 0 and sorted(answered) == sorted(callees), (
        f"{len(answered)} of {len(callees)} calls answered (sipp exit {result.returncode})\n{describe(result)}")


def same_binding(a: dict, b: dict) -> dict[str, tuple]:
    """The fields of SAME_FIELDS where two registrars' copies of a binding differ,
    and the expiry when it differs by more than usrloc's one-second clock."""
    differ = {key: (a.get(key), b.get(key)) for key in SAME_FIELDS if a.get(key) != b.get(key)}
    if abs(a["Expires-At"] - b["Expires-At"]) > 1.5:
        differ["Expires-At"] = (a["Expires-At"], b["Expires-At"])
    return differ


def sample(names: list[str], count: int) -> list[str]:
    step = max(1, len(names) // count)
    return names[::step][:count]


# ----- acceptance ------------------------------------------------------------------


TOTAL = 1000
FLOWS_PER_EDGE = 5
CALLS = 24


def test_each_registrar_of_the_pair_holds_every_binding_and_answers_for_the_other(pair):
    """1,000 outbound bindings, half saved first-hand at each registrar; both hold
    all 1,000 with the same fields; reg1 killed: every sampled AOR is called via
    reg2; reg1 restarted with an empty table syncs all 1,000 from reg2; reg2
    killed: every sampled AOR is called via reg1."""
    began = time.monotonic()
    names = users("pair", TOTAL)
    halves = {1: names[:TOTAL // 2], 2: names[TOTAL // 2:]}
    first_register = time.monotonic()
    runs = [*register_devices(pair, 1, halves[1], FLOWS_PER_EDGE), *register_devices(pair, 2, halves[2],
                                                                                    FLOWS_PER_EDGE)]
    for reg in pair.regs.values():
        wait_contacts(reg, TOTAL, runs=runs)
    registered = time.monotonic() - first_register
    # each registrar saved its half first-hand (its edge's first SRV target), the rest came over DMQ
    assert accepted_regs(pair.regs[1]) == TOTAL // 2
    assert accepted_regs(pair.regs[2]) == TOTAL // 2
    dump = {n: table(reg, names) for n, reg in pair.regs.items()}
    assert len(dump[1]) == len(dump[2]) == TOTAL
    assert dump[1].keys() == dump[2].keys()
    assert {b["AoR"] for b in dump[1].values()} == {f"{u}@{DOMAIN}" for u in names}
    differ = {ruid: same_binding(dump[1][ruid], b) for ruid, b in dump[2].items() if same_binding(dump[1][ruid], b)}
    assert not differ, f"{len(differ)} bindings differ between reg1 and reg2, e.g. {list(differ.items())[:3]}"
    for b in dump[1].values():
        assert ";ob" in b["Path"] and b["Reg-Id"] == 1 and b["Instance"] == f"<{instance_of(b['AoR'].split('@')[0])}>"

    callees = sample(halves[1], CALLS // 2) + sample(halves[2], CALLS // 2)
    pair.regs[1].kill()
    killed = time.monotonic()
    # through edge1 (reg1 first): the edge gives the dead reg1 up, reg2 forks to the flows
    assert_all_answered(call_all(pair, 1, callees, "calls-reg1-dead"), callees)
    print(f"reg1 dead: {len(callees)} calls answered via reg2 in {time.monotonic() - killed:.2f}s")
    assert f"trying sip:{REG_ADDR[2]}:{REG_PORT}" in pair.edges[1].log()

    wipe_location(pair.regs[1])
    ready = pair.restart(1)
    synced = wait_contacts(pair.regs[1], TOTAL, timeout=30)
    print(f"reg1 restarted with an empty table: RPC ready after {ready:.2f}s, all {TOTAL} bindings synced "
          f"from reg2 {synced:.2f}s after that")
    assert accepted_regs(pair.regs[1]) == 0
    resynced = table(pair.regs[1], names)
    assert resynced.keys() == dump[2].keys()
    differ = {ruid: same_binding(b, dump[2][ruid]) for ruid, b in resynced.items() if same_binding(b, dump[2][ruid])}
    assert not differ, f"{len(differ)} bindings differ after the sync, e.g. {list(differ.items())[:3]}"

    pair.regs[2].kill()
    killed = time.monotonic()
    assert_all_answered(call_all(pair, 2, callees, "calls-reg2-dead"), callees)
    print(f"reg2 dead: {len(callees)} calls answered via reg1 in {time.monotonic() - killed:.2f}s")
    assert f"trying sip:{REG_ADDR[1]}:{REG_PORT}" in pair.edges[2].log()
    # each call was answered on the flow its AOR registered over, once before and once after the restart
    for run, part in zip(runs, chunks(halves[1], FLOWS_PER_EDGE) + chunks(halves[2], FLOWS_PER_EDGE), strict=True):
        run.kill()
        answered = run.wait(5).values("answered")
        assert sorted(answered) == sorted(2 * [u for u in callees if u in part]), describe(run.wait(0))
    print(f"{TOTAL} bindings on both registrars {registered:.2f}s after the device SIPps started; "
          f"whole test {time.monotonic() - began:.2f}s")


# ----- replication and its faults ------------------------------------------------------


def register_one(the_pair: Pair, via: int, user: str) -> SippRun:
    """One AOR registers one flow through edge ``via`` (a device SIPp holding it)."""
    [run] = register_devices(the_pair, via, [user], 1)
    return run


def test_a_binding_saved_at_one_registrar_is_at_the_other_within_milliseconds(pair):
    """The save at reg1 reaches reg2 at once (dmq_usrloc sends each save as it happens)."""
    [user] = users("delay", 1)
    seen: dict[int, float] = {}
    run = register_one(pair, 1, user)
    deadline = time.monotonic() + 10
    while len(seen) < 2 and time.monotonic() < deadline:
        for n, reg in pair.regs.items():
            if n not in seen and reg.bindings(f"{user}@{DOMAIN}"):
                seen[n] = time.monotonic()
        assert run.alive, describe(run.wait(1))
    assert seen.keys() == {1, 2}, f"the binding was seen at {sorted(seen)} only"
    # edge1 sends to reg1 first; on a loaded machine its branch timeout may pass
    # and reg2 take the REGISTER: the delay is measured from whichever saved it
    saver = 1 if accepted_regs(pair.regs[1]) == 1 else 2
    other = 3 - saver
    assert accepted_regs(pair.regs[saver]) == 1 and accepted_regs(pair.regs[other]) == 0
    delay = seen[other] - seen[saver]
    print(f"saved at reg{saver}, at reg{other} {delay * 1000:.1f} ms later (RPC polling resolution ~1 ms)")
    assert delay < 1.0


def test_a_registrar_whose_peer_is_dead_serves_alone_and_the_peer_resyncs_when_back(pair):
    """reg2 killed: REGISTERs through both edges are saved at reg1 (edge2 fails
    over to it), calls to them are answered via reg1; reg2 restarted (its own
    location file kept) gets the bindings saved while it was down from reg1,
    and serves them. (Back within 30 s, reg1's retransmitted KDMQs may bring
    them as well as the sync; the stale-binding test below restarts the peer
    after tm gave them up: then the sync alone brings what was saved.)"""
    before, alone1, alone2 = users("solo", 3)
    register_one(pair, 1, before)
    wait_contacts(pair.regs[2], 1)
    pair.regs[2].kill()
    register_one(pair, 1, alone1)
    register_one(pair, 2, alone2)  # edge2's first registrar is the dead reg2
    wait_contacts(pair.regs[1], 3, runs=pair.devices)
    assert accepted_regs(pair.regs[1]) == 3
    assert f"trying sip:{REG_ADDR[1]}:{REG_PORT}" in pair.edges[2].log()
    assert_all_answered(call_all(pair, 1, [alone1, alone2, before], "calls-alone"), [alone1, alone2, before])

    ready = pair.restart(2)
    synced = wait_contacts(pair.regs[2], 3)
    print(f"reg2 back: RPC ready after {ready:.2f}s, the bindings saved while it was down there {synced:.3f}s later")
    assert accepted_regs(pair.regs[2]) == 0
    names = [before, alone1, alone2]
    at1, at2 = table(pair.regs[1], names), table(pair.regs[2], names)
    assert at1.keys() == at2.keys() and len(at1) == 3
    assert not {ruid: same_binding(at1[ruid], b) for ruid, b in at2.items() if same_binding(at1[ruid], b)}
    # and reg2 serves them: reg1 gone, calls through edge2 (reg2 first) are answered
    pair.regs[1].kill()
    assert_all_answered(call_all(pair, 2, names, "calls-back"), names)


def kdmq(target: Kamailio, source: tuple[str, int], body: dict, call_id: str) -> bytes:
    """A KDMQ request the way dmq sends one (R-URI user: the dmq peer, here usrloc)."""
    text = json.dumps(body, separators=(",", ":"))
    return (f"KDMQ sip:usrloc@{target.addr}:{target.port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {source[0]}:{source[1]};branch=z9hG4bK-{call_id}\r\n"
            f"From: <sip:usrloc@{source[0]}:{source[1]}>;tag={call_id}\r\n"
            f"To: <sip:usrloc@{target.addr}:{target.port}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 KDMQ\r\nMax-Forwards: 1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(text)}\r\n\r\n{text}").encode()


def contact_update(user: str, source_ip: str, action: int = 1) -> dict:
    """A dmq_usrloc contact message (action 1 update, 2 remove): its field names.
    usrloc keys an AOR by its user part alone (its use_domain is off)."""
    now = int(time.time())
    return {"action": action, "aor": user, "ruid": f"forged-{user}",
            "c": f"sip:{user}@{source_ip}:5999;transport=udp", "received": "", "path": "", "callid": f"cid-{user}",
            "user_agent": "kdmq-test", "instance": "", "expires": now + 600, "cseq": 7, "flags": 0, "cflags": 0,
            "q": -1, "last_modified": now, "methods": 4294967295, "reg_id": 0}


def send_kdmq(target: Kamailio, source_ip: str, body: dict) -> str:
    """Send one KDMQ from ``source_ip`` (a fresh UDP port) and return the status
    line of the final answer (dmq answers from its own worker)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((source_ip, 0))
        sock.settimeout(5)
        call_id = f"kdmq-{time.monotonic_ns()}"
        sock.sendto(kdmq(target, sock.getsockname(), body, call_id), (target.addr, target.port))
        while True:
            status = sock.recv(65535).decode(errors="replace").split("\r\n", 1)[0]
            if not status.startswith("SIP/2.0 1"):
                return status
    finally:
        sock.close()


def test_kdmq_from_a_stranger_is_refused_403_and_changes_no_binding(pair):
    """A stranger's KDMQ (a dmq_usrloc contact update, a full-sync request) is
    403 before dmq sees it: no binding is made, none is sent to it."""
    [user] = users("stranger", 1)
    reg = pair.regs[1]
    assert send_kdmq(reg, STRANGER, contact_update(user, STRANGER)).startswith("SIP/2.0 403")
    assert send_kdmq(reg, STRANGER, {"action": 3}).startswith("SIP/2.0 403")  # "send me every binding"
    assert reg.bindings(f"{user}@{DOMAIN}") == [] and pair.regs[2].bindings(f"{user}@{DOMAIN}") == []
    assert contacts(reg) == 0 and contacts(pair.regs[2]) == 0
    assert f"403 KDMQ from {STRANGER}: KDMQ from {STRANGER}, not a registrar of this farm" in reg.log()


def test_kdmq_from_the_peer_address_is_taken(pair):
    """The same contact update from the peer's address (another port of reg2's
    address) is handed to dmq_usrloc: 200, the binding is made with the fields
    sent; a remove (action 2) takes it away again."""
    [user] = users("peer-made", 1)
    reg = pair.regs[1]
    body = contact_update(user, REG_ADDR[2])
    assert send_kdmq(reg, REG_ADDR[2], body) == "SIP/2.0 200 OK"
    [binding] = reg.bindings(f"{user}@{DOMAIN}")
    assert (binding["Ruid"], binding["Address"], binding["Call-ID"], binding["CSeq"]) == (
        body["ruid"], body["c"], body["callid"], body["cseq"])
    assert send_kdmq(reg, REG_ADDR[2], {**body, "action": 2}) == "SIP/2.0 200 OK"
    assert reg.bindings(f"{user}@{DOMAIN}") == []



def test_a_flow_replaced_at_the_other_registrar_is_replaced_at_both(pair):
    """RFC 5626 §6: one binding per (instance, reg-id). The device's reg-id 1
    registers through edge1 (saved at reg1), then again through edge2 over a new
    flow with a new Call-ID (saved at reg2, which updates that binding: same
    Ruid, new Contact, Path and Call-ID): both registrars hold the one new
    binding, and a call (through edge1, so via reg1) goes over the new flow."""
    [user] = users("moved", 1)
    old = register_one(pair, 1, user)
    wait_contacts(pair.regs[2], 1, runs=[old])
    [before] = pair.regs[2].bindings(f"{user}@{DOMAIN}")
    new = register_one(pair, 2, user)
    wait_until(lambda: accepted_regs(pair.regs[2]) == 1, "the second REGISTER saved at reg2")
    wait_until(lambda: [b["Call-ID"] for b in pair.regs[1].bindings(f"{user}@{DOMAIN}")] != [before["Call-ID"]],
               "the update at reg1")
    at = {n: reg.bindings(f"{user}@{DOMAIN}") for n, reg in pair.regs.items()}
    assert [len(at[1]), len(at[2])] == [1, 1], at
    assert at[1][0]["Ruid"] == at[2][0]["Ruid"]
    assert at[1][0]["Call-ID"] == at[2][0]["Call-ID"] != before["Call-ID"]
    assert at[1][0]["Address"] == at[2][0]["Address"] != before["Address"]
    assert f"@{EDGE_ADDR[2]};lr;ob>" in at[1][0]["Path"]
    assert_all_answered(call_all(pair, 1, [user], "call-moved"), [user])
    new.kill()
    assert new.wait(5).values("answered") == [user]
    old.kill()
    assert old.wait(5).values("answered") == []


def test_a_flow_failure_found_at_one_registrar_removes_the_binding_at_both(pair, local_port):
    """The device (saved at reg1) is gone; a call via reg2 meets its dead flow
    (the edge's 430) and reg2 removes the binding (RFC 5626 §7): the removal
    reaches reg1 too, which then no longer forks to that flow."""
    [user] = users("gone", 1)
    run = register_one(pair, 1, user)
    wait_contacts(pair.regs[2], 1, runs=[run])
    run.kill()
    final = call(pair.edges[2], pair.workdir, local_port, user, ua_ip=CALLER, scenario="uac_final.xml",
                 ruri=f"sip:{user}@{DOMAIN}", extra="X-Case: pair-dead-flow")
    assert final.value("final") == "480", describe(final)
    assert f"of sip:{user}@{DOMAIN} failed with 430; removing it" in pair.regs[2].log()
    # (polled by lookup: usrloc's contact count lags a removal until its timer in write-back mode)
    wait_until(lambda: pair.regs[1].bindings(f"{user}@{DOMAIN}") == [], "the removal at reg1")


@dataclass
class Probe:
    """OPTIONS to a registrar every 2 ms from a thread until it answers: when
    the first answer came, and how many contacts the registrar held then."""

    target: Kamailio
    source: str
    answered_at: float | None = None
    status: str = ""
    contacts_then: int | None = None

    def run(self, stop_at: float) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.source, 0))
        sock.settimeout(0.002)
        n = 0
        try:
            while time.monotonic() < stop_at:
                n += 1
                port = sock.getsockname()[1]
                request = (f"OPTIONS sip:probe@{self.target.addr}:{self.target.port} SIP/2.0\r\n"
                           f"Via: SIP/2.0/UDP {self.source}:{port};branch=z9hG4bK-probe{n}\r\n"
                           f"From: <sip:probe@{DOMAIN}>;tag=p{n}\r\nTo: <sip:probe@{DOMAIN}>\r\n"
                           f"Call-ID: probe-{n}@{self.source}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                           "Content-Length: 0\r\n\r\n").encode()
                try:
                    sock.sendto(request, (self.target.addr, self.target.port))
                    data = sock.recv(65535)
                except OSError:  # nothing listens yet (ICMP), or no answer within 2 ms
                    continue
                self.answered_at = time.monotonic()
                self.status = data.decode(errors="replace").split("\r\n", 1)[0]
                self.contacts_then = contacts(self.target)
                return
        finally:
            sock.close()


def test_a_restarted_registrar_answers_sip_before_its_sync_is_complete(pair):
    """Finding (docs/operations.md "A registrar pair (DMQ)"): dmq_usrloc's sync
    arrives over the SIP socket itself (KDMQ from the peer, after dmq's node
    exchange), so a registrar that starts with an empty table answers SIP
    before it holds its peer's bindings (a call in that window to an AOR not yet
    synced gets 503, the next test). Measured here: when reg1's first answer to a probe comes, it holds fewer
    than all bindings; it holds all of them soon after."""
    names = users("pair", TOTAL)
    runs = [*register_devices(pair, 1, names[:TOTAL // 2], FLOWS_PER_EDGE),
            *register_devices(pair, 2, names[TOTAL // 2:], FLOWS_PER_EDGE)]
    wait_contacts(pair.regs[2], TOTAL, runs=runs)
    pair.regs[1].kill()
    wipe_location(pair.regs[1])
    probe = Probe(pair.regs[1], STRANGER)
    began = time.monotonic()
    thread = threading.Thread(target=probe.run, args=(began + 20,), daemon=True)
    thread.start()
    ready = pair.restart(1)
    synced = wait_contacts(pair.regs[1], TOTAL, timeout=20) + ready
    thread.join(20)
    assert probe.answered_at is not None, "reg1 never answered the probe"
    first = probe.answered_at - began
    print(f"reg1 started: first SIP answer ({probe.status}) after {first * 1000:.0f} ms holding "
          f"{probe.contacts_then} of {TOTAL} bindings; RPC ready after {ready * 1000:.0f} ms; "
          f"all {TOTAL} after {synced * 1000:.0f} ms")
    assert probe.status.startswith("SIP/2.0 ")
    assert probe.contacts_then is not None and probe.contacts_then < TOTAL
    assert synced < 5


def test_a_registrar_still_in_its_sync_window_answers_503_and_the_edge_tries_the_peer(pair):
    """A registrar that started without its peer's bindings (here its DMQ peer
    address leads nowhere, so no sync comes at all) answers a call to an AOR it
    has no binding for with 503 and Retry-After during KO_LOAD_WINDOW, not
    404 (outbound.forking.Fork.lookup): edge1, which prefers reg1, tries reg2
    (RFC 3263 §4.3) and the calls are answered over the device's flow."""
    names = users("sync", 4)
    runs = register_devices(pair, 2, names, 1)
    wait_contacts(pair.regs[2], len(names), runs=runs)
    wait_contacts(pair.regs[1], len(names), runs=runs)
    reg1 = pair.regs[1]
    reg1.kill()
    wipe_location(reg1)
    reg1.defines.update({"KO_DMQ_PEER": f'"sip:{net(151)}:{REG_PORT}"', "KO_LOAD_WINDOW": "60"})
    pair.restart(1)
    assert contacts(reg1) == 0
    result = call_all(pair, 1, names[:2], "syncing")
    assert_all_answered(result, names[:2])
    log = reg1.log()
    assert "503 Service Unavailable to INVITE" in log and "yet: the bindings are still loading" in log, log[-3000:]
    assert "404 Not Found to INVITE" not in log


def local_transactions(reg: Kamailio) -> int:
    """tm transactions at ``reg`` not yet ended (tm.stats: current, less those
    only waiting to be freed): a KDMQ to a peer that is gone is retransmitted
    until tm's final-response timer (30 s) gives it up."""
    stats = reg.rpc("tm.stats")
    return int(stats["current"]) - int(stats["waiting"])


def test_a_binding_removed_while_the_peer_was_down_comes_back_at_the_peer_from_its_own_table(pair, local_port):
    """Finding: a removal sent while the peer is down is lost once tm gives its
    KDMQ up, and dmq_usrloc's sync only adds. reg2 stops cleanly (its location
    file keeps the device's binding); the device's flow dies and a call via reg1
    removes the binding there; another device registers at reg1. Once reg1's
    KDMQs to reg2 have timed out, reg2 starts again, reloads the removed
    binding from its file, and the sync brings the new one but does not remove
    the old: it lives at reg2 until a call meets the dead flow there too (430:
    removed) or it expires. (A peer back while tm still retransmits, within
    30 s, does get the removal.)"""
    stale, fresh = users("stale", 2)
    run = register_one(pair, 1, stale)
    wait_contacts(pair.regs[2], 1, runs=[run])
    # a clean stop: SIGTERM to Kamailio's main process, which stops its children
    # and writes usrloc's table to the file (SIGTERM to the whole process group,
    # harness stop(), hangs 10 s into SIGKILL and writes nothing)
    stop_group(pair.regs[2].proc, leader_only=True)
    assert [r["username"] for r in sqlite_rows(pair.regs[2].defines["KO_USRLOC_DB_URL"].strip('"'))] == [stale]
    run.kill()
    final = call(pair.edges[1], pair.workdir, local_port, stale, ua_ip=CALLER, scenario="uac_final.xml",
                 ruri=f"sip:{stale}@{DOMAIN}", extra="X-Case: pair-stale-1")
    assert final.value("final") == "480", describe(final)
    assert pair.regs[1].bindings(f"{stale}@{DOMAIN}") == []
    register_one(pair, 1, fresh)
    wait_until(lambda: pair.regs[1].bindings(f"{fresh}@{DOMAIN}") != [], "the new device's binding at reg1")
    began = time.monotonic()
    wait_until(lambda: local_transactions(pair.regs[1]) == 0, "reg1's KDMQs to the stopped reg2 given up", 45)
    print(f"reg1 gave its KDMQs to the stopped reg2 up after {time.monotonic() - began:.1f}s more")
    pair.restart(2)
    wait_until(lambda: pair.regs[2].bindings(f"{fresh}@{DOMAIN}") != [], "reg2's sync from reg1")
    assert [b["AoR"] for b in pair.regs[2].bindings(f"{stale}@{DOMAIN}")] == [f"{stale}@{DOMAIN}"]
    assert pair.regs[1].bindings(f"{stale}@{DOMAIN}") == []
    pair.regs[1].kill()  # calls through edge1 now go to reg2, which meets the dead flow
    final = call(pair.edges[1], pair.workdir, local_port + 1, stale, ua_ip=CALLER, scenario="uac_final.xml",
                 ruri=f"sip:{stale}@{DOMAIN}", extra="X-Case: pair-stale-2")
    assert final.value("final") == "480", describe(final)
    assert f"of sip:{stale}@{DOMAIN} failed with 430; removing it" in pair.regs[2].log()
    assert pair.regs[2].bindings(f"{stale}@{DOMAIN}") == []

def raw_register(sock: socket.socket, target: Kamailio, user: str, cseq: int, auth: str = "") -> str:
    """One REGISTER straight to a registrar from ``sock`` (no edge: a plain
    binding); the final answer's text."""
    ip, port = sock.getsockname()
    sock.sendto((f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
                 f"Via: SIP/2.0/UDP {ip}:{port};rport;branch=z9hG4bK-pair{port}-{cseq}\r\n"
                 f"Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=f{port}\r\nTo: <sip:{user}@{DOMAIN}>\r\n"
                 f"Call-ID: pair-nonce-{port}@{ip}\r\nCSeq: {cseq} REGISTER\r\n"
                 f"Contact: <sip:{user}@{ip}:{port}>\r\nExpires: 600\r\n{auth}Content-Length: 0\r\n\r\n").encode(),
                (target.addr, target.port))
    while True:
        data = sock.recv(65535).decode(errors="replace")
        if data.startswith("SIP/2.0 ") and data[8] != "1":
            return data


def test_a_nonce_of_one_registrar_is_taken_by_the_other(pair):
    """One KO_AUTH_SECRET for the pair: the 401 of reg1 answered to reg2 is
    verified there (a device whose REGISTER moves to the other registrar after
    its challenge needs no new one), and the binding replicates back to reg1."""
    [user] = users("nonce", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((UA_ADDR[1], 0))
        sock.settimeout(5)
        first = raw_register(sock, pair.regs[1], user, 1)
        assert first.startswith("SIP/2.0 401"), first
        [challenge] = challenges(first)
        line = authorization(challenge, "REGISTER", f"sip:{DOMAIN}", user, password_for(user))
        second = raw_register(sock, pair.regs[2], user, 2, auth=line + "\r\n")
        assert second.startswith("SIP/2.0 200"), second
        address = f"sip:{user}@{sock.getsockname()[0]}:{sock.getsockname()[1]}"
    finally:
        sock.close()
    assert accepted_regs(pair.regs[2]) == 1 and accepted_regs(pair.regs[1]) == 0
    assert [b["Address"] for b in pair.regs[2].bindings(f"{user}@{DOMAIN}")] == [address]
    wait_until(lambda: [b["Address"] for b in pair.regs[1].bindings(f"{user}@{DOMAIN}")] == [address],
               "the binding replicated to reg1")
