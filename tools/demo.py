"""The main job as a story one can watch (./run demo, ./run demo --containers).

A device (one +sip.instance) registers two flows, reg-id 2 through edge2 and
reg-id 1 through edge1; a caller calls it through edge2 and the call arrives
over flow 1; edge1 dies; the next call is answered over flow 2 and the caller
never sees a 430; then reg1, the registrar the edges send to first, dies: the
next call goes to reg2 (the edges find the registrars by DNS SRV, reg1 first),
which holds the device's bindings replicated over DMQ and sends the call over
the device's flow 2; an INVITE with a forged flow token is refused with 403.
Digest authentication is on, as in production: the registrars have a subscriber
database with the demo's users (dana, carol); every REGISTER is answered 401
first and every call 407 first, and the UAs answer with their credentials.

--websocket: the device is a WebSocket client (RFC 7118; tests/ws_device.py,
one connection per flow to the edges' ws :8080, as a browser's SIP library
keeps them) instead of SIPp over TCP; the story and its checks are the same.

Default: Kamailio processes on loopback (KO_TEST_NET, default 127.0.0), no
Docker: reg1 and reg2 a DMQ pair (WITH_DMQ) on net(21) and net(22), each with
its own bindings file; the edges find them as sip:farm.ko.test, served by
Debian's nsd (tests/nsd.py, tests/dns/ko.test.zone) on net(53).
--containers: the same story on docker/compose.yaml (images built
locally, dockerd started when needed). tshark captures the SIP traffic; the
summary (who answered, response codes, timings) is printed and a ladder
diagram is written to out/demo/<time>/ladder.svg and .png. Each role's
metrics socket (/metrics) is scraped when the story starts and again at the
role's end (before it is killed, or at the end of the story): the changes of
kemi-outbound's counters and gauges are printed and written beside the ladder
(metrics.md, metrics.png). Everything the demo starts it stops again, pass or
fail.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "kemi"))

import yaml  # noqa: E402
from metric_deltas import Delta, deltas  # noqa: E402
from metric_deltas import draw as draw_metrics  # noqa: E402
from metric_deltas import table as metrics_table  # noqa: E402

from dns_setup import NS, NS_PORT  # noqa: E402
from harness import CFG_DIR, ProcessError, SippResult, SippRun, describe, sipp, start_sipp  # noqa: E402
from ladder import Capture, Event, Lanes, Message, draw, read_messages  # noqa: E402
from nsd import Nsd  # noqa: E402
from outbound.sipmsg import parse_name_addr  # noqa: E402
from outbound.tokens import FlowTokenCodec, parse_key  # noqa: E402
from subscribers import SubscriberDB, password_for  # noqa: E402
from topology import TEST_NET, net, registrar, two_edges  # noqa: E402
from ws_device import WsDevice  # noqa: E402

USER = "dana"
CALLER = "carol"
DOMAIN = "example.com"
SUBSCRIBERS = (USER, CALLER)  # the registrar's subscriber database: these two, passwords password_for()
INSTANCE = "urn:uuid:00000000-0000-4000-8000-0000000de001"
DEVICE_PORTS = {1: 5091, 2: 5092}
CALLER_PORT = 5093
MARKER_PORT = 5999  # nothing listens here: the capture's end marker goes to it
# loopback: the registrar pair where tests/dns/ko.test.zone puts farm.ko.test
# (SRV priority 10 reg-a = net(21), 20 reg-b = net(22), port 5070)
FARM = "sip:farm.ko.test"
REGISTRAR_HOSTS = {1: 21, 2: 22}
REGISTRAR_PORT = 5070
WS_PORT = 8080  # the edges' WebSocket listener (KO_WS_PORT) with --websocket
ORIGIN = "https://phone.example.com"  # the page a WebSocket device comes from (websocket.allowed_origins)


class StoryError(RuntimeError):
    pass


def demo_yaml() -> str:
    """cfg/outbound.yaml as shipped (no test-only settings), its resolver pointed at
    the demo's nsd and WebSocket handshakes taken only from the demo's page (the
    settings a deployment makes as well)."""
    data = yaml.safe_load((CFG_DIR / "outbound.yaml").read_text())
    data["dns"].update({"nameservers": [NS], "port": NS_PORT})
    data["websocket"]["allowed_origins"] = [ORIGIN]
    return yaml.safe_dump(data, sort_keys=False)


def device_keys(regid: int) -> dict[str, str]:
    return {"user": USER, "domain": DOMAIN, "instance": INSTANCE, "regid": str(regid), "expires": "600",
            "who": f"flow{regid}"}


class WsFlows:
    """The device's flows over WebSocket (--websocket): one tests/ws_device.py per
    flow, started by ``start(regid, edge_ip, folder)``; the same instance on each."""

    def __init__(self, start) -> None:
        self.start = start
        self.devices: dict[int, WsDevice] = {}
        self.registered: dict[int, int] = {}

    def register(self, regid: int, edge_ip: str, folder: Path) -> None:
        self.devices[regid] = self.start(regid, edge_ip, folder)

    def alive(self, regid: int) -> bool:
        device = self.devices[regid]
        while regid not in self.registered and (event := device.next_event(0.05)) is not None:
            if event.get("event") == "registered":
                self.registered[regid] = event["status"]
        return device.alive and self.registered.get(regid, 200) == 200

    def failure(self, regid: int) -> str:
        return self.devices[regid].diagnostics()

    def stop(self) -> None:
        for device in self.devices.values():
            device.stop()


class LoopbackStage:
    """A registrar pair (home proxies, DMQ), two edges finding them by DNS SRV and
    the DNS server, as processes on loopback."""

    mode = "loopback, Kamailio processes"

    def __init__(self, out: Path, key: str, websocket: bool = False) -> None:
        self.out = out
        self.websocket = websocket
        yaml_text = demo_yaml()
        # the demo's own subscriber database, in its out dir (both registrars read it;
        # each keeps its bindings in its own file, out/regN.location.sqlite)
        self.db = SubscriberDB.create_sqlite(out / "subscribers.sqlite")
        self.db.add_many((user, DOMAIN, password_for(user)) for user in SUBSCRIBERS)
        self.nsd = Nsd(out / "nsd", NS, NS_PORT, values={"NET": TEST_NET, "MOVING": net(REGISTRAR_HOSTS[1])})
        addrs = {n: net(host) for n, host in REGISTRAR_HOSTS.items()}
        secret = secrets.token_hex(16)  # the pair's nonce secret (KO_AUTH_SECRET)
        # the pair's Record-Route seal / temporary GRUU key (not the edges' flow-token key)
        seal_key = "hex:" + secrets.token_hex(32)
        # reg1 on net(21):5070 and reg2 on net(22):5070, a DMQ pair; edge1 on net(2),
        # edge2 on net(3), both toward sip:farm.ko.test (SRV: reg1 first)
        self.registrars = {
            n: registrar(out, name=f"reg{n}", addr=addrs[n], port=REGISTRAR_PORT, db=self.db, yaml_text=yaml_text,
                         defines={"WITH_DMQ": "", "KO_AUTH_SECRET": f'"{secret}"', "KO_SERVER_ID": str(n),
                                  "KO_DMQ_ADDRESS": f'"sip:{addrs[n]}:{REGISTRAR_PORT}"',
                                  "KO_DMQ_PEER": f'"sip:{addrs[3 - n]}:{REGISTRAR_PORT}"'},
                         env={"KO_FLOW_KEYS": seal_key})
            for n in (1, 2)}
        self.edges = two_edges(out, FARM, key=key, yaml_text=yaml_text, ws_port=WS_PORT if websocket else None)
        self.device_ip = net(20)
        self.caller_ip = net(30)
        self.flows: dict[int, SippRun] = {}
        self.ws_flows = WsFlows(lambda regid, edge_ip, folder: WsDevice(
            [sys.executable], str(ROOT / "tests" / "ws_device.py"), folder, user=USER,
            password=password_for(USER), instance=INSTANCE, local_ip=self.device_ip, port=WS_PORT, origin=ORIGIN,
            flows=((regid, edge_ip),), who="flow{regid}", limit=300))
        self.started: list = []

    def start(self) -> None:
        for item in (self.nsd, *self.registrars.values(), *self.edges.values()):
            item.start()
            self.started.append(item)
        for n in (1, 2):  # the pair knows each other (DMQ node list) before the story starts
            wait_for(lambda n=n: len(dmq_nodes(self.registrars[n])) >= 2, f"reg{n}'s DMQ peer")

    def stop(self) -> None:
        for flow in self.flows.values():
            flow.kill()
        self.ws_flows.stop()
        for item in reversed(self.started):
            item.stop()

    def edge_addr(self, n: int) -> str:
        return self.edges[n].addr

    def registrar_addr(self, n: int) -> str:
        return self.registrars[n].addr

    @property
    def farm(self) -> str:
        return FARM

    def credentials(self, user: str) -> tuple[str, str]:
        return user, password_for(user)

    def capture(self, path: Path) -> Capture:
        hosts = " or ".join(f"host {ip}" for ip in
                            (*(r.addr for r in self.registrars.values()), *(e.addr for e in self.edges.values()),
                             self.device_ip, self.caller_ip))
        return Capture("lo", f"({hosts}) and (port 5060 or port 5070 or tcp port {WS_PORT} or udp port {MARKER_PORT})",
                       path)

    def sip_ports(self) -> tuple[int, ...]:
        return (5060, 5070)

    def register_flow(self, regid: int, edge: int) -> None:
        if self.websocket:
            self.ws_flows.register(regid, self.edges[edge].addr, self.out / f"device-flow{regid}")
            return
        self.flows[regid] = start_sipp(
            "device_ob/register.xml", f"{self.edges[edge].addr}:5060", workdir=self.out, local_ip=self.device_ip,
            local_port=DEVICE_PORTS[regid], transport="tcp", keys=device_keys(regid), timeout=120,
            oocsf="device_ob/uas.xml", name=f"device-flow{regid}", auth=self.credentials(USER))

    def flow_alive(self, regid: int) -> bool:
        return self.ws_flows.alive(regid) if self.websocket else self.flows[regid].alive

    def flow_failure(self, regid: int) -> str:
        return self.ws_flows.failure(regid) if self.websocket else describe(self.flows[regid].wait(1))

    def bindings(self, registrar_n: int = 1) -> list[dict]:
        return self.registrars[registrar_n].bindings(USER)

    def caller(self, name: str, scenario: str, edge: int, keys: dict[str, str],
               auth: tuple[str, str] | None) -> SippResult:
        return sipp(scenario, f"{self.edges[edge].addr}:5060", workdir=self.out, local_ip=self.caller_ip,
                    local_port=CALLER_PORT, keys=keys, timeout=30, check=False, name=name, auth=auth)

    def scrape(self, role: str) -> str:
        """The role's /metrics (edge1, edge2, reg1, reg2)."""
        kam = self.edges[int(role[-1])] if role.startswith("edge") else self.registrars[int(role[-1])]
        with urllib.request.urlopen(kam.metrics_url(), timeout=5) as answer:
            return answer.read().decode()

    def kill_edge(self, n: int) -> str:
        self.edges[n].kill()
        return f"edge{n} killed (SIGKILL to its Kamailio processes)"

    def kill_registrar(self, n: int) -> str:
        self.registrars[n].kill()
        return f"reg{n} killed (SIGKILL to its Kamailio processes)"

    def logs(self) -> str:
        return "\n".join(f"--- {k.name} ---\n{k.log()[-3000:]}"
                         for k in (*self.registrars.values(), *self.edges.values()))


class ContainerStage:
    """The same roles in containers: docker/compose.yaml on an internal network."""

    mode = "containers, docker/compose.yaml"

    def __init__(self, out: Path, key: str, websocket: bool = False) -> None:
        from docker_topology import Topology, build_image, ensure_docker

        print("preparing containers: dockerd, images (the first build takes a minute or two) ...", flush=True)
        ensure_docker()
        self.topo = Topology(project=f"kodemo{os.getpid()}", net=os.environ.get("KO_DEMO_NET", "198.18.6"),
                             out=out / "containers", image=build_image(), flow_keys=key)
        self.device_ip = self.topo.addr("ua-b")
        self.caller_ip = self.topo.addr("ua-a")
        self.flows: dict = {}
        self.websocket = websocket
        self.ws_flows = WsFlows(self.container_ws_device)

    def container_ws_device(self, regid: int, edge_ip: str, folder: Path) -> WsDevice:
        """tests/ws_device.py run by ua-b's python3 (docker exec -i) from the host folder
        mounted at /out: the device's connections stay on the internal network."""
        WsDevice.copy_helpers(folder)
        user, password = self.credentials(USER)
        return WsDevice(["docker", "exec", "-i", self.topo.containers["ua-b"], "python3"],
                        f"/out/{folder.relative_to(self.topo.out)}/ws_device.py", folder, user=user,
                        password=password, instance=INSTANCE, local_ip=self.device_ip, port=WS_PORT, origin=ORIGIN,
                        flows=((regid, edge_ip),), who="flow{regid}", limit=300)

    def start(self) -> None:
        self.topo.up()
        for user in SUBSCRIBERS:  # into reg1's and reg2's subscriber files (docker exec ko-subscriber add)
            self.topo.subscriber(user, DOMAIN)
        for n in (1, 2):  # the pair knows each other (DMQ node list) before the story starts
            wait_for(lambda n=n: len(self.topo.rpc(f"reg{n}", "dmq.list_nodes") or []) >= 2, f"reg{n}'s DMQ peer")

    def registrar_addr(self, n: int) -> str:
        return self.topo.addr(f"reg{n}")

    @property
    def farm(self) -> str:
        return self.topo.edge_registrar or "sip:example.com"

    def credentials(self, user: str) -> tuple[str, str]:
        return self.topo.subscriber(user, DOMAIN)

    def stop(self) -> None:
        self.ws_flows.stop()
        self.topo.down()

    def edge_addr(self, n: int) -> str:
        return self.topo.addr(f"edge{n}")

    def capture(self, path: Path) -> Capture:
        return Capture(self.topo.bridge, f"port 5060 or tcp port {WS_PORT} or udp port {MARKER_PORT}", path)

    def sip_ports(self) -> tuple[int, ...]:
        return (5060,)

    def register_flow(self, regid: int, edge: int) -> None:
        if self.websocket:
            self.ws_flows.register(regid, self.edge_addr(edge), self.topo.out / f"device-flow{regid}")
            return
        self.flows[regid] = self.topo.start_sipp(
            "ua-b", "device_ob/register.xml", f"{self.edge_addr(edge)}:5060", local_port=DEVICE_PORTS[regid],
            transport="tcp", keys=device_keys(regid), timeout=120, oocsf="device_ob/uas.xml",
            name=f"device-flow{regid}", auth=self.credentials(USER))

    def flow_alive(self, regid: int) -> bool:
        return self.ws_flows.alive(regid) if self.websocket else self.flows[regid].alive

    def flow_failure(self, regid: int) -> str:
        return self.ws_flows.failure(regid) if self.websocket else describe(self.flows[regid].wait(1))

    def bindings(self, registrar_n: int = 1) -> list[dict]:
        return self.topo.bindings(f"reg{registrar_n}", USER)

    def caller(self, name: str, scenario: str, edge: int, keys: dict[str, str],
               auth: tuple[str, str] | None) -> SippResult:
        return self.topo.sipp("ua-a", scenario, f"{self.edge_addr(edge)}:5060", local_port=CALLER_PORT,
                              keys=keys, timeout=30, check=False, name=name, auth=auth)

    def scrape(self, role: str) -> str:
        """The role's /metrics, fetched inside its container (the socket is on its loopback)."""
        fetch = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9090/metrics').read().decode())"
        return self.topo.exec(role, "python3", "-c", fetch).stdout

    def kill_edge(self, n: int) -> str:
        self.topo.kill(f"edge{n}")
        return f"edge{n} killed (docker kill: the container is gone)"

    def kill_registrar(self, n: int) -> str:
        self.topo.kill(f"reg{n}")
        return f"reg{n} killed (docker kill: the container is gone)"

    def logs(self) -> str:
        return "\n".join(f"--- {s} ---\n{self.topo.logs(s)[-3000:]}" for s in ("reg1", "reg2", "edge1", "edge2"))


def dmq_nodes(kam) -> list:
    """The DMQ nodes a loopback registrar knows (itself included)."""
    try:
        return kam.rpc("dmq.list_nodes") or []
    except (OSError, ProcessError):  # not answering yet
        return []


@dataclass
class Step:
    text: str
    answer: str
    millis: float | None
    ok: bool
    note: str = ""


def wait_for(condition, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise StoryError(f"timed out waiting for {what}")


CHALLENGES = (401, 407)


def exchange(messages: list[Message], call_id: str, requester: str, method: str) -> tuple[Message, Message] | None:
    """The first ``method`` request sent by ``requester`` in ``call_id`` and the final
    response it got back in the end: past a digest challenge (401/407) that the UA
    answered with credentials, the answer to the authenticated request."""
    request = next((m for m in messages if m.call_id == call_id and m.method == method and m.src[0] == requester),
                   None)
    if request is None:
        return None
    finals = [m for m in messages if m.call_id == call_id and m.status >= 200 and m.cseq_method == method
              and m.dst == request.src and m.time >= request.time]
    final = next((m for m in finals if m.status not in CHALLENGES), finals[-1] if finals else None)
    return (request, final) if final else None


def challenged(messages: list[Message], request: Message, final: Message) -> list[int]:
    """The digest challenges (401/407) the requester got between its first request and the final answer."""
    return [m.status for m in messages if m.call_id == request.call_id and m.dst == request.src
            and m.cseq_method == request.method and m.status in CHALLENGES and request.time <= m.time <= final.time]


def call_ids(messages: list[Message], src_ip: str, method: str) -> list[str]:
    seen: list[str] = []
    for m in messages:
        if m.method == method and m.src[0] == src_ip and m.call_id not in seen:
            seen.append(m.call_id)
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description="RFC 5626 outbound failover story with a SIP ladder diagram")
    parser.add_argument("--containers", action="store_true",
                        help="run the story on the container topology (docker/compose.yaml) instead of loopback")
    parser.add_argument("--websocket", action="store_true",
                        help="the device keeps its two flows over WebSocket (RFC 7118, the edges' ws :8080) "
                             "instead of TCP")
    args = parser.parse_args()
    out = ROOT / "out" / "demo" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    key = "hex:" + secrets.token_hex(32)  # a fresh flow-token key for this run
    codec = FlowTokenCodec([parse_key(key)])
    stage: LoopbackStage | ContainerStage = (ContainerStage if args.containers else LoopbackStage)(
        out, key, websocket=args.websocket)
    device_transport = "WebSocket" if args.websocket else "TCP"
    capture: Capture | None = None
    events: list[Event] = []
    answers: dict[str, SippResult] = {}
    replicated: dict[int, dict] = {}
    scrapes: dict[str, list[str]] = {}  # role -> [at the start, at its end]
    try:
        print(f"starting: registrar pair (home proxies, DMQ) reg1 {stage.registrar_addr(1)} and reg2 "
              f"{stage.registrar_addr(2)} (the edges find them as {stage.farm}: SRV reg1 first), "
              f"edge1 {stage.edge_addr(1)}, edge2 {stage.edge_addr(2)}, "
              f"device {stage.device_ip} over {device_transport}, caller {stage.caller_ip} ({stage.mode})", flush=True)
        stage.start()
        for role in ROLES:
            scrapes[role] = [stage.scrape(role)]
        capture = stage.capture(out / "sip.pcapng").start()
        # flow 2 first, then flow 1: the most recent flow is tried first (RFC 5626 §7 / §15)
        for regid, edge in ((2, 2), (1, 1)):
            stage.register_flow(regid, edge)

            def registered(regid: int = regid) -> list[dict]:
                if not stage.flow_alive(regid):
                    raise StoryError(f"device flow {regid} ended:\n{stage.flow_failure(regid)}")
                return [b for b in stage.bindings() if b.get("Reg-Id") == regid]

            wait_for(registered, f"the binding of flow {regid}")
        bindings = {b["Reg-Id"]: b for b in stage.bindings()}
        flows = {regid: codec.decode(parse_name_addr(b["Path"]).sip_uri.user or "").flow
                 for regid, b in bindings.items()}
        call_keys = {"callee": USER, "domain": DOMAIN, "user": CALLER}
        answers["call1"] = stage.caller("call1", "caller/uac_short.xml", 2, call_keys, stage.credentials(CALLER))
        scrapes["edge1"].append(stage.scrape("edge1"))
        events.append(Event(time.time(), stage.kill_edge(1)))
        answers["call2"] = stage.caller("call2", "caller/uac_short.xml", 2, call_keys, stage.credentials(CALLER))
        # reg2 got every change at reg1 over DMQ the moment it happened (dmq_usrloc): the
        # saves, and the removal of flow 1 when call 2 found it dead
        replicated = wait_for(lambda: replica(stage), "reg2 holding the bindings that reg1 holds")
        scrapes["reg1"].append(stage.scrape("reg1"))
        events.append(Event(time.time(), stage.kill_registrar(1)))
        answers["call3"] = stage.caller("call3", "caller/uac_short.xml", 2, call_keys, stage.credentials(CALLER))
        token = parse_name_addr(bindings[2]["Path"]).sip_uri.user or ""
        forged = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
        # mallory is no subscriber: the edge refuses the forged token before any registrar could challenge
        answers["forged"] = stage.caller("forged", "caller/uac_final.xml", 2, {
            **call_keys, "user": "mallory", "ruri": bindings[2]["Address"],
            "extra": f"Route: <sip:{forged}@{stage.edge_addr(2)};lr;ob>"}, None)
        for role in ("edge2", "reg2"):
            scrapes[role].append(stage.scrape(role))
    except Exception:
        print(stage.logs(), file=sys.stderr)
        raise
    finally:
        if capture is not None:
            capture.stop(marker_to=(stage.caller_ip, MARKER_PORT))
        stage.stop()

    messages = read_messages(out / "sip.pcapng", stage.sip_ports())
    lanes = Lanes([
        (f"device flow 1 (reg-id 1, {device_transport})",
         (stage.device_ip, flows[1].remote_port if flows.get(1) else 0)),
        ("edge1", stage.edge_addr(1)),
        ("reg1 (home proxy, registrar)", stage.registrar_addr(1)),
        ("reg2 (home proxy, registrar)", stage.registrar_addr(2)),
        ("edge2", stage.edge_addr(2)),
        (f"device flow 2 (reg-id 2, {device_transport})",
         (stage.device_ip, flows[2].remote_port if flows.get(2) else 0)),
        (f"caller ({CALLER})", stage.caller_ip),
    ])
    steps = summarise(stage, messages, answers, events)
    ladder_svg = draw(messages, lanes, events, out / "ladder.svg",
                      f"kemi-outbound: RFC 5626 outbound failover ({stage.mode}; device over {device_transport})")
    ladder_png = draw(messages, lanes, events, out / "ladder.png",
                      f"kemi-outbound: RFC 5626 outbound failover ({stage.mode}; device over {device_transport})")
    print()
    print(f"kemi-outbound demo ({stage.mode}): {USER}@{DOMAIN}, one device, two flows over {device_transport}, "
          "a registrar pair; digest authentication on")
    for number, step in enumerate(steps, start=1):
        took = f"{step.millis:8.1f} ms" if step.millis is not None else " " * 11
        mark = "ok " if step.ok else "FAIL"
        if step.answer:
            print(f" {mark} {number} {step.text:<44} {step.answer:<36} {took}  {step.note}".rstrip())
        else:
            print(f" ... {number} {step.text}")
    print(f"ladder diagram: {ladder_svg} (and {ladder_png.name})")
    print(f"SIP capture:    {out / 'sip.pcapng'}   logs and SIPp traces: {out}")
    print("authentication: the registrars challenge every REGISTER (401, realm = To domain) and every call "
          "(407, realm = From domain);\n  the UAs answer with their credentials (subscribers "
          f"{', '.join(f'{u}@{DOMAIN}' for u in SUBSCRIBERS)}), so the ladder shows a 401 or 407 and the request "
          "again\n  before each 200; timings include that round trip")
    print("bindings after registering, at reg1 (usrloc over RPC, keyed by AOR, +sip.instance, reg-id):")
    for regid in sorted(bindings):
        b = bindings[regid]
        print(f"  {b.get('AoR')}  {b.get('Instance')}  reg-id {regid}  Path {b.get('Path')}")
        print(f"      flow token -> {flows.get(regid)}")
    print("bindings at reg2 when reg1 was killed (replicated over DMQ, dmq_usrloc; flow 1's removal too, when "
          "call 2 found it dead):\n  "
          + ("\n  ".join(f"reg-id {regid}  Path {replicated[regid].get('Path')}" for regid in sorted(replicated))
             or "none"))
    changes = metric_changes(scrapes)
    (out / "metrics.md").write_text(f"# Metrics of the story ({stage.mode})\n\n" + metrics_table(changes))
    draw_metrics(changes, out / "metrics.png", f"kemi-outbound: what each role counted ({stage.mode})")
    print("metrics (each role's /metrics at the start and at its end: edge1 before it was killed, reg1 before "
          "it was killed, edge2 and reg2 at the end):")
    for change in changes:
        shown = f"{change.change:+g}" if not change.gauge or change.change else "="
        print(f"  {change.role:<6} {change.series:<76} {shown:>4}  (now {change.now:g})")
    print(f"  table: {out / 'metrics.md'}   picture: {out / 'metrics.png'}")
    failed = [s for s in steps if not s.ok]
    print("story: " + ("every step held" if not failed else f"{len(failed)} step(s) did not hold"))
    return 1 if failed else 0


ROLES = ("edge1", "edge2", "reg1", "reg2")


def metric_changes(scrapes: dict[str, list[str]]) -> list[Delta]:
    """Each role's changes between its first and last scrape."""
    return [d for role in ROLES if len(scrapes.get(role, [])) == 2 for d in deltas(role, *scrapes[role])]


def summarise(stage, messages: list[Message], answers: dict[str, SippResult], events: list[Event]) -> list[Step]:
    steps: list[Step] = []
    for regid, edge in ((2, 2), (1, 1)):
        found = None
        for cid in call_ids(messages, stage.device_ip, "REGISTER"):
            pair = exchange(messages, cid, stage.device_ip, "REGISTER")
            if pair and pair[0].dst[0] == stage.edge_addr(edge):
                found = pair
        if found:
            request, final = found
            steps.append(Step(f"device registers flow reg-id {regid} via edge{edge}",
                              f"{final.status} {final.reason}", (final.time - request.time) * 1000,
                              final.status == 200, auth_note(challenged(messages, request, final))))
        else:
            steps.append(Step(f"device registers flow reg-id {regid} via edge{edge}", "no answer seen", None, False))
    invites = call_ids(messages, stage.caller_ip, "INVITE")
    # call -> (the flow that answers, the registrar that is its home proxy)
    expected = {"call1": ("flow1", 1), "call2": ("flow2", 1), "call3": ("flow2", 2)}
    regs = {stage.registrar_addr(n) for n in (1, 2)}
    edges = {stage.edge_addr(n) for n in (1, 2)}
    edge2 = stage.edge_addr(2)
    for index, name in enumerate(expected):
        if index > 0:  # edge1 killed before call 2, reg1 before call 3
            steps.append(Step(events[index - 1].text, "", None, True))
        who = answers[name].value("who")
        flow, home = expected[name]
        pair = exchange(messages, invites[index], stage.caller_ip, "INVITE") if len(invites) > index else None
        note = ""
        if pair:
            request, final = pair
            seen = [str(m.status) for m in messages if m.call_id == request.call_id and m.dst == request.src
                    and m.cseq_method == "INVITE" and request.time <= m.time <= final.time]
            homes = [n for n in (1, 2) if forwarded(messages, request.call_id, stage.registrar_addr(n), final.time)]
            note = f"{auth_note(challenged(messages, request, final))}; " \
                   f"edge2 sent it to {hops(stage, messages, request.call_id, final.time, edge2, regs)}; " \
                   f"home proxy reg{homes[0] if homes else '?'} tried " \
                   f"{hops(stage, messages, request.call_id, final.time, stage.registrar_addr(home), edges)}; " \
                   f"caller saw {' '.join(seen)}"
            answer = f"{final.status} {final.reason}" + (f", answered by {who}" if who else "")
            ok = final.status == 200 and who == flow and "430" not in seen and homes == [home]
            steps.append(Step(f"call {index + 1}: carol -> {USER}@{DOMAIN} via edge2", answer,
                              (final.time - request.time) * 1000, ok, note))
        else:
            steps.append(Step(f"call {index + 1}: carol -> {USER}@{DOMAIN} via edge2", "no final answer seen", None,
                              False))
    forged_ids = call_ids(messages, stage.caller_ip, "INVITE")[3:4]
    pair = exchange(messages, forged_ids[0], stage.caller_ip, "INVITE") if forged_ids else None
    if pair:
        request, final = pair
        steps.append(Step("INVITE with a forged flow token via edge2", f"{final.status} {final.reason}",
                          (final.time - request.time) * 1000, final.status == 403))
    else:
        steps.append(Step("INVITE with a forged flow token via edge2", "no final answer seen", None, False))
    return steps


def auth_note(codes: list[int]) -> str:
    if not codes:
        return "no challenge"
    return " ".join(f"{c} {'challenge' if c == 401 else 'proxy challenge'}" for c in codes) + " answered"


def replica(stage) -> dict[int, dict] | None:
    """reg2's bindings of the device by reg-id once they are reg1's (reg-id, Contact,
    Path, +sip.instance alike), else None."""
    def key(bindings: list[dict]) -> dict:
        return {b.get("Reg-Id"): (b.get("Address"), b.get("Path"), b.get("Instance")) for b in bindings}

    held, copy = stage.bindings(1), stage.bindings(2)
    return {b["Reg-Id"]: b for b in copy} if held and key(held) == key(copy) else None


def forwarded(messages: list[Message], call_id: str, sender: str, until: float) -> bool:
    """``sender`` relayed an INVITE of ``call_id`` (it was the call's home proxy)."""
    return any(m.call_id == call_id and m.method == "INVITE" and m.src[0] == sender and m.time <= until
               for m in messages)


def hops(stage, messages: list[Message], call_id: str, until: float, sender: str, toward: set[str]) -> str:
    """Where ``sender`` (an edge or a home proxy) sent the INVITEs of a call among
    the addresses ``toward``, in order, each with the final answers it got back
    from there: e.g. "edge1 (no answer) -> edge2 (200)", "reg1 (no answer) -> reg2 (407 200)"."""
    sent: list[str] = []
    for m in messages:
        if (m.call_id == call_id and m.method == "INVITE" and m.src[0] == sender and m.dst[0] in toward
                and m.time <= until and (not sent or sent[-1] != m.dst[0])):
            sent.append(m.dst[0])
    parts = []
    for address in sent:
        codes = [str(m.status) for m in messages if m.call_id == call_id and m.src[0] == address
                 and m.dst[0] == sender and m.cseq_method == "INVITE" and m.status >= 200 and m.time <= until]
        parts.append(f"{lane_name(stage, address)} ({' '.join(dict.fromkeys(codes)) or 'no answer'})")
    return " -> ".join(parts) or "nothing"


def lane_name(stage, address: str) -> str:
    return {stage.edge_addr(1): "edge1", stage.edge_addr(2): "edge2", stage.registrar_addr(1): "reg1",
            stage.registrar_addr(2): "reg2"}.get(address, address)


if __name__ == "__main__":
    sys.exit(main())
