"""Registrar / home proxy routes (RFC 5626 §6, §7) on Kamailio's registrar and usrloc."""

from __future__ import annotations

from typing import Any

import KSR

from outbound.decisions import Reply

from . import registration
from .home_proxy import HomeProxy
from .runtime import Runtime, check_fault_injection, guarded, send_reply


class RegistrarRoutes:
    """The object app_python3 calls for every message on the registrar."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.table = runtime.config.location_table
        self.home = HomeProxy(runtime.config, runtime.codec)

    def child_init(self, rank: int) -> int:
        return 0

    @guarded
    def ksr_request_route(self, msg: Any) -> int:
        if KSR.maxfwd.process_maxfwd(10) < 0:
            send_reply(Reply(483, "Too Many Hops", "Max-Forwards exhausted"))
            return 1
        if KSR.sanity.sanity_check(1511, 7) < 0:
            KSR.notice(f"kemi-outbound: malformed request from {KSR.kx.get_srcip()}\n")
            return 1
        check_fault_injection(self.runtime)
        if KSR.is_CANCEL():
            if KSR.tm.t_check_trans() > 0:
                self._relay()
            return 1
        if KSR.siputils.has_totag() > 0:
            return self._within_dialog()
        KSR.tm.t_check_trans()
        if KSR.is_REGISTER():
            return self.register()
        return self._to_location()

    def register(self) -> int:
        """Validate, then save through Kamailio's registrar (RFC 5626 §6)."""
        _, view = registration.current()
        decision = registration.decide(self.runtime.config, view)
        if isinstance(decision, Reply):
            send_reply(decision)
            return 1
        registration.save(self.runtime.config, decision, view, KSR.kx.get_callid())
        return 1

    def _to_location(self) -> int:
        KSR.hdr.remove("Route")
        if KSR.is_method_in("IS"):
            KSR.rr.record_route()
        self.home.outbound_lookup()
        return 1

    def _within_dialog(self) -> int:
        if KSR.rr.loose_route() > 0:
            self._relay()
            return 1
        if KSR.is_ACK():
            if KSR.tm.t_check_trans() > 0:
                self._relay()
            return 1
        send_reply(Reply(404, "Not Found", "in-dialog request without a route"))
        return 1

    def _relay(self) -> None:
        if KSR.tm.t_relay() < 0:
            KSR.sl.sl_reply_error()

    @guarded
    def ksr_reply_route(self, msg: Any) -> int:
        return 1

    @guarded
    def ksr_branch_outbound(self, msg: Any) -> int:
        self.home.branch_route()
        return 1

    @guarded
    def ksr_branch_failure_outbound(self, msg: Any) -> int:
        self.home.outbound_next_contact()
        return 1

    @guarded
    def ksr_failure_outbound(self, msg: Any) -> int:
        self.home.failure_route()
        return 1

    def ksr_onsend_route(self, msg: Any) -> int:
        return 1
