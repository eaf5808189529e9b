"""Test-only KEMI script (probe.cfg): one view of the message, checked in process.

For every request it reads the header fields we use three ways and sends the
result as one JSON datagram to the request's source address:

* ``kamailio``: what Kamailio's parser reports, by every spelling of the name
  (``$hdrc(Via)`` and ``$hdrc(v)``, ...), each body read as bytes
  (``{s.encode.hexa}``), so that nothing here shares code with the snapshot;
* ``snapshot``: ``adapter.runtime.snapshot().headers``, the real code;
* ``raw``: the pure splitter (``outbound.sipmsg.Headers(header_block(...))``)
  on the raw buffer, which follows Kamailio's rules for raw text.

Each view is either ``{name: [unfolded bodies]}`` or the error the message must
end in: ``"syntax"`` (400, SipSyntaxError) or ``"utf8"`` (400, a field we read
is not UTF-8). The test compares them (tests/integration/test_parser_view.py).
"""

from __future__ import annotations

import json
import re
import socket
import sys
from typing import Any

import KSR

sys.path.insert(0, str(KSR.kx.get_def("KO_KEMI_DIR")).strip('"'))

from adapter.runtime import WANTED_HEADERS, snapshot  # noqa: E402
from outbound.errors import SipSyntaxError
from outbound.sipmsg import Headers, header_block, unfold  # noqa: E402

# every spelling Kamailio knows for the names we read (parse_hname2.c)
SPELLINGS = {
    "via": ("Via", "v"),
    "contact": ("Contact", "m"),
    "supported": ("Supported", "k"),
    "path": ("Path",),
    "route": ("Route",),
    "require": ("Require",),
    "expires": ("Expires",),
}
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
SURROGATE = re.compile("[\udc80-\udcff]")

View = dict[str, list[str]] | str


def _hexa(spec: str) -> bytes | None:
    value = KSR.pv.get(f"$({spec}{{s.encode.hexa}})")
    return None if value is None else bytes.fromhex(str(value))


def kamailio_view() -> tuple[View, list[str]]:
    """Kamailio's fields, and any disagreement between two spellings of a name."""
    if KSR.pv.get("$msg(hdrc)") is None:
        return "syntax", []
    raw: dict[str, list[bytes]] = {}
    spelling_problems = []
    for name, spellings in SPELLINGS.items():
        seen = []
        for spelling in spellings:
            count = int(KSR.pv.get(f"$hdrc({spelling})") or 0)
            seen.append([_hexa(f"hdr({spelling})[{i}]") or b"" for i in range(count)])
        if any(other != seen[0] for other in seen[1:]):
            spelling_problems.append(f"{name}: {spellings} disagree")
        if seen[0]:
            raw[name] = seen[0]
    try:
        texts = {name: [body.decode("utf-8") for body in bodies] for name, bodies in raw.items()}
    except UnicodeDecodeError:
        return "utf8", spelling_problems
    view = {name: [unfold(body) if body else body for body in bodies] for name, bodies in texts.items()}
    if any(CONTROL.search(body) for bodies in view.values() for body in bodies):
        return "syntax", spelling_problems
    return view, spelling_problems


def snapshot_view() -> View:
    try:
        return snapshot().headers.as_dict()
    except SipSyntaxError:
        return "syntax"
    except UnicodeDecodeError:
        return "utf8"


def raw_view() -> View | None:
    buffer = _hexa("msg(buf)")
    if buffer is None:
        return None  # larger than Kamailio's transformation buffer
    text = buffer.decode("utf-8", "surrogateescape")
    try:
        view = Headers(header_block(text), WANTED_HEADERS).as_dict()
    except SipSyntaxError:
        return "syntax"
    if any(SURROGATE.search(body) for bodies in view.values() for body in bodies):
        return "utf8"
    return view


class Probe:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def child_init(self, rank: int) -> int:
        return 0

    def ksr_request_route(self, msg: Any) -> int:
        kamailio, spelling_problems = kamailio_view()
        result = {
            "call_id": (_hexa("ci") or b"").decode("utf-8", "replace"),
            "kamailio": kamailio,
            "spelling_problems": spelling_problems,
            "snapshot": snapshot_view(),
            "raw": raw_view(),
        }
        data = json.dumps(result).encode()
        self.sock.sendto(data, (KSR.kx.get_srcip(), int(KSR.kx.get_srcport())))
        return 1

    def ksr_onsend_route(self, msg: Any) -> int:
        return 1  # a stray reply forwarded by the core looks this up (bcast)

    def ksr_reply_route(self, msg: Any) -> int:
        return 1


def mod_init() -> Probe:
    return Probe()
