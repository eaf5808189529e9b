"""Bindings that survive a restart (issue 14): usrloc on a database, reloaded at start.

Devices are SIPp (tests/sipp/persist): one binding per call, each call on its
own socket (``-t tn``: its own TCP connection; ``-t un``: its own UDP port), so
every binding is a flow of its own, and the Contact names that socket's port.
That a call really came over the flow of the binding it was sent to is read
off the wire: tshark captures the device's traffic while the sample calls run,
and every INVITE toward a device must arrive on the socket whose port its
Request-URI (the binding's Contact) names, and its 200 leave from that socket.

Compared over RPC, ul.lookup per AOR (ul.dump of 1,000 bindings is about
170 KB, more than the JSON-RPC datagram socket sends: jsonrpcs logs "Message
too long" and the client gets nothing): Ruid, Address, Path (the flow token),
Instance, Reg-Id, Call-ID, CSeq, Received, Flags, CFlags, Q, User-Agent,
Methods, Socket; the absolute expiry within 2 s (db_sqlite stores the time as
a Julian day, a REAL: it can come back up to 1 s early, and the RPC's
Expires is whole seconds remaining, read at a slightly different moment) and
Last-Modified within 1 s.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from actors import call, wait_until
from harness import ROOT, TEST_KEY, Kamailio, ProcessError, SippRun, describe, sipp, start_sipp
from locations import sqlite_rows
from outbound.sipmsg import SipUri, parse_name_addr
from outbound.tokens import FlowTokenCodec, parse_key
from postgres import Postgres
from subscribers import password_for
from topology import PORTS, edge, net, registrar, single, start, stop, subscriber

sys.path.insert(0, str(ROOT / "tools"))
from ladder import Capture  # noqa: E402

DOMAIN = "example.com"
DEVICES = net(120)  # every device socket
CALLER = net(122)
CODEC = FlowTokenCodec([parse_key(TEST_KEY)])
PG_PORT = 25433
# the fields a reload must give back unchanged (ul.lookup's names)
SAME = ("AoR", "Ruid", "Address", "Path", "Instance", "Reg-Id", "Call-ID", "CSeq", "Received", "Flags", "CFlags",
        "Q", "User-Agent", "Methods", "Socket")
NO_PIKE = {"WITH_NOPIKE": ""}  # thousands of REGISTERs from one device address are no flood here


# ----- devices ---------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """One binding to be: an AOR, an instance, a reg-id, a q, and the Contact's user part."""

    user: str
    instance: str
    reg_id: int
    q: str

    @property
    def tag(self) -> str:
        return f"{self.user}-{self.instance[-4:]}-r{self.reg_id}"


def plan(prefix: str, aors: int, instances: int, reg_ids: list[int]) -> list[Device]:
    """``aors`` x ``instances`` x ``reg_ids`` bindings: instance 0 of each AOR
    has q 1 (a call's first wave is that instance alone), the others q 0.5."""
    out = []
    tag = int.from_bytes(prefix.encode(), "big") % 10**6  # instances of two plans never meet
    for a in range(aors):
        user = f"{prefix}{a:03d}"
        subscriber(user, DOMAIN)
        for i in range(instances):
            inst = f"urn:uuid:00000000-0000-4000-8000-{tag:06d}{a:03d}{i:03d}"
            out += [Device(user, inst, r, "1" if i == 0 else "0.5") for r in reg_ids]
    return out


def write_devices(path: Path, rows: list[Device]) -> Path:
    """tests/sipp/persist/register.xml's injection file (README.md there)."""
    lines = ["SEQUENTIAL"] + [
        f"{d.user};{d.instance};{d.reg_id};{d.q};{d.tag};"
        f"[authentication username={d.user} password={password_for(d.user)}]" for d in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_devices(target: Kamailio, rows: list[Device], workdir: Path, name: str, *, transport: str = "tn",
                  cid: str, base_cseq: int = 1, hold: int = 60, rate: int = 300) -> SippRun:
    """One SIPp registering every row, each call on its own socket (``tn``/``un``),
    with Call-ID ``cid`` (SIPp -cid_str, %u the call number) and CSeq from
    ``base_cseq``, holding every socket ``hold`` s; calls on them get 200."""
    inf = write_devices(workdir / f"{name}.csv", rows)
    return start_sipp("persist/register.xml", f"{target.addr}:{target.port}", workdir=workdir, name=name,
                      local_ip=DEVICES, local_port=next(PORTS), transport=transport, calls=len(rows),
                      timeout=hold + 30, rate=rate, call_limit=len(rows),
                      keys={"domain": DOMAIN, "expires": "600"}, inf=inf,
                      oocsf="persist/uas.xml", trace_messages=False, timeout_error=False,
                      extra=["-d", str(hold * 1000), "-max_socket", str(len(rows) + 100), "-cid_str", cid,
                             "-base_cseq", str(base_cseq)])


def wait_registered(runs: list[SippRun], count: int, timeout: float = 30.0) -> None:
    """Until the runs' logs say ``count`` REGISTERs got their 200."""
    deadline = time.monotonic() + timeout
    done = 0
    while time.monotonic() < deadline:
        done = sum((run.run_dir / "log.log").read_text().count("registered tag=")
                   for run in runs if (run.run_dir / "log.log").exists())
        if done >= count:
            return
        for run in runs:
            if not run.alive:
                raise AssertionError(f"device SIPp exited before registering:\n{describe(run.wait(1))}")
        time.sleep(0.1)
    raise AssertionError(f"{done} of {count} registrations answered 200 after {timeout}s:\n"
                         + "\n".join(describe(run.wait(0)) for run in runs))


# ----- bindings --------------------------------------------------------------------


def snapshot(kam: Kamailio, users: list[str]) -> dict[str, dict]:
    """Every binding of ``users`` by Ruid, with its absolute expiry (``at``)."""
    out = {}
    for user in sorted(set(users)):
        now = time.time()
        for b in kam.bindings(user):
            out[b["Ruid"]] = {**b, "at": now + b["Expires"]}
    return out


def assert_same_bindings(before: dict[str, dict], after: dict[str, dict]) -> None:
    assert sorted(after) == sorted(before), (
        f"lost {sorted(set(before) - set(after))[:5]}, new {sorted(set(after) - set(before))[:5]}")
    for ruid, old in before.items():
        new = after[ruid]
        diff = {k: (old.get(k), new.get(k)) for k in SAME if old.get(k) != new.get(k)}
        assert not diff, f"binding {ruid} changed in the reload: {diff}"
        assert abs(new["at"] - old["at"]) <= 2, f"{ruid}: expiry {old['at']:.0f} -> {new['at']:.0f}"
        assert abs(new["Last-Modified"] - old["Last-Modified"]) <= 1, (ruid, old["Last-Modified"],
                                                                       new["Last-Modified"])


def contact_port(binding: dict) -> int:
    return SipUri.parse(binding["Address"]).port or 0


def flow_of(binding: dict):
    flow = CODEC.decode(parse_name_addr(binding["Path"]).sip_uri.user or "").flow
    assert flow is not None, f"no valid flow token in {binding['Path']}"
    return flow


def assert_one_flow_each(bindings: dict[str, dict], transport: str) -> None:
    """Each binding's flow token names its own flow, from the socket the Contact names."""
    flows = [flow_of(b) for b in bindings.values()]
    for b, flow in zip(bindings.values(), flows, strict=True):
        assert flow.transport == transport and flow.remote_ip == DEVICES, (b["Path"], flow)
        assert flow.remote_port == contact_port(b), f"{b['Address']} registered from {flow}"
    assert len({(f.remote_port, f.conn_id) for f in flows}) == len(flows), "two bindings share a flow"


def wait_count(kam: Kamailio, users: list[str], count: int, timeout: float = 20.0) -> dict[str, dict]:
    found: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = snapshot(kam, users)
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{len(found)} bindings, wanted {count}")


# ----- calls -----------------------------------------------------------------------


def capture(workdir: Path, name: str) -> Capture:
    return Capture("lo", f"host {DEVICES}", workdir / f"{name}.pcapng").start()


def wire(cap: Capture, sip_port: int) -> list[dict[str, str]]:
    """INVITEs toward the devices and the devices' 200s to them, as tshark read them."""
    cap.stop(marker_to=(DEVICES, 9))
    fields = ["ip.src", "ip.dst", "tcp.srcport", "tcp.dstport", "udp.srcport", "udp.dstport", "sip.Method",
              "sip.Status-Code", "sip.CSeq.method", "sip.r-uri", "sip.Call-ID"]
    cmd = ["tshark", "-r", str(cap.path), "-Y", "sip and not icmp", "-T", "fields", "-E", "separator=\t",
           "-E", "occurrence=f", "-d", f"tcp.port=={sip_port},sip", "-d", f"udp.port=={sip_port},sip"]
    for f in fields:
        cmd += ["-e", f]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    rows = [dict(zip(fields, (line.split("\t") + [""] * len(fields))[:len(fields)], strict=True))
            for line in done.stdout.splitlines()]
    return [r for r in rows if r["sip.CSeq.method"] == "INVITE" and (r["sip.Method"] == "INVITE"
                                                                     or r["sip.Status-Code"] == "200")]


def assert_calls_over_their_flows(cap: Capture, sip_port: int, calls: int) -> None:
    """Every INVITE reached the device on the socket its Request-URI names (the
    binding's own flow) and the device's 200 left from that same socket."""
    seen = wire(cap, sip_port)
    invites = {r["sip.Call-ID"]: r for r in seen if r["sip.Method"] == "INVITE" and r["ip.dst"] == DEVICES}
    answers = {r["sip.Call-ID"]: r for r in seen if r["sip.Status-Code"] == "200" and r["ip.src"] == DEVICES}
    assert len(invites) == calls, f"{len(invites)} INVITEs reached the devices, wanted {calls}"
    for call_id, inv in invites.items():
        port = inv["tcp.dstport"] or inv["udp.dstport"]
        assert str(SipUri.parse(inv["sip.r-uri"]).port) == port, f"INVITE for {inv['sip.r-uri']} arrived on {port}"
        ans = answers.get(call_id)
        assert ans is not None, f"no 200 from the device for {call_id}"
        assert (ans["tcp.srcport"] or ans["udp.srcport"]) == port, (inv, ans)


def sample_calls(entry: Kamailio, users: list[str], workdir: Path, name: str) -> dict[str, str]:
    """One call to each of ``users`` (tests/sipp/persist/call.xml); the
    Request-URI each answering device saw, by AOR."""
    inf = workdir / f"{name}.csv"
    inf.write_text("SEQUENTIAL\n" + "\n".join(users) + "\n")
    result = sipp("persist/call.xml", f"{entry.addr}:{entry.port}", workdir=workdir, name=name, local_ip=CALLER,
                  local_port=next(PORTS), transport="udp", calls=len(users), timeout=30, rate=20, call_limit=5,
                  auth=subscriber("alice"), keys={"domain": DOMAIN, "user": "alice"}, inf=inf, check=False)
    answered = {}
    for line in result.log.splitlines():
        if line.startswith("answered callee="):
            callee, _, ruri = line.removeprefix("answered callee=").partition(" ruri=")
            answered[callee] = ruri.strip()
    assert sorted(answered) == sorted(users), describe(result)
    return answered


def assert_answered_by_instance_0(answered: dict[str, str], bindings: dict[str, dict]) -> None:
    """The device that answered each call was a flow of the AOR's q=1 instance."""
    for user, ruri in answered.items():
        first = {b["Address"] for b in bindings.values() if b["AoR"] == user and b["Q"] == 1}
        assert ruri in first, f"{user}: answered at {ruri}, not one of {sorted(first)}"


# ----- topologies ------------------------------------------------------------------


def farm(workdir: Path, tag: str, base: int, *, reg_defines: dict[str, str] | None = None,
         max_contacts: int = 40) -> tuple[Kamailio, Kamailio, Kamailio]:
    """A registrar (net(base):5070) and two edges (net(base+1), net(base+2)),
    not started; the registrar takes ``max_contacts`` bindings per AOR."""
    reg = registrar(workdir, name=f"{tag}-reg", addr=net(base), defines={**NO_PIKE, **(reg_defines or {})})
    assert "max_contacts: 10 " in reg.yaml_text
    reg.yaml_text = reg.yaml_text.replace("max_contacts: 10 ", f"max_contacts: {max_contacts} ")
    edges = []
    for n in (1, 2):
        e = edge(workdir, f"{tag}-edge{n}", net(base + n), reg.uri)
        e.defines.update(NO_PIKE)
        edges.append(e)
    return reg, edges[0], edges[1]


def up(started: list, *kams: Kamailio) -> None:
    for kam in kams:
        started.append(start(kam))


def loaded(kam: Kamailio) -> int:
    """usrloc's contact count (statistic usrloc:location_contacts)."""
    for line in kam.rpc("stats.get_statistics", "usrloc:"):
        key, _, value = line.partition(" = ")
        if key == "usrloc:location_contacts":
            return int(value)
    raise KeyError("usrloc:location_contacts")


def wait_loaded(kam: Kamailio, count: int, timeout: float = 20.0) -> float:
    """Until usrloc holds ``count`` contacts; the seconds it took. Kamailio
    answers RPC (harness readiness) before the preload is done: usrloc loads
    the table in the first SIP worker's child_init (PROC_SIPINIT) while the
    other processes already run, so lookups right after a start can miss."""
    began = time.monotonic()
    wait_until(lambda: loaded(kam) >= count, f"{count} contacts loaded by {kam.name}", timeout)
    return time.monotonic() - began


def restart(kam: Kamailio, count: int) -> float:
    """A clean restart: SIGTERM (the write-back flush), start, and the preload
    of ``count`` bindings (its seconds)."""
    stop(kam)
    start(kam)
    return wait_loaded(kam, count)


def assert_no_traceback(*kams: Kamailio) -> None:
    for kam in kams:
        assert "Traceback" not in kam.log(), kam.log()[-4000:]


# ----- 1. the registrar ------------------------------------------------------------


def register_through_two_edges(started, workdir: Path, reg: Kamailio, edge1: Kamailio, edge2: Kamailio, tag: str,
                               aors: int) -> tuple[list[str], dict[str, dict], list]:
    """``aors`` AORs x 5 instances x 4 reg-ids (1-2 through edge1, 3-4 through
    edge2, each its own TCP connection) registered and held: the AORs, the
    registrar's bindings by Ruid, the device SIPps."""
    up(started, reg, edge1, edge2)
    rows = plan(f"{tag}u", aors, 5, [1, 2, 3, 4])
    users = sorted({d.user for d in rows})
    runs = [start_devices(e, [d for d in rows if d.reg_id in ids], workdir, f"{tag}-dev{n}", cid=f"{tag}e{n}-%u@dev")
            for n, e, ids in ((1, edge1, (1, 2)), (2, edge2, (3, 4)))]
    started.extend(runs)
    wait_registered(runs, len(rows))
    before = wait_count(reg, users, len(rows))
    assert len(before) == len(rows)
    assert_one_flow_each(before, "tcp")
    return users, before, runs


def test_registrar_restart_keeps_every_outbound_binding(workdir, started):
    """1,000 outbound bindings (50 AORs x 5 instances x 4 reg-ids, reg-ids 1-2
    through edge1, 3-4 through edge2, each its own TCP connection) written back
    to SQLite at a clean stop come back field by field after the start, and
    calls to 20 AORs reach the right device over the very connection that
    registered the binding (the edges kept the flows; the tokens still name them)."""
    reg, edge1, edge2 = farm(workdir, "p1", 100)
    users, before, runs = register_through_two_edges(started, workdir, reg, edge1, edge2, "p1", 50)
    assert len(before) == 1000
    assert {b["Reg-Id"] for b in before.values()} == {1, 2, 3, 4}
    assert {flow_of(b).local_ip for b in before.values()} == {edge1.addr, edge2.addr}

    stop(reg)
    assert len(sqlite_rows(reg.defines["KO_USRLOC_DB_URL"].strip('"'))) == 1000, "the stop flushed every binding"
    start(reg)
    print(f"preload of 1,000 bindings: {wait_loaded(reg, 1000):.2f} s after RPC answered")
    after = snapshot(reg, users)
    assert_same_bindings(before, after)

    cap = capture(workdir, "p1-calls")
    answered = sample_calls(edge2, users[::2][:20], workdir, "p1-calls")
    assert_calls_over_their_flows(cap, 5060, 20)
    assert_answered_by_instance_0(answered, after)
    assert all(run.alive for run in runs), "a device lost its flows"
    assert_no_traceback(reg, edge1, edge2)


# ----- 2. the single server --------------------------------------------------------


def test_single_server_restart_keeps_bindings_udp_flows_answer_and_tcp_devices_register_again(workdir, started):
    """Single-server mode, 400 bindings (200 over UDP, 200 over TCP: 10 AORs x 5
    instances x 4 reg-ids each, every binding its own socket; fewer than the
    registrar's 1,000 because the TCP devices register twice). After a clean
    restart every binding is back field by field. UDP flows are the same
    5-tuple: calls reach those devices at once, without a new REGISTER. The
    TCP connections died with the old process: a call before the devices
    register again gets 480 (and the dead flows' bindings go); then they
    register over new connections with the same Call-ID and a higher CSeq,
    which refreshes the same bindings (same Ruid, a flow token naming the new
    connection), and calls go over the new flows."""
    kam = single(workdir, name="p2-single", addr=net(110), defines={**NO_PIKE})
    kam.yaml_text = kam.yaml_text.replace("max_contacts: 10 ", "max_contacts: 40 ")
    up(started, kam)
    udp_rows = plan("pu", 10, 5, [1, 2, 3, 4])
    tcp_rows = plan("pt", 10, 5, [1, 2, 3, 4])
    udp_users, tcp_users = sorted({d.user for d in udp_rows}), sorted({d.user for d in tcp_rows})
    udp = start_devices(kam, udp_rows, workdir, "p2-udp", transport="un", cid="p2u-%u@dev")
    tcp = start_devices(kam, tcp_rows, workdir, "p2-tcp", cid="p2t-%u@dev")
    started.extend([udp, tcp])
    wait_registered([udp, tcp], 400)
    before = wait_count(kam, udp_users + tcp_users, 400)
    assert_one_flow_each({k: b for k, b in before.items() if b["AoR"] in udp_users}, "udp")
    assert_one_flow_each({k: b for k, b in before.items() if b["AoR"] in tcp_users}, "tcp")

    restart(kam, 400)
    after = snapshot(kam, udp_users + tcp_users)
    assert_same_bindings(before, after)

    cap = capture(workdir, "p2-udp-calls")
    answered = sample_calls(kam, udp_users, workdir, "p2-udp-calls")
    assert_calls_over_their_flows(cap, 5060, len(udp_users))
    assert_answered_by_instance_0(answered, after)

    probe = tcp_users[-1]
    final = call(kam, workdir, next(PORTS), probe, ua_ip=CALLER, scenario="uac_final.xml",
                 ruri=f"sip:{probe}@{DOMAIN}", extra="X-Case: dead-flows").value("final")
    # until the device registers again its bindings name connections that are
    # gone: a call gets 480 and those bindings are removed (dead local flows)
    assert final == "480" and kam.bindings(probe) == []
    tcp.kill()  # its connections are gone: it registers again as a new process would
    again = start_devices(kam, tcp_rows, workdir, "p2-tcp-again", cid="p2t-%u@dev", base_cseq=3)
    started.append(again)
    wait_registered([again], 200)
    refreshed = snapshot(kam, udp_users + tcp_users)
    kept = sorted(k for k, b in before.items() if b["AoR"] != probe)
    assert sorted(k for k, b in refreshed.items() if b["AoR"] != probe) == kept, \
        "registering again made new bindings instead of refreshing"
    assert len([b for b in refreshed.values() if b["AoR"] == probe]) == 20, "the probed AOR registered again"
    for ruid in kept:
        old, new = before[ruid], refreshed[ruid]
        if new["AoR"] in udp_users:
            continue
        assert new["Call-ID"] == old["Call-ID"] and new["CSeq"] == old["CSeq"] + 2 == 4, (old, new)
        # the token names the new connection (assert_one_flow_each below: its
        # port is the new Contact's). It may equal the old token: Kamailio's
        # connection ids start over with the process and the kernel can give
        # the device the same source port again, i.e. the same 5-tuple.
        assert new["Instance"] == old["Instance"] and new["Reg-Id"] == old["Reg-Id"]
    assert_one_flow_each({k: b for k, b in refreshed.items() if b["AoR"] in tcp_users}, "tcp")

    cap = capture(workdir, "p2-tcp-calls")
    answered = sample_calls(kam, tcp_users, workdir, "p2-tcp-calls")
    assert_calls_over_their_flows(cap, 5060, len(tcp_users))
    assert_answered_by_instance_0(answered, refreshed)
    assert_no_traceback(kam)


# ----- 3. PostgreSQL ---------------------------------------------------------------


@pytest.fixture(scope="module")
def pg(workdir: Path) -> Iterator[Postgres]:
    """A private PostgreSQL 15 on loopback (tests/postgres.py) for this module."""
    server = Postgres(workdir / "persist-pg", net(130), PG_PORT)
    try:
        yield server.start()
    finally:
        server.stop()


def pg_count(pg: Postgres, where: str = "true") -> int:
    return int(pg.sql(f"SELECT count(*) FROM location WHERE {where};").strip())


def pg_farm(workdir: Path, pg: Postgres, tag: str, base: int, **defines: str) -> tuple[Kamailio, Kamailio, Kamailio]:
    pg.sql("DELETE FROM location;")
    return farm(workdir, tag, base, reg_defines={"KO_USRLOC_DB_URL": f'"{pg.url}"', **defines})


def test_registrar_restart_on_postgresql_keeps_every_outbound_binding(workdir, started, pg):
    """The same on PostgreSQL (KO_USRLOC_DB_URL): 200 bindings (10 AORs x 5
    instances x 4 reg-ids over two edges) flushed at the stop, back field by
    field after the start, and calls to every AOR over the flows that registered."""
    reg, edge1, edge2 = pg_farm(workdir, pg, "p3", 140)
    users, before, runs = register_through_two_edges(started, workdir, reg, edge1, edge2, "p3", 10)
    assert len(before) == 200

    stop(reg)
    assert pg_count(pg) == 200, "the stop flushed every binding"
    start(reg)
    wait_loaded(reg, 200)
    after = snapshot(reg, users)
    assert_same_bindings(before, after)

    cap = capture(workdir, "p3-calls")
    answered = sample_calls(edge1, users, workdir, "p3-calls")
    assert_calls_over_their_flows(cap, 5060, len(users))
    assert_answered_by_instance_0(answered, after)
    assert_no_traceback(reg, edge1, edge2)


# ----- 4. the project's corrections after a reload ---------------------------------

UA = net(123)
NOT_FIRST_HOP = f"Via: SIP/2.0/UDP {net(99)}:5999;branch=z9hG4bK-lb-1"


def register(target: Kamailio, workdir: Path, port: int, user: str, instance: str, reg_id: int, *, cid: str,
             cseq: int, supported: str = "path, outbound", extra: str = "X-Case: persist") -> str:
    """One REGISTER (tests/sipp/register_expect, a 401 answered: the stored
    CSeq is ``cseq`` + 1); its final status."""
    contact = f'<sip:{user}@{UA}:{port};transport=udp;ob>;+sip.instance="<{instance}>";reg-id={reg_id}'
    result = sipp("register_expect", f"{target.addr}:{target.port}", workdir=workdir, local_ip=UA, local_port=port,
                  transport="udp", auth=subscriber(user),
                  keys={"user": user, "domain": DOMAIN, "expires": "600", "supported": supported, "extra": extra,
                        "contact": contact},
                  extra=["-base_cseq", str(cseq), "-cid_str", cid])
    return result.value("final")


def by_key(bindings: dict[str, dict]) -> dict[tuple[str, int], dict]:
    return {(b["Instance"].strip("<>"), b["Reg-Id"]): b for b in bindings.values()}


def test_cseq_order_ignored_reg_id_and_new_call_id_hold_after_a_reload(workdir, started):
    """The corrections of Kamailio 5.6's usrloc (docs/design.md) hold for
    bindings loaded from the database: (a) RFC 3261 §10.3 step 7: the same
    Call-ID with a lower CSeq than stored gets 400 and changes nothing, a
    higher one refreshes the same binding; (b) RFC 5626 §6: a reg-id ignored
    (not first hop, no ;ob, no Supported: outbound) was stored as 0 and is
    still 0. (c), a new Call-ID for one (instance, reg-id) once the bindings
    are in the database: test_new_call_id_after_a_flush_replaces_only_that_flow."""
    reg, edge1, edge2 = farm(workdir, "p4", 150)
    up(started, reg, edge1, edge2)
    user, other = "p4-dev", "p4-behind-lb"
    inst, inst_b = "urn:uuid:00000000-0000-4000-8000-0000000p4a01", "urn:uuid:00000000-0000-4000-8000-0000000p4b01"
    port1, port2, port3 = next(PORTS), next(PORTS), next(PORTS)
    assert register(edge1, workdir, port1, user, inst, 1, cid="p4-one@ua", cseq=5) == "200"
    assert register(edge2, workdir, port2, user, inst, 2, cid="p4-two@ua", cseq=1) == "200"
    assert register(edge1, workdir, port3, other, inst_b, 1, cid="p4-lb@ua", cseq=1, supported="path",
                    extra=NOT_FIRST_HOP) == "200"
    before = snapshot(reg, [user, other])
    assert sorted(by_key(before)) == [(inst, 1), (inst, 2), (inst_b, 0)], "reg-id behind a non-first hop stored"

    stop(reg)
    rows = {r["instance"].strip("<>"): r for r in sqlite_rows(reg.defines["KO_USRLOC_DB_URL"].strip('"'))
            if r["username"] == other}
    assert rows[inst_b]["reg_id"] == 0, rows
    start(reg)
    wait_loaded(reg, 3)
    assert_same_bindings(before, snapshot(reg, [user, other]))

    # (a) CSeq order: stored 6 (5, then 6 with credentials)
    assert register(edge1, workdir, port1, user, inst, 1, cid="p4-one@ua", cseq=3) == "400"
    assert_same_bindings(before, snapshot(reg, [user, other]))
    assert register(edge1, workdir, port1, user, inst, 1, cid="p4-one@ua", cseq=10) == "200"
    now = by_key(snapshot(reg, [user, other]))
    old = by_key(before)
    assert now[(inst, 1)]["Ruid"] == old[(inst, 1)]["Ruid"] and now[(inst, 1)]["CSeq"] == 11
    # (b) still 0 after the reload, and still no reg-id key for that binding
    assert now[(inst_b, 0)]["Reg-Id"] == 0 and now[(inst_b, 0)]["Ruid"] == old[(inst_b, 0)]["Ruid"]
    assert_no_traceback(reg, edge1, edge2)


@pytest.mark.parametrize("mode,reload", [
    pytest.param("2", False, id="write-back-flushed"),
    pytest.param("2", True, id="write-back-reloaded"),
    pytest.param("1", False, id="write-through-flushed"),
    pytest.param("1", True, id="write-through-reloaded"),
])
def test_new_call_id_after_a_flush_replaces_only_that_flow(workdir, started, mode, reload):
    """RFC 5626 §6 (keyed by AOR, instance, reg-id): a rebooted device's new
    Call-ID for reg-id 1 replaces that binding alone, also once the bindings
    are in the database (written by the timer, or loaded at a start). In
    write-back mode (the cfg default) the replaced binding lingers in usrloc's
    memory until its timer and Kamailio's save() would drop the instance's
    other flows: adapter.usrloc.drop_lingering runs the timer first."""
    n = int(mode) * 2 + int(reload)
    reg, edge1, edge2 = farm(workdir, f"p5{n}", 160 + 5 * n,
                             reg_defines={"KO_USRLOC_TIMER": "1", "KO_USRLOC_DB_MODE": mode})
    up(started, reg, edge1, edge2)
    user = f"p5-reboot-{n}"
    inst = "urn:uuid:00000000-0000-4000-8000-0000000p5a01"
    port1, port2 = next(PORTS), next(PORTS)
    assert register(edge1, workdir, port1, user, inst, 1, cid=f"p5-one-{n}@ua", cseq=1) == "200"
    assert register(edge2, workdir, port2, user, inst, 2, cid=f"p5-two-{n}@ua", cseq=1) == "200"
    url = reg.defines["KO_USRLOC_DB_URL"].strip('"')
    wait_until(lambda: len([r for r in sqlite_rows(url) if r["username"] == user]) == 2, "both bindings written",
               timeout=5)
    before = by_key(snapshot(reg, [user]))
    if reload:
        restart(reg, 2)
    assert register(edge1, workdir, port1, user, inst, 1, cid=f"p5-rebooted-{n}@ua", cseq=1) == "200"
    now = by_key(snapshot(reg, [user]))
    assert sorted(now) == [(inst, 1), (inst, 2)], f"the new Call-ID of reg-id 1 dropped reg-id 2: {sorted(now)}"
    assert now[(inst, 1)]["Call-ID"] == f"p5-rebooted-{n}@ua"
    assert {k: now[(inst, 2)][k] for k in SAME} == {k: before[(inst, 2)][k] for k in SAME}


# ----- 5. faults: nothing lost -----------------------------------------------------


def log_lines(kam: Kamailio, *words: str, since: int = 0) -> list[str]:
    return [line for line in kam.log()[since:].splitlines() if all(w in line for w in words)]


def test_locked_sqlite_keeps_answering_and_catches_up_when_released(workdir, started):
    """Write-back (KO_USRLOC_TIMER=1) with another process holding the SQLite
    file's write lock (BEGIN EXCLUSIVE): REGISTERs get 200 and calls work from
    memory, Kamailio logs each failed write, and once the lock goes the rows
    are written within a few timer runs; nothing is lost."""
    kam = single(workdir, name="p6-single", addr=net(180), defines={**NO_PIKE, "KO_USRLOC_TIMER": "1"})
    up(started, kam)
    url = kam.defines["KO_USRLOC_DB_URL"].strip('"')
    lock = sqlite3.connect(url.removeprefix("sqlite://"), isolation_level=None, timeout=0)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        lock.execute("DELETE FROM location")  # holds the write lock until the ROLLBACK
        rows = plan("lk", 2, 5, [1, 2])
        users = sorted({d.user for d in rows})
        dev = start_devices(kam, rows, workdir, "p6-dev", transport="un", cid="p6-%u@dev")
        started.append(dev)
        wait_registered([dev], len(rows))
        assert len(wait_count(kam, users, len(rows))) == len(rows)
        assert_answered_by_instance_0(sample_calls(kam, users, workdir, "p6-calls"), snapshot(kam, users))
        wait_until(lambda: log_lines(kam, "wb_timer", "inserting contact into database failed"),
                   "a failed write logged", timeout=10)
        assert log_lines(kam, "db_sqlite", "database is locked")
        assert not [r for r in sqlite_rows(url) if r["username"] in users], "written through the lock?"
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    released = time.monotonic()
    wait_until(lambda: len([r for r in sqlite_rows(url) if r["username"] in users]) == len(rows),
               "the rows written after the lock went", timeout=5)
    print(f"caught up {time.monotonic() - released:.1f} s after the lock was released")
    assert len(snapshot(kam, users)) == len(rows)
    assert_no_traceback(kam)


def test_postgresql_down_write_back_keeps_answering_and_catches_up(workdir, started, pg):
    """Write-back on PostgreSQL (KO_USRLOC_TIMER=1), the server killed
    (SIGKILL, tests/postgres.py): REGISTERs still get 200 and calls work from
    memory, the failed writes are logged, and after PostgreSQL is back the
    rows catch up; a restart then loads every binding."""
    reg, edge1, edge2 = pg_farm(workdir, pg, "p7", 190, KO_USRLOC_TIMER="1")
    up(started, reg, edge1, edge2)
    first, second = plan("pa", 2, 5, [1]), plan("pb", 2, 5, [1])
    users = sorted({d.user for d in first + second})
    dev1 = start_devices(edge1, first, workdir, "p7-dev1", transport="un", cid="p7a-%u@dev")
    started.append(dev1)
    wait_registered([dev1], len(first))
    wait_until(lambda: pg_count(pg) == len(first), "the first bindings written", timeout=5)
    mark = len(reg.log())
    pg.kill()
    try:
        dev2 = start_devices(edge2, second, workdir, "p7-dev2", transport="un", cid="p7b-%u@dev")
        started.append(dev2)
        wait_registered([dev2], len(second))
        down = snapshot(reg, users)
        assert len(down) == len(first) + len(second)
        assert_answered_by_instance_0(sample_calls(edge1, users, workdir, "p7-calls"), down)
        wait_until(lambda: log_lines(reg, "wb_timer", "failed", since=mark), "a failed write logged", timeout=10)
        assert log_lines(reg, "ERROR", "db_postgres", since=mark)
    finally:
        pg.start()
    back = time.monotonic()
    wait_until(lambda: pg_count(pg) == len(first) + len(second), "the rows written after PostgreSQL came back",
               timeout=15)
    print(f"caught up {time.monotonic() - back:.1f} s after PostgreSQL answered again")
    restart(reg, len(down))
    assert_same_bindings(down, snapshot(reg, users))
    assert_no_traceback(reg, edge1, edge2)


def test_postgresql_down_in_write_through_mode_refuses_with_500(workdir, started, pg):
    """Write-through (KO_USRLOC_DB_MODE=1) with PostgreSQL killed, as Kamailio
    5.6 does it (measured): a new binding gets 500 Server Internal Error and
    is not kept in memory either; a refresh of a stored binding also gets 500,
    yet memory has taken it (the new CSeq and Path are served) while the
    database keeps the old row, and nothing writes it later (CS_DIRTY waits
    for the next refresh). Once PostgreSQL is back, db_postgres reconnects on
    the next query: REGISTERs get 200 and are written at once."""
    reg, edge1, edge2 = pg_farm(workdir, pg, "p8", 200, KO_USRLOC_DB_MODE="1")
    up(started, reg, edge1, edge2)
    inst = "urn:uuid:00000000-0000-4000-8000-0000000p8a01"
    assert register(edge1, workdir, next(PORTS), "p8-up", inst, 1, cid="p8-up@ua", cseq=1) == "200"
    assert pg.sql("SELECT username, cseq FROM location;").split() == ["p8-up|2"], "written before the 200"
    [stored] = reg.bindings("p8-up")
    mark = len(reg.log())
    pg.kill()
    try:
        assert register(edge1, workdir, next(PORTS), "p8-down", inst, 1, cid="p8-down@ua", cseq=1) == "500"
        assert reg.bindings("p8-down") == [], "write-through kept a binding it could not write"
        assert log_lines(reg, "insert_ucontact(): failed to insert in database", since=mark)
        assert register(edge1, workdir, next(PORTS), "p8-up", inst, 1, cid="p8-up@ua", cseq=10) == "500"
        [refreshed] = reg.bindings("p8-up")
        assert refreshed["Ruid"] == stored["Ruid"] and refreshed["CSeq"] == 11 and refreshed["Path"] != stored["Path"]
        assert refreshed["State"] == "CS_DIRTY"
    finally:
        pg.start()
    assert register(edge1, workdir, next(PORTS), "p8-after", inst, 1, cid="p8-after@ua", cseq=1) == "200"
    assert sorted(pg.sql("SELECT username, cseq FROM location;").split()) == ["p8-after|2", "p8-up|2"], \
        "the refresh answered 500 is in memory only"
    assert_no_traceback(reg, edge1, edge2)


def insert_rows(url: str, rows: list[dict[str, object]]) -> None:
    """Rows written into the location table behind Kamailio's back (a foreign
    writer, a bad migration): every column not named takes its default."""
    conn = sqlite3.connect(url.removeprefix("sqlite://"))
    try:
        for row in rows:
            names = ", ".join(row)
            marks = ", ".join("?" for _ in row)
            conn.execute(f"INSERT INTO location ({names}) VALUES ({marks})", list(row.values()))
        conn.commit()
    finally:
        conn.close()


def bad_rows(edge1: Kamailio) -> dict[str, dict[str, object]]:
    """One foreign or broken row per AOR (username), by the AOR."""
    soon = 2440587.5 + (time.time() + 600) / 86400.0  # a Julian day, as db_sqlite stores times: 600 s ahead
    closed = f"sip:x@{net(250)}:5999;transport=tcp"  # nothing listens there
    rows = {
        "p9-garbage-contact": {"contact": "not a uri <<>> ;;"},
        "p9-nulls": {"contact": closed, "domain": None, "received": None, "path": None, "socket": None,
                     "methods": None, "instance": None},
        "p9-bad-path": {"contact": closed, "path": "<sip:@@;;lr", "instance": "<urn:uuid:p9-bad-path>",
                        "reg_id": 1},
        "p9-bare-instance": {"contact": closed, "instance": "urn:uuid:00000000-0000-4000-8000-00000000p9b1",
                             "reg_id": 1, "path": f"<sip:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA@{edge1.addr};lr;ob>"},
        "p9-huge-callid": {"contact": closed, "callid": "c" * 5000},
        "p9-tel": {"contact": "tel:+4930123456"},
        "p9-odd-numbers": {"contact": closed, "q": 7.5, "cseq": -3, "reg_id": -1, "flags": 2**40, "cflags": -1,
                           "instance": "<urn:uuid:p9-odd>"},
        "p9-text-expires": {"contact": closed, "expires": "tomorrow-ish"},
        "p9-past": {"contact": closed, "expires": soon - 1.0},
    }
    for n, (user, row) in enumerate(rows.items()):
        row.setdefault("ruid", f"p9-foreign-{n}")
        row.setdefault("expires", soon)
        row.setdefault("last_modified", soon - 600 / 86400.0)
        row["username"] = user
    return rows


def test_corrupted_and_foreign_rows_neither_stop_kamailio_nor_hide_good_bindings(workdir, started, local_port):
    """Rows Kamailio never wrote (garbage contact, NULLs where allowed, a Path
    that does not parse, an instance without brackets, a 5,000-byte Call-ID,
    a tel: contact, out-of-range numbers, an empty RUID, an unreadable expiry,
    one already expired) put in the table before a start: Kamailio starts, no
    worker raises a Python traceback, the good bindings are served and called
    over their flows, and a call to each broken AOR gets a defined answer."""
    reg, edge1, edge2 = farm(workdir, "p9", 210)
    up(started, reg, edge1, edge2)
    good = plan("p9g", 2, 2, [1])
    users = sorted({d.user for d in good})
    dev = start_devices(edge1, good, workdir, "p9-dev", cid="p9-%u@dev")
    started.append(dev)
    wait_registered([dev], len(good))
    before = wait_count(reg, users, len(good))
    stop(reg)
    url = reg.defines["KO_USRLOC_DB_URL"].strip('"')
    rows = bad_rows(edge1)
    insert_rows(url, list(rows.values()))
    start(reg)
    wait_loaded(reg, len(good) + len(rows))
    assert reg.proc.poll() is None and loaded(reg) == len(good) + len(rows), "every row loaded"
    assert_same_bindings(before, snapshot(reg, users))
    served = {user: len(reg.bindings(user)) for user in rows}
    # usrloc takes every row as it is; an unreadable or past expiry is expired at once
    assert served == {**dict.fromkeys(rows, 1), "p9-text-expires": 0, "p9-past": 0}, served
    cap = capture(workdir, "p9-calls")
    answered = sample_calls(edge2, users, workdir, "p9-calls")
    assert_calls_over_their_flows(cap, 5060, len(users))
    assert_answered_by_instance_0(answered, before)
    finals = {}
    for n, user in enumerate(rows):
        result = call(edge2, workdir, local_port + n, user, ua_ip=CALLER, scenario="uac_final.xml",
                      ruri=f"sip:{user}@{DOMAIN}", extra="X-Case: bad-row")
        finals[user] = result.value("final")
    # 480: nothing usable (no flow, no parsable target, a closed port, expired);
    # 403: the edge refused the forged token of the foreign Path
    assert finals == {**dict.fromkeys(rows, "480"), "p9-bare-instance": "403"}, finals
    assert reg.proc.poll() is None and reg.rpc("core.uptime")
    assert_no_traceback(reg, edge1, edge2)


def test_a_row_without_ruid_is_refused_by_our_database_and_stops_kamailio_without_the_guard(workdir, started):
    """Kamailio 5.6 (measured): one location row with an empty ruid makes the
    preload fail ("no ruid for aor"), the first SIP worker's init fails and
    the main process shuts the whole server down ("terminating due to
    SIGCHLD"), right after it began answering RPC (the preload runs in that
    worker's child_init). The databases we make refuse such a row
    (db/location-guard-sqlite.sql); without the guard, Kamailio stops:
    docs/operations.md."""
    kam = single(workdir, name="p10-single", addr=net(230))
    url = kam.defines["KO_USRLOC_DB_URL"].strip('"')
    soon = 2440587.5 + (time.time() + 600) / 86400.0
    row = {"ruid": "", "username": "p10-no-ruid", "contact": f"sip:x@{net(250)}:5999", "expires": soon}
    with pytest.raises(sqlite3.IntegrityError, match="ruid must not be empty"):
        insert_rows(url, [row])
    conn = sqlite3.connect(url.removeprefix("sqlite://"))
    try:  # a database made without our guard
        conn.executescript("DROP TRIGGER ko_location_ruid_insert; DROP TRIGGER ko_location_ruid_update;")
    finally:
        conn.close()
    insert_rows(url, [row])
    started.append(kam)  # stopped at the end whatever happens
    try:
        start(kam)
    except ProcessError:
        pass  # it may die before the first RPC answer, too
    # the main process then shuts down all of it. How long the last process
    # takes varies (0.3 s alone; once, in a loaded run, the RPC process still
    # answered 10 s later), so the rule is the main process's own word.
    wait_until(lambda: log_lines(kam, "handle_sigs(): terminating due to SIGCHLD"), "Kamailio shutting down",
               timeout=10)
    assert log_lines(kam, "new_ucontact(): no ruid for aor: p10-no-ruid")
    assert log_lines(kam, "failed to preload domain 'location'")
