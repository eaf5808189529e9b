"""Registrar / home proxy routes (RFC 5626 §6, §7) on Kamailio's registrar and usrloc."""

from __future__ import annotations

import KSR

from outbound.decisions import Reply

from . import registration
from .base import BaseRoutes, HomeProxyCallbacks
from .home_proxy import HomeProxy
from .locator_glue import HealthMemory, Locator
from .runtime import Runtime, send_reply


class RegistrarRoutes(BaseRoutes, HomeProxyCallbacks):
    """The object app_python3 calls for every message on the registrar."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.table = runtime.config.location_table
        locator = Locator.for_kamailio(runtime.config)
        health = HealthMemory(locator.hold_policy, locator.clock)
        self.home = HomeProxy(runtime.config, runtime.codec, locator=locator, health=health)

    def register(self) -> int:
        """Validate, then save through Kamailio's registrar (RFC 5626 §6)."""
        _, view = registration.current()
        decision = registration.decide(self.runtime.config, view)
        if isinstance(decision, Reply):
            send_reply(decision)
            return 1
        registration.save(self.runtime.config, decision, view, KSR.kx.get_callid())
        return 1

    def _initial(self) -> int:
        KSR.hdr.remove("Route")
        if KSR.is_method_in("IS"):
            KSR.rr.record_route()
        self.home.outbound_lookup()
        return 1
