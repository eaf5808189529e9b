"""One view of the message: the header fields our snapshot reads are the ones
Kamailio's parser delimited (docs/parsing.md).

A test-only probe (tests/integration/probe/: probe.cfg + probe.py) runs in a
real Kamailio and, for every request, compares in process what
``adapter.runtime.snapshot()`` sees with what Kamailio reports (``$hdrc`` /
``$hdr(name)[i]`` by every spelling of the name, bodies read as bytes), and
what the pure splitter (``outbound.sipmsg.Headers``) makes of the raw buffer.
Corpus: the fuzz cases of every role (tests/fuzzgen.py), the RFC 4475 torture
messages (tests/data/rfc4475/) and a few written here (bare LF, mixed line
ends, folding, compact forms, a header Kamailio cannot parse).

A case Kamailio's core drops never reaches the script and is only counted. The
probe has one UDP worker, so a clean request sent after each case tells when
the case is done: no sleeping, no timeout decides a result.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from fuzzgen import Context, cases
from harness import Kamailio
from rfc4475 import TORTURE, load
from topology import net, start, stop

PROBE_DIR = Path(__file__).resolve().parent / "probe"
PROBE = net(130)
CLIENT = net(131)
PORT = 5060
FUZZ_SEED = 4475
FUZZ_COUNT = 150
SENTINEL_ID = "probe-sentinel"
RESULT_WITHIN = 10.0  # seconds; only a dead probe takes this long


def sentinel(n: int) -> bytes:
    return (f"OPTIONS sip:probe@{PROBE}:{PORT} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {CLIENT};branch=z9hG4bK-sentinel{n}\r\n"
            f"From: <sip:probe@{CLIENT}>;tag=s{n}\r\nTo: <sip:probe@{PROBE}>\r\n"
            f"Call-ID: {SENTINEL_ID}-{n}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def lines(*text: str, end: str = "\r\n") -> bytes:
    return (end.join(text) + end + end).encode()


BASE = ("Via: SIP/2.0/UDP {c};branch=z9hG4bK-{n}", "From: <sip:a@example.com>;tag=1",
        "To: <sip:b@example.com>", "Call-ID: own-{n}@probe", "Max-Forwards: 70")


def own(n: int, start_line: str, *headers: str, end: str = "\r\n") -> bytes:
    base = [h.format(c=CLIENT, n=n) for h in BASE]
    return lines(start_line, *base, *headers, "Content-Length: 0", end=end)


# (name, message): what the unit tests show on text, here against Kamailio itself
OWN_CASES = [
    ("lf-invite-forged-route", own(1, f"INVITE sip:x@{PROBE} SIP/2.0", "CSeq: 1 INVITE",
                                   f"Route: <sip:AAAAforgedAAAA@{PROBE};lr;ob>", "Contact: <sip:a@h;ob>", end="\n")),
    ("lf-register-require", own(2, "REGISTER sip:example.com SIP/2.0", "CSeq: 1 REGISTER", "Require: foo",
                                '''Contact: <sip:a@h>;+sip.instance="<urn:uuid:1>";reg-id=0''', end="\n")),
    ("mixed-line-ends", lines(f"OPTIONS sip:x@{PROBE} SIP/2.0\nVia: SIP/2.0/UDP {CLIENT};branch=z9hG4bK-m3\r\n"
                              "From: <sip:a@example.com>;tag=1\nTo: <sip:b@example.com>\r\nCall-ID: own-3\n"
                              "CSeq: 1 OPTIONS\r\nRoute: <sip:r1;lr>\nRoute: <sip:r2;lr>\r\nSupported: path\n"
                              "Content-Length: 0")),
    ("folded", own(4, f"OPTIONS sip:x@{PROBE} SIP/2.0", "CSeq: 1 OPTIONS", "Route: <sip:r1;lr>,\r\n <sip:r2;lr>",
                   "Supported:\r\n\tpath,\r\n  outbound", "Contact:\r\n <sip:a@h>;expires=60")),
    ("folded-lf", own(5, f"OPTIONS sip:x@{PROBE} SIP/2.0", "CSeq: 1 OPTIONS", "Route: <sip:r1;lr>,\n <sip:r2;lr>",
                      "Supported: path,\n\toutbound", end="\n")),
    ("compact", own(6, f"OPTIONS sip:x@{PROBE} SIP/2.0", "CSeq: 1 OPTIONS", "m: <sip:a@h>", "k: outbound",
                    f"v: SIP/2.0/UDP {CLIENT}:5999;branch=z9hG4bK-c6b", "Supported: path")),
    ("space-before-colon", own(7, f"OPTIONS sip:x@{PROBE} SIP/2.0", "CSeq: 1 OPTIONS", "Route  \t: <sip:r1;lr>")),
    ("lf-eoh-then-headers-in-body",
     lines(f"OPTIONS sip:x@{PROBE} SIP/2.0", f"Via: SIP/2.0/UDP {CLIENT};branch=z9hG4bK-8",
           "From: <sip:a@example.com>;tag=1", "To: <sip:b@example.com>", "Call-ID: own-8", "CSeq: 1 OPTIONS",
           "Content-Length: 28", "", "Route: <sip:not-a-header;lr>", end="\n")[:-1]),
    ("long-integers", own(9, "REGISTER sip:example.com SIP/2.0", "CSeq: 1 REGISTER", "Expires: " + "9" * 5000,
                          "Contact: <sip:a@h:" + "5" * 5000 + ">;expires=" + "1" * 5000 + ";reg-id=" + "7" * 5000)),
    ("header-kamailio-cannot-parse", own(10, f"OPTIONS sip:x@{PROBE} SIP/2.0", "CSeq: 1 OPTIONS",
                                         "Route: <sip:r1;lr>", "this line has no colon")),
    ("binary-body", lines(f"MESSAGE sip:x@{PROBE} SIP/2.0", f"Via: SIP/2.0/UDP {CLIENT};branch=z9hG4bK-11",
                          "From: <sip:a@example.com>;tag=1", "To: <sip:b@example.com>", "Call-ID: own-11",
                          "CSeq: 1 MESSAGE", "Max-Forwards: 70", "Content-Type: application/octet-stream",
                          "Content-Length: 8")[:-2] + b"\r\n\r\n\xff\xfe\x00\x80\r\n\xc3(",),
    ("latin1-subject", own(12, f"OPTIONS sip:x@{PROBE} SIP/2.0", "CSeq: 1 OPTIONS", "Supported: path")
     .replace(b"Max-Forwards", b"Subject: caf\xe9\r\nMax-Forwards")),
    ("latin1-contact", own(13, f"OPTIONS sip:x@{PROBE} SIP/2.0", "CSeq: 1 OPTIONS")
     .replace(b"Max-Forwards", b"Contact: \"caf\xe9\" <sip:a@h>\r\nMax-Forwards")),
]


def corpus() -> list[tuple[str, bytes]]:
    out = list(OWN_CASES)
    tokens = {"gone": "GONE", "sink": "SINK", "forged": "FORGED", "peer": "PEER"}
    for role in ("edge", "registrar", "single"):
        ctx = Context(role, PROBE, PORT, f"sip:sink@{net(132)}:5099", tokens=tokens)
        out += [(f"fuzz-{role}-{c.name}", c.msg.render(CLIENT, 40000, "udp", "OWNTOKEN"))
                for c in cases(FUZZ_SEED, ctx, FUZZ_COUNT, transports=("udp",))]
    out += [(f"rfc4475-{t.name}", load(t.name)) for t in TORTURE]
    return out


@pytest.fixture(scope="module")
def probe(workdir) -> Iterator[Kamailio]:
    kam = start(Kamailio("probe", str(PROBE_DIR / "probe.cfg"), workdir, PROBE, PORT,
                         defines={"KO_PROBE_DIR": f'"{PROBE_DIR}"'}))
    yield kam
    stop(kam)


def run_case(sock: socket.socket, n: int, data: bytes) -> list[dict]:
    """Results the probe sent for the case (none: the core dropped it), read up
    to the sentinel's own result."""
    sock.sendto(data, (PROBE, PORT))
    sock.sendto(sentinel(n), (PROBE, PORT))
    results = []
    while True:
        result = json.loads(sock.recv(1 << 20))
        if result["call_id"] == f"{SENTINEL_ID}-{n}":
            return results
        results.append(result)


def test_snapshot_sees_what_kamailio_parsed(probe):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    sock.bind((CLIENT, 0))
    sock.settimeout(RESULT_WITHIN)
    seen: dict[str, dict] = {}
    dropped = []
    problems = []
    try:
        for n, (name, data) in enumerate(corpus()):
            results = run_case(sock, n, data)
            assert len(results) <= 1, f"{name}: {len(results)} results for one request"
            if not results:
                dropped.append(name)
                continue
            result = seen[name] = results[0]
            kamailio = result["kamailio"]
            if result["spelling_problems"]:
                problems.append(f"{name}: {result['spelling_problems']}")
            if result["snapshot"] != kamailio:
                problems.append(f"{name}: snapshot {result['snapshot']!r}\n    kamailio {kamailio!r}")
            if result["raw"] is not None and result["raw"] != kamailio:
                problems.append(f"{name}: raw splitter {result['raw']!r}\n    kamailio {kamailio!r}")
    finally:
        sock.close()
    assert not problems, f"{len(problems)} of {len(seen)} messages seen differently:\n" + "\n".join(problems[:20])
    print(f"{len(seen)} messages compared, {len(dropped)} dropped by Kamailio's core: {', '.join(dropped)}")
    # the attack of issue 10: bare LF line ends hide nothing from us any more
    forged = seen["lf-invite-forged-route"]["snapshot"]
    assert forged["route"] == [f"<sip:AAAAforgedAAAA@{PROBE};lr;ob>"] and len(forged["via"]) == 1
    assert seen["lf-register-require"]["snapshot"]["require"] == ["foo"]
    assert seen["mixed-line-ends"]["snapshot"]["route"] == ["<sip:r1;lr>", "<sip:r2;lr>"]
    assert seen["folded"]["snapshot"]["supported"] == ["path, outbound"]
    assert seen["compact"]["snapshot"]["via"][1].endswith("z9hG4bK-c6b")
    assert "route" not in seen["lf-eoh-then-headers-in-body"]["snapshot"]
    assert seen["header-kamailio-cannot-parse"]["snapshot"] == "syntax"
    assert seen["binary-body"]["snapshot"]["via"], "a binary body hides the headers"
    assert "subject" not in seen["latin1-subject"]["snapshot"] and seen["latin1-subject"]["snapshot"]["supported"]
    assert seen["latin1-contact"]["snapshot"] == "utf8"
