"""Bindings that survive a restart (issue 14): usrloc on a database, reloaded at start.

Devices are SIPp (tests/sipp/persist): one binding per call, each call on its
own socket (``-t tn``: its own TCP connection; ``-t un``: its own UDP port), so
every binding is a flow of its own, and the Contact names that socket's port.
That a call really came over the flow of the binding it was sent to is read
off the wire: tshark captures the device's traffic while the sample calls run,
and every INVITE toward a device must arrive on the socket whose port its
Request-URI (the binding's Contact) names, and its 200 leave from that socket.

Compared over RPC (ul.lookup per AOR): Ruid, Address, Path (the flow token),
Instance, Reg-Id, Call-ID, CSeq, Received, Flags, CFlags, Q, User-Agent,
Methods, Socket; the absolute expiry within 2 s (db_sqlite stores the time as
a Julian day, a REAL: it can come back up to 1 s early, and the RPC's
Expires is whole seconds remaining, read at a slightly different moment) and
Last-Modified within 1 s.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from locations import sqlite_rows

from actors import wait_until
from harness import ROOT, TEST_KEY, Kamailio, SippRun, describe, sipp, start_sipp
from outbound.sipmsg import SipUri, parse_name_addr
from outbound.tokens import FlowTokenCodec, parse_key
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


def test_registrar_restart_keeps_every_outbound_binding(workdir, started):
    """1,000 outbound bindings (50 AORs x 5 instances x 4 reg-ids, reg-ids 1-2
    through edge1, 3-4 through edge2, each its own TCP connection) written back
    to SQLite at a clean stop come back field by field after the start, and
    calls to 20 AORs reach the right device over the very connection that
    registered the binding (the edges kept the flows; the tokens still name them)."""
    reg, edge1, edge2 = farm(workdir, "p1", 100)
    up(started, reg, edge1, edge2)
    rows = plan("pr", 50, 5, [1, 2, 3, 4])
    users = sorted({d.user for d in rows})
    runs = [start_devices(e, [d for d in rows if d.reg_id in ids], workdir, f"p1-dev{n}", cid=f"p1e{n}-%u@dev")
            for n, e, ids in ((1, edge1, (1, 2)), (2, edge2, (3, 4)))]
    started.extend(runs)
    wait_registered(runs, len(rows))
    before = wait_count(reg, users, 1000)
    assert len(before) == 1000
    assert_one_flow_each(before, "tcp")
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
    TCP connections died with the old process: the devices register again over
    new connections with the same Call-ID and a higher CSeq, which refreshes
    the same bindings (same Ruid, new flow token), and calls go over the new flows."""
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

    tcp.kill()  # its connections are gone: it registers again as a new process would
    again = start_devices(kam, tcp_rows, workdir, "p2-tcp-again", cid="p2t-%u@dev", base_cseq=3)
    started.append(again)
    wait_registered([again], 200)
    refreshed = snapshot(kam, udp_users + tcp_users)
    assert sorted(refreshed) == sorted(before), "registering again made new bindings instead of refreshing"
    for ruid, new in refreshed.items():
        old = before[ruid]
        if new["AoR"] in udp_users:
            continue
        assert new["Call-ID"] == old["Call-ID"] and new["CSeq"] == old["CSeq"] + 2 == 4, (old, new)
        assert new["Path"] != old["Path"] and new["Instance"] == old["Instance"] and new["Reg-Id"] == old["Reg-Id"]
    assert_one_flow_each({k: b for k, b in refreshed.items() if b["AoR"] in tcp_users}, "tcp")

    cap = capture(workdir, "p2-tcp-calls")
    answered = sample_calls(kam, tcp_users, workdir, "p2-tcp-calls")
    assert_calls_over_their_flows(cap, 5060, len(tcp_users))
    assert_answered_by_instance_0(answered, refreshed)
    assert_no_traceback(kam)
