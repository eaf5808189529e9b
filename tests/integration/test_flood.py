"""Flood limit per source address (issue 10, "Edge hardening"), in every role.

One address floods a role with OPTIONS from a raw UDP socket (bounded: at most
FLOOD_MAX requests, paced, stopped as soon as the rest of the test is done).
Kamailio's pike module finds it too busy, the Python prologue bans it in the
``ipban`` htable and from then on drops its requests without an answer; the log
says so once. Meanwhile another address's REGISTER and a call (SIPp, as in
test_calls.py) go through. The role under test runs with a low limit
(KO_PIKE_REQS=50 per 2 s, a 60 s ban); the other Kamailio keeps the defaults.
"""

from __future__ import annotations

import re
import select
import socket
import threading

import pytest

from actors import call, start_callee, wait_bindings, wait_until
from harness import Kamailio, ProcessError, describe
from topology import edge, net, registrar, single, start

FLOODER = net(140)
UA = net(141)
CALLER = net(142)
REGISTRAR = net(143)
EDGE = net(144)
SINGLE = net(145)
PIKE_REQS = 50
BAN_SECONDS = 60
LIMITS = {"KO_PIKE_REQS": str(PIKE_REQS), "KO_PIKE_SAMPLING": "2", "KO_PIKE_BAN": str(BAN_SECONDS)}
# pike bans an IPv4 source after 1x to 3x KO_PIKE_REQS in a sampling window
# (its README); a window boundary in between can double it
MAX_ANSWERED = 6 * PIKE_REQS
FLOOD_MIN = 1000  # the flood goes on at least this long, so "most" means something
FLOOD_MAX = 3000
PACE_S = 0.001  # one request per millisecond at most: the kernel keeps every one
QUIET_S = 1.0  # after the flood: answers still arriving (never more than this apart)
CALL_ID = re.compile(rb"^(?:Call-ID|i)\s*:\s*(\S+)", re.M | re.I)


class Flood(threading.Thread):
    """OPTIONS from ``source`` to ``target`` until told to stop (at least
    FLOOD_MIN, at most FLOOD_MAX); collects the Call-IDs that got any answer."""

    def __init__(self, target: tuple[str, int], source: str = FLOODER) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.source = source
        self.sent = 0
        self.answered: set[bytes] = set()
        self.done = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))
        self.port = self.sock.getsockname()[1]

    def request(self, n: int) -> bytes:
        host, port = self.target
        return (f"OPTIONS sip:flood-{n}@example.com SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {self.source}:{self.port};branch=z9hG4bK-flood-{n};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:flood@{self.source}>;tag=flood{n}\r\nTo: <sip:flood-{n}@example.com>\r\n"
                f"Call-ID: flood-{n}@{self.source}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()

    def run(self) -> None:
        while self.sent < FLOOD_MAX and (self.sent < FLOOD_MIN or not self.done.is_set()):
            self.sock.sendto(self.request(self.sent), self.target)
            self.sent += 1
            self._read(PACE_S)
        while self._read(QUIET_S):
            pass

    def _read(self, wait: float) -> bool:
        """Take the answers waiting (up to ``wait`` for the first); False when none came."""
        got = False
        while select.select([self.sock], [], [], wait)[0]:
            data = self.sock.recv(65535)
            match = CALL_ID.search(data)
            if data.startswith(b"SIP/2.0 ") and match:
                self.answered.add(match.group(1))
            got, wait = True, 0
        return got

    def finish(self) -> None:
        self.done.set()
        self.join(timeout=FLOOD_MAX * PACE_S * 20 + 30)
        self.sock.close()
        assert not self.is_alive(), "the flood did not end"


def stat(kam: Kamailio, name: str) -> int:
    group = name.split(":", 1)[0] + ":"
    for line in kam.rpc("stats.get_statistics", group) or []:
        key, _, value = line.partition(" = ")
        if key == name:
            return int(value)
    raise KeyError(name)


def ban_value(kam: Kamailio, source: str) -> int:
    """The ipban entry of ``source`` (0: not banned), over RPC."""
    try:
        found = kam.rpc("htable.get", "ipban", source)
    except ProcessError:  # htable.get answers an error for a key that is not there
        return 0
    return int((found or {}).get("item", {}).get("value", 0)) if isinstance(found, dict) else 0


def ban_lines(kam: Kamailio, source: str) -> list[str]:
    return [line for line in kam.log().splitlines() if f"flood from {source}: banned for {BAN_SECONDS} s" in line]


def topology_for(role: str, workdir, started: list) -> tuple[Kamailio, Kamailio, Kamailio]:
    """(target of the flood, where UAs register and call, where bindings live)."""
    if role == "single":
        kam = start(single(workdir, "flood-single", addr=SINGLE, defines=dict(LIMITS)))
        started.append(kam)
        return kam, kam, kam
    reg = registrar(workdir, "flood-registrar", addr=REGISTRAR, defines=dict(LIMITS) if role == "registrar" else {})
    started.append(start(reg))
    kam = edge(workdir, "flood-edge", EDGE, reg.uri)
    if role == "edge":
        kam.defines.update(LIMITS)
    started.append(start(kam))
    return (kam if role == "edge" else reg), kam, reg


@pytest.mark.parametrize("role", ["edge", "registrar", "single"])
def test_flood_from_one_address_is_banned_while_others_register_and_call(workdir, local_port, started, role):
    target, front, bindings = topology_for(role, workdir, started)
    user = f"flood-{role}"
    options_before = stat(target, "core:rcv_requests_options")
    flood = Flood((target.addr, target.port))
    flood.start()
    try:
        wait_until(lambda: ban_value(target, FLOODER) > 0, f"{FLOODER} banned on {target.name}", timeout=30)
        # the flood goes on; another address registers and calls through the same server
        callee = start_callee(front, workdir, local_port, user, ua_ip=UA)
        started.append(callee)
        wait_bindings(bindings, user, [callee])
        result = call(front, workdir, local_port + 1, user, ua_ip=CALLER)
        assert result.value("who") == user, describe(result)
        callee_result = callee.wait(20)
        assert "call ended" in callee_result.log, describe(callee_result)
    finally:
        flood.finish()
    received = stat(target, "core:rcv_requests_options") - options_before
    answered = len(flood.answered)

    assert answered <= MAX_ANSWERED, f"{answered} of {flood.sent} flood requests answered"
    assert received >= 2 * MAX_ANSWERED, f"Kamailio received only {received} of {flood.sent}: flood too thin"
    assert received - answered > received // 2, f"most must get no answer: {answered} of {received} answered"
    assert len(ban_lines(target, FLOODER)) == 1, "one log line per ban"
    assert target.rpc("core.uptime")


def test_replies_from_a_banned_address_still_pass(workdir, local_port, started):
    """Only requests are limited: a device whose address is banned (a flood from
    another port of it) still answers a call over its flow, and the edge relays
    the answers; only its own requests are dropped."""
    target, front, bindings = topology_for("edge", workdir, started)
    user = "flood-banned-device"
    callee = start_callee(front, workdir, local_port, user, ua_ip=UA)
    started.append(callee)
    wait_bindings(bindings, user, [callee])
    flood = Flood((target.addr, target.port), source=UA)
    flood.start()
    try:
        wait_until(lambda: ban_value(target, UA) > 0, f"{UA} banned on the edge", timeout=30)
    finally:
        flood.finish()
    result = call(front, workdir, local_port + 1, user, ua_ip=CALLER)

    assert result.value("who") == user, describe(result)
    assert "call ended" in callee.wait(20).log
    assert ban_value(target, UA) > 0, "still banned: the answers passed anyway"
    assert len(ban_lines(target, UA)) == 1


@pytest.mark.parametrize("switch", ["", "WITH_NOPIKE"], ids=["default", "nopike"])
def test_start_log_says_whether_the_limit_is_on(workdir, started, switch):
    """The defaults reach the Python (a 300 s ban); -A WITH_NOPIKE loads neither
    pike nor the ban table, and the server still starts and answers."""
    kam = single(workdir, f"flood-start-{switch or 'default'}", addr=SINGLE, defines={switch: ""} if switch else {})
    started.append(kam)
    start(kam)

    if switch:
        assert "flood limit off (WITH_NOPIKE)" in kam.log()
        assert "pike_init" not in kam.log()
    else:
        assert "flood limit on: a source pike finds too busy is banned for 300 s" in kam.log()
    assert kam.rpc("core.uptime")
