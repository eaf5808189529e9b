"""SIP over WebSocket on the container topology (docker/compose.yaml, issue 15).

edge1 and edge2 listen on WebSocket too (KO_DEFINES=WITH_WEBSOCKET, ws on :8080
of their fixed addresses). The device is tests/ws_ua.py over tests/wsclient.py
(stdlib Python: SIPp speaks no WebSocket), run with the image's python3 INSIDE
ua-b, so that its connections stay on the internal network: the files are
copied to the host folder mounted at /out, and a small driver (WS_DEVICE) keeps
one WebSocket flow per edge, answers the calls that come over them and reports
each event as one JSON line; the test tells it on stdin which flow to close.
The caller is SIPp in ua-a over UDP through edge2, as in test_topology.py.
"""

from __future__ import annotations

import itertools
import json
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from docker_topology import Topology
from harness import ROOT, SippResult, describe
from outbound.sipmsg import parse_name_addr
from outbound.tokens import FlowTokenCodec, parse_key

WS_PORT = 8080
DOMAIN = "example.com"
PORTS = itertools.count(21000)
DEVICE_LIMIT = 150  # seconds: the driver exits by itself after that, whatever happens
HELPERS = ("wsclient.py", "ws_ua.py", "digest.py")

WS_DEVICE = r'''
import json, os, secrets, sys, threading, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ws_ua import WsUA
from wsclient import WsClient, WsClosed

USER, PASSWORD, INSTANCE, ME, PORT, LIMIT = sys.argv[1:7]
FLOWS = [(int(regid), edge) for regid, edge in (arg.split("=") for arg in sys.argv[7:])]
threading.Timer(float(LIMIT), os._exit, (3,)).start()  # bounded, whatever the test does
lock = threading.Lock()
closing = {}

def report(**event):
    with lock:
        print(json.dumps(event), flush=True)

def serve(regid, ua):
    """Answer every INVITE of this flow (200, ACK, BYE 200) until told to close it."""
    while True:
        if closing.get(regid):
            ua.ws.close()
            report(event="closed", regid=regid)
            return
        try:
            invite = ua.wait_request("INVITE", 0.5)
        except TimeoutError:
            continue
        except (WsClosed, OSError) as exc:
            report(event="lost", regid=regid, error=str(exc))
            return
        try:
            ua.reply(invite, 200, "OK", to_tag=secrets.token_hex(4))
            ua.wait_request("ACK", 10)
            bye = ua.wait_request("BYE", 10)
            ua.reply(bye, 200, "OK")
        except (TimeoutError, WsClosed, OSError) as exc:
            report(event="failed", regid=regid, error=repr(exc))
            return
        report(event="answered", regid=regid, rr=invite.all("Record-Route"), ruri=invite.first)

for regid, edge in FLOWS:
    ws = WsClient(edge, int(PORT), local_ip=ME, timeout=5)
    answer = ws.handshake(origin="https://phone.example.com")
    if answer.status != 101:
        report(event="refused", regid=regid, status=answer.status)
        sys.exit(1)
    ua = WsUA(ws, USER, PASSWORD)
    final = ua.register(INSTANCE, regid)
    report(event="registered", regid=regid, status=final.status, local=list(ws.local))
    if final.status != 200:
        sys.exit(1)
    threading.Thread(target=serve, args=(regid, ua), daemon=True).start()

for line in sys.stdin:
    command, _, regid = line.strip().partition(" ")
    if command == "close":
        closing[int(regid)] = True
os._exit(0)
'''


def instance(n: int) -> str:
    return f"urn:uuid:00000000-0000-4000-8000-{n:012d}"


class WsDevice:
    """WS_DEVICE running in a UA container (docker exec -i); its events are read
    by a thread into a queue, its stderr lands in out/<name>/stderr.log."""

    def __init__(self, topo: Topology, service: str, name: str, user: str, password: str, inst: str,
                 flows: tuple[tuple[int, str], ...]) -> None:
        self.topo, self.service = topo, service
        self.folder = topo.out / name
        self.folder.mkdir(parents=True, exist_ok=True)
        for helper in HELPERS:
            shutil.copy(ROOT / "tests" / helper, self.folder / helper)
        (self.folder / "ws_device.py").write_text(WS_DEVICE)
        self.stderr = (self.folder / "stderr.log").open("w")
        args = [user, password, inst, topo.addr(service), str(WS_PORT), str(DEVICE_LIMIT),
                *(f"{regid}={topo.addr(edge)}" for regid, edge in flows)]
        self.proc = subprocess.Popen(["docker", "exec", "-i", topo.containers[service], "python3",
                                      f"/out/{name}/ws_device.py", *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        self.events: queue.Queue[dict] = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                self.events.put({"event": "output", "line": line})
        self.events.put({"event": "exited"})

    def diagnostics(self) -> str:
        self.stderr.flush()
        return (f"device events: {self.seen}\ndevice stderr:\n{(self.folder / 'stderr.log').read_text()[-3000:]}\n"
                f"{self.service} log:\n{self.topo.logs(self.service)[-2000:]}")

    def expect(self, event: str, regid: int, timeout: float = 20) -> dict:
        """The device's next report, which must be ``event`` for flow ``regid``."""
        try:
            got = self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no '{event}' of flow {regid} from the device in {timeout}s\n"
                                 + self.diagnostics()) from None
        self.seen.append(got)
        assert (got.get("event"), got.get("regid")) == (event, regid), \
            f"expected {event} of flow {regid}, got {got}\n{self.diagnostics()}"
        return got

    def close_flow(self, regid: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"close {regid}\n")
        self.proc.stdin.flush()
        self.expect("closed", regid)

    def stop(self) -> None:
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()
        (self.folder / "events.json").write_text(json.dumps(self.seen, indent=1))


@pytest.fixture
def devices(topo: Topology) -> Iterator[list[WsDevice]]:
    started: list[WsDevice] = []
    yield started
    for device in started:
        device.stop()


def ws_connections(topo: Topology, edge: str, source: str) -> list[dict]:
    return [c for c in topo.rpc(edge, "core.tcp_list") or [] if c.get("src_ip") == source and c.get("type") == "WS"]


def wait_ws_gone(topo: Topology, edge: str, source: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while ws_connections(topo, edge, source):
        if time.monotonic() > deadline:
            raise AssertionError(f"{edge} still holds {ws_connections(topo, edge, source)} after {timeout}s")
        time.sleep(0.1)


def call(topo: Topology, user: str, scenario: str = "caller/uac_short.xml", **keys: str) -> SippResult:
    """The caller (SIPp in ua-a, UDP) through edge2; digest answered as carol."""
    return topo.sipp("ua-a", scenario, f"{topo.addr('edge2')}:5060", local_port=next(PORTS), timeout=20,
                     check=False, keys={"callee": user, "domain": DOMAIN, "user": "carol", **keys},
                     auth=topo.subscriber("carol"))


def rr_hosts(answered: dict) -> list[str]:
    return [parse_name_addr(v.strip()).sip_uri.host for r in answered["rr"] for v in r.split(",")]


def test_websocket_device_in_the_topology_fails_over_between_its_flows(topo, devices):
    """Issue 15, RFC 7118 §5, RFC 5626 §5.3.1 / §7 on the containers: a device in
    ua-b registers one instance over WebSocket twice, reg-id 2 through edge2 and
    reg-id 1 through edge1 (ws :8080; each Path a flow token naming a ws flow);
    a call from ua-a is answered over flow 1 (the most recent); flow 1's
    WebSocket closes: the next call is answered over flow 2 (edge1's 430 never
    reaches the caller); with flow 2 closed too the caller gets 480."""
    user, password = topo.subscriber("wanda")
    device = WsDevice(topo, "ua-b", "wanda-ws", user, password, instance(21), ((2, "edge2"), (1, "edge1")))
    devices.append(device)
    local = {}
    for regid in (2, 1):
        registered = device.expect("registered", regid)
        assert registered["status"] == 200, device.diagnostics()
        local[regid] = tuple(registered["local"])

    codec = FlowTokenCodec([parse_key(topo.flow_keys)])
    bindings = {b["Reg-Id"]: b for b in topo.bindings("reg1", user)}
    assert sorted(bindings) == [1, 2], bindings
    for regid, edge in ((1, "edge1"), (2, "edge2")):
        path = parse_name_addr(bindings[regid]["Path"]).sip_uri
        assert path.host == topo.addr(edge), bindings[regid]
        flow = codec.flow_of(path.user or "")
        assert flow is not None and flow.transport == "ws", bindings[regid]
        assert (flow.local_ip, flow.local_port) == (topo.addr(edge), WS_PORT), flow
        assert (flow.remote_ip, flow.remote_port) == local[regid], flow

    first = call(topo, user)
    answered = device.expect("answered", 1)
    assert first.returncode == 0 and first.value("who") == user, describe(first)
    assert topo.addr("edge1") in rr_hosts(answered), answered

    device.close_flow(1)
    wait_ws_gone(topo, "edge1", topo.addr("ua-b"))
    second = call(topo, user)
    answered = device.expect("answered", 2)
    assert second.returncode == 0 and second.value("who") == user, describe(second)
    assert topo.addr("edge2") in rr_hosts(answered), answered
    assert not re.search(r"^SIP/2.0 430", second.messages, re.M), "the caller saw a 430"

    device.close_flow(2)
    wait_ws_gone(topo, "edge2", topo.addr("ua-b"))
    none_left = call(topo, user, "caller/uac_final.xml", ruri=f"sip:{user}@{DOMAIN}", extra="X-Case: ws-none-left")
    assert none_left.value("final") == "480", describe(none_left)
    for edge in ("edge1", "edge2"):
        log = topo.logs(edge)
        assert "Traceback" not in log and "exception in route" not in log, log[-4000:]
