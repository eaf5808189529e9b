"""The app_python3 floor of the edge role (issue 17): bench/native/edge.cfg's
routing, line for line, as Python KEMI: the same modules (Kamailio's C
outbound module makes the flow tokens), the same calls, no rule of ours.

Started by bench/run.py as the "floor" implementation: bench/native/edge.cfg
with ``-A KO_FLOOR="<this file>"``. What it costs above native is the price
of running a route in Python at all; what ours costs above it is our rules.
"""

import KSR

FLOW_FAILURE = "ksr_failure_flow"


def _define(name):
    value = KSR.kx.get_def(name)
    return str(value).strip().strip('"') if value is not None else ""


class EdgeFloor:
    def __init__(self):
        self.registrar = _define("KO_REGISTRAR")

    def child_init(self, rank):
        return 0

    def ksr_request_route(self, msg):
        if KSR.maxfwd.process_maxfwd(10) < 0:
            KSR.sl.send_reply(483, "Too Many Hops")
            return 1
        if KSR.sanity.sanity_check(1511, 7) < 0:
            KSR.notice("malformed request from " + KSR.kx.get_srcip() + "\n")
            return 1
        if KSR.is_CANCEL():
            if KSR.tm.t_check_trans() > 0:
                self.forward()
            return 1
        if KSR.siputils.has_totag() > 0:
            return self.in_dialog()
        KSR.tm.t_check_trans()
        if KSR.is_REGISTER():
            KSR.hdr.remove("Route")
            KSR.path.add_path()
            KSR.setdsturi(self.registrar)
            self.forward()
            return 1
        if KSR.is_INVITE() or KSR.is_SUBSCRIBE() or KSR.is_method("REFER"):
            KSR.rr.record_route()
        if KSR.pv.is_null("$(hdr(Via)[1])"):
            # first hop: from the UA on to the home proxy
            KSR.hdr.remove("Route")
            KSR.setdsturi(self.registrar)
            self.forward()
            return 1
        # from the home proxy: the top Route carries the flow token
        rc = KSR.rr.loose_route()
        if rc < 0:
            if rc == -2:
                KSR.sl.send_reply(403, "Forbidden")
            else:
                KSR.sl.send_reply(404, "Not Found")
            return 1
        self.to_flow()
        return 1

    def in_dialog(self):
        rc = KSR.rr.loose_route()
        if rc > 0:
            if rc == 2:
                self.to_flow()
            else:
                self.forward()
            return 1
        if rc == -2:
            KSR.sl.send_reply(403, "Forbidden")
            return 1
        if KSR.is_ACK():
            if KSR.tm.t_check_trans() > 0:
                self.forward()
            return 1
        KSR.sl.send_reply(404, "Not Found")
        return 1

    def to_flow(self):
        KSR.set_forward_no_connect()
        if KSR.is_ACK():
            KSR.tm.t_relay()
            return
        KSR.tm.t_on_failure(FLOW_FAILURE)
        if KSR.tm.t_relay() < 0:
            KSR.tm.t_reply(430, "Flow Failed")

    def forward(self):
        if KSR.tm.t_relay() < 0:
            KSR.sl.sl_reply_error()

    def ksr_failure_flow(self, msg):
        if KSR.tm.t_branch_timeout() > 0 and KSR.tm.t_branch_replied() < 0:
            KSR.tm.t_reply(430, "Flow Failed")
        return 1

    def ksr_reply_route(self, msg):
        return 1


def mod_init():
    return EdgeFloor()
