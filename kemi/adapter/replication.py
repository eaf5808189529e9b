"""The registrar pair's replication bus: Kamailio's dmq + dmq_usrloc (cfg WITH_DMQ).

Every save, refresh and removal in usrloc reaches the other registrars as a
KDMQ request, and a registrar that starts asks them for all their bindings.
KDMQ requests are handled before the flood limit (a resync is thousands of
them from one address) and only from the farm's registrars: the cfg's
KO_DMQ_PEER, ``registrar.replication_peers``, and the nodes DMQ itself learnt
(``dmq_is_from_node``); anyone else gets 403 (``outbound.relay.replication_refusal``).

The sync at start arrives over the SIP socket itself, after Kamailio already
answers SIP, and nothing tells when it is complete: for KO_DMQ_SYNC_WINDOW
seconds after start a lookup that finds no binding is answered 503 with
Retry-After (``outbound.forking.Fork.lookup``), so that the edges try the peer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import KSR

from outbound.errors import ConfigError
from outbound.relay import replication_refusal
from outbound.sipmsg import is_digits

from .locator_glue import Locator, PeerGate
from .names import DMQ_PEER_DEFINE, DMQ_SWITCH, DMQ_SYNC_WINDOW_DEFINE, KDMQ_METHOD
from .runtime import Runtime, define, send_reply

MAX_SYNC_WINDOW = 3600


class ReplicationBus:
    """KDMQ from the farm's registrars goes to the dmq module; from anyone else, 403."""

    def __init__(self, locator: Locator, peers: tuple[str, ...], sync_window: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.gate = PeerGate(locator, peers)
        self.clock = clock
        # made in mod_init, before the workers fork: every process counts from Kamailio's start
        self.sync_until = clock() + sync_window

    def sync_seconds_left(self) -> int:
        """Seconds of the start-up sync window left (0 once it is over)."""
        return max(0, math.ceil(self.sync_until - self.clock()))

    @classmethod
    def for_kamailio(cls, runtime: Runtime, locator: Locator) -> ReplicationBus | None:
        """The bus when the cfg loads dmq (WITH_DMQ), else None."""
        if not KSR.kx.ifdef(DMQ_SWITCH):
            return None
        peer = define(DMQ_PEER_DEFINE) or ""
        window = define(DMQ_SYNC_WINDOW_DEFINE) or ""
        if not is_digits(window) or int(window) > MAX_SYNC_WINDOW:
            exc = ConfigError("(cfg define)", DMQ_SYNC_WINDOW_DEFINE, f"must be 0..{MAX_SYNC_WINDOW} s, got {window!r}")
            KSR.err(f"kemi-outbound: configuration error: {exc}\n")
            raise exc
        KSR.info(f"kemi-outbound: registrar pair on DMQ, peer {peer}; a lookup miss is 503 for {window} s\n")
        return cls(locator, (peer, *runtime.config.replication_peers), int(window))

    def handles(self) -> bool:
        """True when the request was KDMQ (answered or handed to dmq)."""
        if KSR.kx.get_method() != KDMQ_METHOD:
            return False
        src = KSR.kx.get_srcip()
        refusal = replication_refusal(src, from_farm=self.gate.contains(src) or KSR.dmq.is_from_node() > 0)
        if refusal is not None:
            KSR.notice(f"kemi-outbound: {refusal.code} KDMQ from {src}: {refusal.log}\n")
            send_reply(refusal)
            return True
        KSR.dmq.handle_message()
        return True
