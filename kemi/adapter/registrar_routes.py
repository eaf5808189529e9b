"""Registrar / home proxy routes (RFC 5626 §6, §7) on Kamailio's registrar and usrloc.

Built from parts: the request prologue (base.BaseRoutes), digest
authentication (auth.Authenticator), the trusted edges' address sets
(locator_glue.PeerGate), the REGISTER save path (registration), the home
proxy's forking to registered flows (home_proxy.HomeProxy) and, for a
registrar pair (WITH_DMQ), the replication bus (replication.ReplicationBus).
"""

from __future__ import annotations

import KSR

from locator.peers import peer_addresses
from outbound.addresses import canonical_ip, ip_family
from outbound.decisions import Reply
from outbound.policy import RegisterView
from outbound.relay import farm_dialog_refusal, path_refusal
from outbound.sipmsg import parse_name_addrs

from . import registration, usrloc
from .auth import Authenticator
from .base import BaseRoutes, DialogSeal, leading_own_routes
from .home_proxy import HomeProxy, HomeProxyCallbacks
from .locator_glue import HealthMemory, Locator, NextHopLocator, PeerGate
from .replication import ReplicationBus
from .runtime import Runtime, Snapshot, dialog_keys, send_reply, snapshot


class RegistrarRoutes(BaseRoutes, HomeProxyCallbacks):
    """The object app_python3 calls for every message on the registrar."""

    def __init__(self, runtime: Runtime) -> None:
        locator = Locator.for_kamailio(runtime.config)
        # an edge address that did not answer lately goes last (calls and their dialogs)
        health = HealthMemory(locator.hold_policy, locator.clock)
        bus = ReplicationBus.for_kamailio(runtime, locator)
        super().__init__(runtime, NextHopLocator(locator, health), bus)
        self.locator = locator
        keys = dialog_keys(runtime, "registrar")  # Record-Route seals and temporary GRUUs
        self.home = HomeProxy(runtime.config, runtime.codec, locator=locator, health=health, gruu_keys=keys,
                              loading=usrloc.LoadWindow.for_kamailio().seconds_left)
        self.edges = PeerGate(locator, runtime.config.trusted_edges)
        self.seal = DialogSeal(keys)
        self.auth = Authenticator("registrar", PeerGate(locator, runtime.config.trusted_peers))

    def trusted_source(self) -> bool:
        return self.edges.enabled and self.edges.contains(KSR.kx.get_srcip())

    def path_trust(self, snap: Snapshot, view: RegisterView) -> Reply | None:
        """A Path is stored only as a trusted edge wrote it (outbound.relay.path_refusal)."""
        if not view.paths:
            return None
        top = view.paths[0].sip_uri
        source = canonical_ip(snap.src_ip) if ip_family(snap.src_ip) else snap.src_ip
        if self.edges.enabled:
            return path_refusal(top.host, source_ip=source, host_addresses=(),
                                trusted_source=self.edges.contains(snap.src_ip))
        if ip_family(top.host) is not None:
            addresses: tuple[str, ...] = (canonical_ip(top.host),)
        else:
            port = f":{top.port}" if top.port else ""
            found, _ = peer_addresses(f"sip:{top.host}{port}", self.locator.resolver.session(), self.locator.policy)
            addresses = tuple(found)
        return path_refusal(top.host, source_ip=source, host_addresses=addresses, trusted_source=None)

    def register(self) -> int:
        """Validate, then save through Kamailio's registrar (RFC 5626 §6)."""
        if not self.auth.register():
            return 1
        snap, view = registration.current()
        refusal = self.path_trust(snap, view)
        if refusal is not None:
            send_reply(refusal)
            return 1
        decision = registration.decide(self.runtime.config, view, holds_flows=False)
        if isinstance(decision, Reply):
            send_reply(decision)
            return 1
        registration.save(self.runtime.config, decision, view, KSR.kx.get_callid(), gruus=self.home.gruus)
        return 1

    def initial(self) -> int:
        if not self.auth.request() or not self.strip_own_routes():
            return 1
        if KSR.is_method_in("IS"):
            # sealed for the Call-ID: in-dialog requests must bring it back (outbound.relay)
            KSR.rr.record_route_params(self.seal.param(KSR.kx.get_callid()))
        self.home.outbound_lookup()
        return 1

    def within_dialog(self) -> int:
        """Relayed only along a Route set of ours: our sealed Record-Route entry
        first (no open relay through the farm, outbound.relay)."""
        routes = parse_name_addrs(snapshot().headers, "route")
        sealed = bool(routes) and self.seal.carried_by(leading_own_routes(routes), KSR.kx.get_callid())
        refusal = farm_dialog_refusal(has_routes=bool(routes), sealed=sealed,
                                      top_route=routes[0].uri if routes else "")
        if refusal is not None:
            send_reply(refusal)
            return 1
        return super().within_dialog()
