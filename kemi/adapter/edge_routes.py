"""Edge proxy routes (RFC 5626 §5) carried out with KSR."""

from __future__ import annotations

from typing import Any

import KSR

from outbound.decisions import PathKind, Reply
from outbound.policy import edge_path_kind
from outbound.sipmsg import parse_name_addrs
from outbound.tokens import Flow

from .runtime import Runtime, check_fault_injection, guarded, send_reply, snapshot


class EdgeRoutes:
    """The object app_python3 calls for every message on an edge proxy."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.registrar = runtime.config.registrar_uri
        if runtime.codec is None:
            raise ValueError("an edge needs flow-token keys")
        self.codec = runtime.codec

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
        return self._initial()

    def register(self) -> int:
        """Forward a REGISTER to the registrar with our Path (RFC 5626 §5.1)."""
        KSR.hdr.remove("Route")
        self.outbound_add_path()
        if not self.registrar:
            send_reply(Reply(500, "Server Internal Error", "edge.registrar is not configured"))
            return 1
        KSR.setdsturi(self.registrar)
        self._relay()
        return 1

    def outbound_add_path(self) -> PathKind:
        """Path with a flow token and ``;ob`` when outbound applies, else plain."""
        snap = snapshot()
        contacts = tuple(parse_name_addrs(snap.headers, "contact"))
        via_count = len(snap.headers.values("via"))
        kind = edge_path_kind(via_count, contacts, self.runtime.config.force_outbound)
        if kind is PathKind.FLOW:
            token = self.codec.encode(
                Flow(snap.transport, snap.rcv_ip, snap.rcv_port, snap.src_ip, snap.src_port,
                     snap.conn_id if snap.transport != "udp" else 0)
            )
            KSR.path.add_path_user_params(token, "ob")
        else:
            KSR.path.add_path()
        return kind

    def _initial(self) -> int:
        if KSR.is_method_in("IS"):  # INVITE, SUBSCRIBE
            KSR.rr.record_route()
        snap = snapshot()
        if len(snap.headers.values("via")) == 1:
            KSR.hdr.remove("Route")
            if not self.registrar:
                send_reply(Reply(500, "Server Internal Error", "edge.registrar is not configured"))
                return 1
            KSR.setdsturi(self.registrar)
        elif KSR.rr.loose_route() < 0:
            send_reply(Reply(404, "Not Found", "no route for an initial request from the core"))
            return 1
        self._relay()
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

    def ksr_onsend_route(self, msg: Any) -> int:
        return 1
