"""Security run (issue 10): 10,000 forged or garbled flow tokens against a real edge.

Bounded and loopback only: one attacker address, a window of requests in flight,
10,000 requests in all (KO_SECURITY_COUNT for another size). Every one must get a
defined answer (403, or 430 for a flow that is gone), none may be relayed (a sink
on another address and the victim's own UA would see it), no Python traceback in
the log, and the edge's memory (every process's RSS, Kamailio's shared memory)
must come back to its level before the run within 10 %. The figures go to the
test's output (-s) and docs/security.md.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import start_callee, wait_bindings
from harness import OTHER_KEY, TEST_KEY, Kamailio
from outbound.sipmsg import parse_name_addr
from outbound.tokens import Flow, FlowTokenCodec, parse_key
from topology import edge, net, registrar, start, stop

COUNT = int(os.environ.get("KO_SECURITY_COUNT", "10000"))
WINDOW = 64  # requests in flight at once
ATTACKER = net(76)
VICTIM = net(77)
SINK = net(78)
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@pytest.fixture(scope="module")
def farm(workdir: Path) -> Iterator[dict[str, Kamailio]]:
    """A registrar and one edge; the flood limit raised far above this run (the
    run is about tokens; test_flood.py is about floods)."""
    reg = start(registrar(workdir, name="sec-registrar", addr=net(74), port=5070))
    kam = edge(workdir, "sec-edge", net(75), reg.uri)
    kam.defines["KO_PIKE_REQS"] = "1000000"
    try:
        yield {"registrar": reg, "edge": start(kam)}
    finally:
        stop(kam)
        stop(reg)


def memory(kam: Kamailio) -> tuple[int, int]:
    """(the private memory of every process of the group in kB, shared memory used in
    bytes). RssAnon, not VmRSS: VmRSS also counts each shared-memory page a process
    touched, which grows as the pool is used and is no leak."""
    pgid = int((kam.workdir / f"{kam.name}.pid").read_text())
    rss = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:  # field 5: process group
                continue
            status = (entry / "status").read_text()
        except (OSError, IndexError, ValueError):
            continue
        rss += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("RssAnon:")), 0)
    shm = kam.rpc("core.shmmem")
    return rss, int(shm["used"])


def tokens(kam: Kamailio, victim_token: str) -> dict[str, list[str]]:
    """Token families; each a list the run draws from."""
    codec = FlowTokenCodec([parse_key(TEST_KEY)])
    other = FlowTokenCodec([parse_key(OTHER_KEY)])
    rng = random.Random(10)
    peer_edge = Flow("tcp", net(79), 5060, VICTIM, 40000, 7)  # a valid token of another edge's socket
    caller_rr = Flow("udp", kam.addr, kam.port, net(80), 5062)  # as a callee sees it in Record-Route

    def changed(token: str) -> str:
        i = rng.randrange(len(token))
        return token[:i] + rng.choice([c for c in ALPHABET if c != token[i]]) + token[i + 1:]

    return {
        "random": ["".join(rng.choice(ALPHABET) for _ in range(36)) for _ in range(64)],
        "one-char-changed": [changed(victim_token) for _ in range(64)],
        "truncated": [victim_token[: rng.randrange(1, 36)] for _ in range(64)],
        "extended": [victim_token + "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(1, 40)))
                     for _ in range(64)],
        "wrong-key": [other.encode(Flow("tcp", kam.addr, kam.port, VICTIM, 40000 + n, n)) for n in range(1, 65)],
        "another-edge": [codec.encode(peer_edge)],
        "lf-ended": [changed(victim_token) for _ in range(64)],
        "replayed-path": [victim_token],
        "replayed-record-route": [codec.encode(caller_rr)],
    }


def request(kind: str, token: str, n: int, ip: str, port: int, kam: Kamailio, dialog: bool) -> bytes:
    eol = "\n" if kind == "lf-ended" else "\r\n"
    ob = ";ob" if n % 3 else ""
    lines = [
        f"{'BYE' if dialog else 'INVITE'} sip:victim@{SINK}:5099 SIP/2.0",
        f"Via: SIP/2.0/UDP {ip}:{port};rport;branch=z9hG4bK-sec-{n}",
        f"Route: <sip:{token}@{kam.addr}:{kam.port};lr{ob}>",
        "Max-Forwards: 70",
        f"From: <sip:mallory@example.com>;tag=sec{n}",
        f"To: <sip:victim@example.com>{';tag=v1' if dialog else ''}",
        f"Call-ID: sec-{n}@{ip}",
        f"CSeq: 1 {'BYE' if dialog else 'INVITE'}",
        "Content-Length: 0",
    ]
    return (eol.join(lines) + eol + eol).encode()


def run(kam: Kamailio, families: dict[str, list[str]], count: int) -> tuple[Counter, list[str], float]:
    """Send ``count`` requests with a window in flight; (answers by kind and code, problems, seconds)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ATTACKER, 0))
    ip, port = sock.getsockname()
    kinds = sorted(families)
    pending: dict[str, tuple[str, float]] = {}
    answers: Counter = Counter()
    problems: list[str] = []
    started = time.monotonic()
    sent = 0
    try:
        while sent < count or pending:
            while sent < count and len(pending) < WINDOW:
                kind = kinds[sent % len(kinds)]
                token = families[kind][sent % len(families[kind])]
                sock.sendto(request(kind, token, sent, ip, port, kam, dialog=sent % 2 == 1), (kam.addr, kam.port))
                pending[f"sec-{sent}@{ip}"] = (kind, time.monotonic())
                sent += 1
            sock.settimeout(5.0)
            try:
                data, _ = sock.recvfrom(65536)
            except TimeoutError:
                problems += [f"{cid} ({kind}): no answer" for cid, (kind, _) in pending.items()]
                break
            text = data.decode(errors="replace")
            callid = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                           if line.lower().startswith("call-id:")), "")
            if not text.startswith("SIP/2.0 ") or text[8] == "1" or callid not in pending:
                continue
            kind, _ = pending.pop(callid)
            code = int(text[8:11])
            answers[(kind, code)] += 1
            if code not in (403, 430):
                problems.append(f"{callid} ({kind}): {text.splitlines()[0]}")
    finally:
        sock.close()
    return answers, problems, time.monotonic() - started


def test_ten_thousand_forged_tokens_get_defined_answers_and_leave_no_trace(farm, workdir, sink_socket):
    """RFC 5626 §5.3.1: every forged, garbled or replayed token is refused
    (403); nothing is relayed, nothing raises, no memory is kept."""
    kam, reg = farm["edge"], farm["registrar"]
    victim = start_callee(kam, workdir, 40000, "sec-victim", ua_ip=VICTIM, timeout=600)
    try:
        [binding] = wait_bindings(reg, "sec-victim", [victim])
        victim_token = parse_name_addr(binding["Path"]).sip_uri.user or ""
        families = tokens(kam, victim_token)
        run(kam, families, 500)  # warm up: every worker's Python, caches and pools in use
        before = memory(kam)
        answers, problems, seconds = run(kam, families, COUNT)
        after = memory(kam)
        assert victim.alive, "the victim's UA ended: something reached it"
    finally:
        victim.kill()
    total = sum(answers.values())
    by_kind = {kind: dict(sorted((c, n) for (k, c), n in answers.items() if k == kind)) for kind in sorted(families)}
    print(f"\nsecurity run: {total} answers in {seconds:.1f}s; by kind: {by_kind}; "
          f"RSS {before[0]} -> {after[0]} kB, shm used {before[1]} -> {after[1]} bytes")
    assert not problems, f"{len(problems)} undefined answers, e.g. {problems[:5]}"
    assert total == COUNT
    sink_socket.settimeout(0.5)
    with pytest.raises(TimeoutError):
        data = sink_socket.recvfrom(65536)
        pytest.fail(f"relayed to the sink: {data!r}")
    assert "Traceback" not in kam.log()
    assert after[0] <= before[0] * 1.10, f"private memory grew from {before[0]} to {after[0]} kB"
    assert after[1] <= before[1] * 1.10, f"shared memory grew from {before[1]} to {after[1]} bytes"


@pytest.fixture(scope="module")
def sink_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((SINK, 5099))
    yield sock
    sock.close()
