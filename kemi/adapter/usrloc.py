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

import functools
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


# the fields of a binding, in the order Binding needs them
_BINDING_FIELDS = ("ruid", "addr", "path", "instance", "regid", "q", "modified", "cflags", "received", "callid",
                   "cseq", "expires")
# the strings a stored value may spell any way (a device wrote them); the other
# fields are numbers
_TEXT_FIELDS = frozenset({"ruid", "addr", "path", "instance", "received", "callid"})
# all fields of one binding in one $_s, joined by a control byte: a value that
# holds one (a quoted-pair may) makes too many parts, and the binding is read
# field by field instead. $_s writes a null value as "<null>"
_JOIN = "\x1f"
_NULL = "<null>"


def _field_spec(name: str, index: int) -> str:
    return f"$(ulc({LOOKUP_HANDLE}=>{name})[{index}])"


@functools.lru_cache(maxsize=64)
def _binding_spec(index: int) -> str:
    return "$_s(" + _JOIN.join(_field_spec(name, index) for name in _BINDING_FIELDS) + ")"


def _field(name: str, index: int) -> str:
    value = KSR.pv.get(_field_spec(name, index))
    return "" if value is None else str(value)


def _binding_values(index: int) -> list[str]:
    """The binding's fields as text, "" for a null one: one pv call for all,
    then one more for each text field that reads "<null>" (null, or a device's
    literal "<null>": only its own read says which)."""
    values = str(KSR.pv.get(_binding_spec(index))).split(_JOIN)
    if len(values) != len(_BINDING_FIELDS):
        return [_field(name, index) for name in _BINDING_FIELDS]
    for position, (name, value) in enumerate(zip(_BINDING_FIELDS, values, strict=True)):
        if value == _NULL:
            values[position] = _field(name, index) if name in _TEXT_FIELDS else ""
    return values


def _binding(index: int) -> Binding:
    ruid, addr, path, instance, regid, q, modified, cflags, received, callid, cseq, expires = _binding_values(index)
    thousandths = int(q or -1)  # -1: the Contact had no q
    return Binding(
        ruid=ruid,
        contact=addr,
        path=path,
        instance=normalize_instance(instance),
        reg_id=int(regid or 0),
        q=1.0 if thousandths < 0 else thousandths / 1000.0,
        modified=int(modified or 0),
        outbound=bool(int(cflags or 0) & (1 << FLB_OUTBOUND)),
        received=received,
        callid=callid,
        cseq=int(cseq or 0),
        expires=int(expires or 0),
    )
