"""A real WebRTC SIP client: SIP.js in headless Chromium, registered over WebSocket.

The edges run with ``-A WITH_WEBSOCKET`` (cfg/edge.cfg); the page
(tests/browser/index.html, device.mjs) is served on loopback by the test and
driven by playwright-core with Debian's Chromium (tests/browser.py). One device
(one +sip.instance) registers two flows with Supported: outbound: reg-id 1 over
a WebSocket to edge1, reg-id 2 over a WebSocket to edge2 (RFC 5626 §4.2,
RFC 7118 §5). SIPp calls its AOR over UDP; the page answers (X-Who names the
flow that answered, no media: a fixed SDP answer).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from browser import BROWSER_DIR, Browser, PageServer, missing
from harness import TEST_KEY, Kamailio, describe, start_sipp
from outbound.sipmsg import parse_name_addr
from outbound.tokens import FlowTokenCodec, parse_key
from topology import edge, farm_with_two_edges, ko_yaml, net, registrar, subscriber


@pytest.fixture(autouse=True)
def browser_installed() -> None:
    """Chromium, node and the npm packages are installed by tools/install-deps
    (./run test): a machine without them fails here, never skips."""
    why = missing()
    assert why is None, why

REGISTRAR = net(220)
EDGE1 = net(221)
EDGE2 = net(222)
CALLER = net(223)
PAGE = net(224)
KILL_REGISTRAR = net(225)
KILL_EDGE1 = net(226)
KILL_EDGE2 = net(227)
PAGE_PORT = 8000
WS = 8080
ORIGIN = f"http://{PAGE}:{PAGE_PORT}"
USER = "b-carol"
INSTANCE = "00000000-0000-4000-8000-000000009201"
CODEC = FlowTokenCodec([parse_key(TEST_KEY)])


def ws_yaml() -> str:
    data = yaml.safe_load(ko_yaml())
    data["websocket"] = {"allowed_origins": [ORIGIN]}
    return yaml.safe_dump(data)


def ws_farm(workdir: Path, tag: str, reg_addr: str, edge_addrs: tuple[str, str]) -> Iterator[dict[str, Kamailio]]:
    """A registrar and two edges with WebSocket listeners on :8080, the page's
    Origin allowed; started, yielded by name, stopped (a fixture's body)."""
    reg = registrar(workdir, name=f"registrar-{tag}", addr=reg_addr)
    edges = {n: edge(workdir, f"edge{n}-{tag}", addr, reg.uri, ws_port=WS, yaml_text=ws_yaml())
             for n, addr in zip((1, 2), edge_addrs, strict=True)}
    yield from farm_with_two_edges(workdir, reg, edges)


@pytest.fixture(scope="module")
def farm(workdir: Path) -> Iterator[dict[str, Kamailio]]:
    yield from ws_farm(workdir, "browser", REGISTRAR, (EDGE1, EDGE2))


@pytest.fixture
def doomed_farm(workdir: Path) -> Iterator[dict[str, Kamailio]]:
    """A farm of its own for the test that kills edge1."""
    yield from ws_farm(workdir, "browser-kill", KILL_REGISTRAR, (KILL_EDGE1, KILL_EDGE2))


def open_page(farm: dict[str, Kamailio], workdir: Path) -> Iterator[Browser]:
    """Chromium on the device page. The browser console and the Kamailio logs are
    printed at teardown: pytest shows them for a failed test only."""
    with PageServer(PAGE, PAGE_PORT) as server:
        browser = Browser(f"{server.origin}/index.html", workdir, name=f"browser-{time.monotonic_ns()}")
        try:
            browser.start()
            yield browser
        finally:
            browser.stop()
            print(browser.report())
            for name, kam in farm.items():
                print(f"--- {name} log (tail) ---\n{kam.log()[-6000:]}")


@pytest.fixture
def page(farm, workdir: Path) -> Iterator[Browser]:
    yield from open_page(farm, workdir)


@pytest.fixture
def doomed_page(doomed_farm, workdir: Path) -> Iterator[Browser]:
    yield from open_page(doomed_farm, workdir)


def test_rfc6455_10_2_the_browser_origin_decides_the_handshake(farm, page, workdir):
    """Chromium sets Origin itself: the page's origin (in websocket.allowed_origins)
    opens a WebSocket to the edge; the same page from another origin (another
    port) is refused (HTTP 403, the browser reports an error), no traceback."""
    assert page.eval(f"window.ko.probe('ws://{EDGE1}:{WS}')") == "open"
    with PageServer(PAGE, PAGE_PORT + 1) as other:
        foreign = Browser(f"{other.origin}/index.html", workdir, name=f"browser-foreign-{time.monotonic_ns()}")
        try:
            foreign.start()
            assert foreign.eval(f"window.ko.probe('ws://{EDGE1}:{WS}')") == "refused"
        finally:
            foreign.stop()
            print(foreign.report())
    log = farm["edge1"].log()
    assert "Traceback" not in log and "exception in route" not in log, log[-4000:]


def register(page: Browser, reg_id: int, kam: Kamailio) -> None:
    user, password = subscriber(USER)
    args = {"regId": reg_id, "server": f"ws://{kam.addr}:{WS}", "aor": f"sip:{user}@example.com",
            "user": user, "password": password, "instanceId": INSTANCE}
    assert page.eval(f"window.ko.register({json.dumps(args)})", timeout=15) == "registered"


def call(farm, workdir: Path, port: int) -> str:
    """A UDP call from SIPp (through edge2) to the device's AOR; the flow that answered (X-Who)."""
    run = start_sipp("sipp/uac_sdp.xml", f"{farm['edge2'].addr}:5060", workdir=workdir, scenarios=BROWSER_DIR,
                     local_ip=CALLER, local_port=port, transport="udp", timeout=15, auth=subscriber("alice"),
                     keys={"callee": USER, "domain": "example.com", "user": "alice"})
    result = run.wait()
    assert result.returncode == 0, describe(result)
    assert result.value("bye") == "200", describe(result)
    return result.value("who")


def wait_flows(farm, count: int, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = farm["registrar"].bindings(USER)
        if len(found) == count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_rfc7118_browser_device_two_flows_a_call_then_failover_after_its_websocket_closes(farm, page, workdir,
                                                                                          local_port):
    """SIP.js in Chromium registers one instance over two WebSockets (reg-id 2 via
    edge2 first, then reg-id 1 via edge1: the most recent flow is tried first,
    RFC 5626 §15). A call is answered over flow 1; the page closes flow 1's
    WebSocket (no un-REGISTER); the next call is answered over flow 2 (edge1
    answers 430 for the gone connection, the home proxy fails over, §5.3)."""
    register(page, 2, farm["edge2"])
    register(page, 1, farm["edge1"])
    bindings = wait_flows(farm, 2)
    assert sorted(b["Reg-Id"] for b in bindings) == [1, 2], bindings
    for binding in bindings:  # RFC 5626 §5.2: each edge's Path token names its ws flow
        flow = CODEC.flow_of(parse_name_addr(binding["Path"]).sip_uri.user)
        assert flow is not None and flow.transport == "ws", binding
        assert (flow.local_ip, flow.local_port) == (farm[f"edge{binding['Reg-Id']}"].addr, WS), binding
    assert page.eval("window.ko.state().flows") == {"1": "registered", "2": "registered"}

    assert call(farm, workdir, local_port) == "flow1"
    page.wait_for("window.ko.state().terminated >= 1")

    page.eval("window.ko.cut(1)")
    assert call(farm, workdir, local_port + 1) == "flow2"
    state = page.wait_for("window.ko.state().terminated >= 2 && window.ko.state()")
    assert [c["flow"] for c in state["calls"]] == [1, 2], state
    assert "430 Flow Failed to INVITE" in farm["edge1"].log(), "edge1 refused the gone WebSocket flow"
    assert [b["Reg-Id"] for b in wait_flows(farm, 1)] == [2], "the home proxy dropped the failed flow (430)"
    for kam in farm.values():
        log = kam.log()
        assert "Traceback" not in log and "exception in route" not in log, log[-4000:]


def test_rfc5626_browser_device_edge1_killed_the_next_call_is_answered_over_flow_2(doomed_farm, doomed_page,
                                                                                   workdir, local_port):
    """The same device; edge1 dies outright (SIGKILL: the kernel closes the page's
    WebSocket, SIP.js reports the disconnect). The next call is answered over
    flow 2 via edge2 within the home proxy's failover time (its short first-reply
    timer gives up on edge1: 408 local), well within the caller's timeout."""
    farm, page = doomed_farm, doomed_page
    register(page, 2, farm["edge2"])
    register(page, 1, farm["edge1"])
    assert sorted(b["Reg-Id"] for b in wait_flows(farm, 2)) == [1, 2]
    assert call(farm, workdir, local_port) == "flow1"

    farm["edge1"].kill()
    page.wait_for("window.ko.state().flows['1'] === 'disconnected'")
    started = time.monotonic()
    assert call(farm, workdir, local_port + 1) == "flow2"
    elapsed = time.monotonic() - started
    print(f"call answered over flow 2 {elapsed:.2f} s after edge1 died")
    assert elapsed < 10, elapsed
    assert [b["Reg-Id"] for b in farm["registrar"].bindings(USER)] == [2]
    assert "failed with 408 (local)" in farm["registrar"].log()
    state = page.wait_for("window.ko.state().terminated >= 2 && window.ko.state()")
    assert [c["flow"] for c in state["calls"]] == [1, 2], state
