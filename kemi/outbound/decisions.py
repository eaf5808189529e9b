"""What the pure core asks the KEMI adapter to do (sans-I/O decisions)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer the request statelessly-or-not with ``code``; ``log`` says why;
    ``cause`` is the decision's stable reason code (outbound.metrics: the
    decision log line and the refusal counters carry it)."""

    code: int
    reason: str
    log: str
    headers: tuple[str, ...] = ()
    cause: str = ""


@dataclass(frozen=True, slots=True)
class SaveBinding:
    """Hand the REGISTER to Kamailio's registrar.

    ``outbound`` marks the bindings as outbound flows (RFC 5626 §6 applied);
    ``reply_headers`` go into the 2xx (``Require: outbound``, ``Flow-Timer``);
    ``ignore_reg_id``: outbound does not apply and the registrar "MUST ignore
    the reg-id" (§6), so it is taken off the Contact before the save (Kamailio's
    usrloc would otherwise still key the binding by it).
    """

    outbound: bool
    reply_headers: tuple[str, ...] = ()
    ignore_reg_id: bool = False


class PathKind(Enum):
    """Which Path the edge adds to a REGISTER (RFC 5626 §5.1, RFC 3327 §4)."""

    PLAIN = "plain"  # <sip:edge;lr>
    FLOW = "flow"  # <sip:TOKEN@edge;lr;ob>
