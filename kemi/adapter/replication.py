"""The registrar pair's replication bus: Kamailio's dmq + dmq_usrloc (cfg WITH_DMQ).

Every save, refresh and removal in usrloc reaches the other registrars as a
KDMQ request, and a registrar that starts asks them for all their bindings.
KDMQ requests are handled before the flood limit (a resync is thousands of
them from one address) and only from the farm's registrars: the cfg's
KO_DMQ_PEER, ``registrar.replication_peers``, and the nodes DMQ itself learnt
(``dmq_is_from_node``); anyone else gets 403 (``outbound.relay.replication_refusal``).

The sync at start arrives after Kamailio already answers SIP, and nothing
tells when it is complete: ``adapter.usrloc.LoadWindow`` covers it.
"""

from __future__ import annotations

import KSR

from outbound.relay import replication_refusal

from .locator_glue import Locator, PeerGate
from .names import DMQ_PEER_DEFINE, DMQ_SWITCH, KDMQ_METHOD
from .runtime import Runtime, define, send_reply


class ReplicationBus:
    """KDMQ from the farm's registrars goes to the dmq module; from anyone else, 403."""

    def __init__(self, locator: Locator, peers: tuple[str, ...]) -> None:
        self.gate = PeerGate(locator, peers)

    @classmethod
    def for_kamailio(cls, runtime: Runtime, locator: Locator) -> ReplicationBus | None:
        """The bus when the cfg loads dmq (WITH_DMQ), else None."""
        if not KSR.kx.ifdef(DMQ_SWITCH):
            return None
        peer = define(DMQ_PEER_DEFINE) or ""
        KSR.info(f"kemi-outbound: registrar pair on DMQ, peer {peer}\n")
        return cls(locator, (peer, *runtime.config.replication_peers))

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
