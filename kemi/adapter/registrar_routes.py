"""Registrar / home proxy routes (RFC 5626 §6, §7) on Kamailio's registrar and usrloc."""

from __future__ import annotations

from typing import Any

import KSR

from outbound.decisions import Reply, SaveBinding
from outbound.policy import RegisterView, registrar_decision
from outbound.sipmsg import parse_delta_seconds, parse_name_addrs

from .home_proxy import HomeProxy
from .runtime import FLB_OUTBOUND, Runtime, check_fault_injection, guarded, send_reply, snapshot


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
        snap = snapshot()
        headers = snap.headers
        view = RegisterView(
            via_count=len(headers.values("via")),
            contacts=tuple(parse_name_addrs(headers, "contact")),
            paths=tuple(parse_name_addrs(headers, "path")),
            expires_header=parse_delta_seconds(headers.first("expires")),
            supported=headers.option_tags("supported"),
        )
        config = self.runtime.config
        decision = registrar_decision(
            view, default_expires=config.default_expires, flow_timer=config.flow_timer
        )
        if isinstance(decision, Reply):
            send_reply(decision)
            return 1
        self.save(decision)
        return 1

    def save(self, decision: SaveBinding) -> None:
        if decision.outbound:
            KSR.setbflag(FLB_OUTBOUND)
        for header in decision.reply_headers:
            KSR.hdr.append_to_reply(header + "\r\n")
        if KSR.registrar.save(self.table, 0) < 0:
            KSR.notice(f"kemi-outbound: registrar refused REGISTER for {KSR.kx.get_turi()}\n")

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
