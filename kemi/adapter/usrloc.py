"""Kamailio's usrloc, read and written in one place (registrar module: reg_fetch_contacts, $ulc, unregister_ruid).

Every binding the Python side looks at (the home proxy forking to an AOR, the
registrar checking a REGISTER against what is stored, the single server
dropping the bindings of a closed flow) is read here into one record,
``outbound.bindings.Binding``.

Beside it, what usrloc forgets when a binding goes: which public GRUUs this
registrar gave out (htable ``ko_gruu``, RFC 5627 §6.1: a request to one whose
instance is away is 480, to one never given out 404), for as long as the cfg's
htable keeps an item.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import KSR

from outbound.bindings import Binding, normalize_instance
from outbound.errors import ConfigError
from outbound.gruu import memory_key
from outbound.sipmsg import is_digits

from .names import FLB_OUTBOUND, GRUU_TABLE, LOAD_WINDOW_DEFINE, LOOKUP_HANDLE
from .runtime import define

MAX_LOAD_WINDOW = 3600


class LoadWindow:
    """The first KO_LOAD_WINDOW seconds after Kamailio's start, when usrloc may
    not hold every binding yet: the first SIP worker loads the table (preload)
    while the others already answer, and a registrar pair's sync arrives after
    that (adapter.replication); neither says when it is done. Meanwhile an AOR
    without bindings is 503 with Retry-After, not 404 (outbound.forking.Fork.lookup)."""

    def __init__(self, seconds: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        # made in mod_init, before the workers fork: every process counts from the start
        self.until = clock() + seconds

    @classmethod
    def for_kamailio(cls) -> LoadWindow:
        text = define(LOAD_WINDOW_DEFINE) or ""
        if not is_digits(text) or int(text) > MAX_LOAD_WINDOW:
            exc = ConfigError("(cfg define)", LOAD_WINDOW_DEFINE, f"must be 0..{MAX_LOAD_WINDOW} s, got {text!r}")
            KSR.err(f"kemi-outbound: configuration error: {exc}\n")
            raise exc
        return cls(int(text))

    def seconds_left(self) -> int:
        """Seconds of the window left (0 once it is over)."""
        return max(0, math.ceil(self.until - self.clock()))


def bindings(table: str, aor: str) -> list[Binding]:
    """The AOR's bindings as usrloc has them now; none when the AOR is unknown."""
    if KSR.registrar.reg_fetch_contacts(table, aor, LOOKUP_HANDLE) < 0:
        return []
    try:
        count = int(KSR.pv.get(f"$ulc({LOOKUP_HANDLE}=>count)") or 0)
        return [_binding(index) for index in range(count)]
    finally:
        KSR.registrar.reg_free_contacts(LOOKUP_HANDLE)


def unregister(table: str, aor: str, ruid: str) -> None:
    KSR.registrar.unregister_ruid(table, aor, ruid)


# usrloc's timer run, on demand (RPC ul.flush: synchronize_all_udomains)
_FLUSH = '{"jsonrpc": "2.0", "method": "ul.flush", "id": 1}'


def drop_lingering(table: str, aor: str, ruids: tuple[str, ...]) -> None:
    """Make sure the bindings just unregistered are gone from memory.

    In write-back mode (db_mode 2) Kamailio 5.6's usrloc only marks a binding
    that is already in the database as expired (st_delete_ucontact) and leaves
    it to its timer; until then registrar's save() still finds it by
    (instance, reg-id), sees a new Call-ID and deletes every other binding of
    the instance, the device's other flows. When one of ``ruids`` is still
    there, usrloc's timer runs now (ul.flush: it drops expired bindings and
    writes changed ones). Rare: a rebooted device with several flows."""
    if any(binding.ruid in ruids for binding in bindings(table, aor)):
        KSR.info(f"kemi-outbound: a replaced binding of {aor} lingers (usrloc write-back): running usrloc's timer\n")
        KSR.jsonrpcs.exec(_FLUSH)


def remember_gruu(aor: str, instance: str) -> None:
    """A public GRUU was given out (its expiry is the htable's, renewed each time)."""
    KSR.htable.sht_seti(GRUU_TABLE, memory_key(aor, instance), 1)


def gruu_remembered(aor: str, instance: str) -> bool:
    return (KSR.htable.sht_get(GRUU_TABLE, memory_key(aor, instance)) or 0) > 0


def _binding(index: int) -> Binding:
    def field(name: str) -> object:
        return KSR.pv.get(f"$(ulc({LOOKUP_HANDLE}=>{name})[{index}])")

    q = int(field("q") or -1)  # in thousandths
    return Binding(
        ruid=str(field("ruid") or ""),
        contact=str(field("addr") or ""),
        path=str(field("path") or ""),
        instance=normalize_instance(str(field("instance") or "")),
        reg_id=int(field("regid") or 0),
        q=1.0 if q < 0 else q / 1000.0,
        modified=int(field("modified") or 0),
        outbound=bool(int(field("cflags") or 0) & (1 << FLB_OUTBOUND)),
        received=str(field("received") or ""),
        callid=str(field("callid") or ""),
        cseq=int(field("cseq") or 0),
        expires=int(field("expires") or 0),
    )
