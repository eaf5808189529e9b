"""Registrar / home proxy routes (RFC 5626 §6, §7) on Kamailio's registrar and usrloc."""

from __future__ import annotations

import KSR

from locator.peers import peer_addresses
from outbound.addresses import canonical_ip, ip_family
from outbound.decisions import Reply
from outbound.policy import RegisterView
from outbound.relay import SEAL_PARAM, dialog_seal, path_refusal, seal_valid
from outbound.sipmsg import parse_name_addrs

from . import registration
from .auth import Authenticator
from .base import BaseRoutes, HomeProxyCallbacks, names_us
from .home_proxy import HomeProxy
from .locator_glue import HealthMemory, Locator, PeerGate
from .runtime import Runtime, Snapshot, dialog_keys, send_reply, snapshot


class RegistrarRoutes(BaseRoutes, HomeProxyCallbacks):
    """The object app_python3 calls for every message on the registrar."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.table = runtime.config.location_table
        locator = Locator.for_kamailio(runtime.config)
        health = HealthMemory(locator.hold_policy, locator.clock)
        self.home = HomeProxy(runtime.config, runtime.codec, locator=locator, health=health)
        self.locator = locator
        self.edges = PeerGate(locator, runtime.config.trusted_edges)
        self.seal_keys = dialog_keys(runtime, "registrar")
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
        host = top.host.strip("[]")
        if ip_family(host) is not None:
            addresses: tuple[str, ...] = (canonical_ip(host),)
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
        decision = registration.decide(self.runtime.config, view)
        if isinstance(decision, Reply):
            send_reply(decision)
            return 1
        registration.save(self.runtime.config, decision, view, KSR.kx.get_callid())
        return 1

    def _initial(self) -> int:
        if not self.auth.request():
            return 1
        KSR.hdr.remove("Route")
        if KSR.is_method_in("IS"):
            # sealed for the Call-ID: in-dialog requests must bring it back (outbound.relay)
            KSR.rr.record_route_params(f";{SEAL_PARAM}={dialog_seal(self.seal_keys[0], KSR.kx.get_callid())}")
        self.home.outbound_lookup()
        return 1

    def _within_dialog(self) -> int:
        """Relayed only along a Route set of ours: our sealed Record-Route entry
        first (no open relay through the farm, outbound.relay)."""
        routes = parse_name_addrs(snapshot().headers, "route")
        if routes:
            ours = []
            for route in routes[:2]:
                if not names_us(route):
                    break
                ours.append(route)
            callid = KSR.kx.get_callid()
            if not any(seal_valid(self.seal_keys, callid, r.sip_uri.params.get(SEAL_PARAM)) for r in ours):
                send_reply(Reply(403, "Forbidden", "in-dialog request without our sealed Record-Route "
                                 f"(top Route {routes[0].uri[:80]!r})"))
                return 1
        return super()._within_dialog()
