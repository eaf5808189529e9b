"""RFC 4475 torture messages (tests/data/rfc4475/<name>.dat) and what RFC 4475
says of each: valid (process it) or invalid (refuse it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "rfc4475"


@dataclass(frozen=True)
class Torture:
    name: str  # RFC 4475's name, e.g. "wsinv"
    section: str  # e.g. "3.1.1.1"
    valid: bool
    # Kamailio 5.6 itself refuses this valid message (docs/parsing.md): its core
    # drops it before the script ...
    core_drops: str = ""
    # ... or its registrar module answers 400 (save() fails) on roles that save
    registrar_refuses: str = ""


# only the messages written so far (see docs/parsing.md, "RFC 4475")
TORTURE: tuple[Torture, ...] = (
    Torture("wsinv", "3.1.1.1", True,  # A Short Tortuous INVITE
            core_drops="parse_cseq: a folded CSeq ('0009' CRLF '  INVITE') has 'no method'"),
    Torture("escnull", "3.1.1.4", True,  # Escaped Nulls in URIs
            registrar_refuses="registrar save(): un_escape refuses %00 in the To user (no AOR)"),
    Torture("esc02", "3.1.1.5", True,  # Use of % When It Is Not an Escape
            core_drops="parse_hname2: '%' is not a header name character ('C%6Fntact')"),
    Torture("badaspec", "3.1.2", False),  # spaces within addr-spec (invalid messages)
    Torture("badbranch", "3.3", True),  # a branch that is only the magic cookie: still a valid message
)


def load(name: str) -> bytes:
    return (DATA / f"{name}.dat").read_bytes()
