"""The app_python3 floor of the registrar / home proxy role (issue 17):
bench/native/registrar.cfg's routing, line for line, as Python KEMI: the same
modules (registrar with outbound_mode 1, tm's t_load_contacts /
t_next_contacts / t_next_contact_flow), the same calls, no rule of ours.

Started by bench/run.py as the "floor" implementation: bench/native/registrar.cfg
with ``-A KO_FLOOR="<this file>"``.
"""

import KSR

CALL_FAILED = "ksr_failure_call"
FLOW_FAILED = "ksr_branch_failure_flow"
TABLE = "location"


class RegistrarFloor:
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
        KSR.hdr.remove("Route")
        if KSR.is_REGISTER():
            realm = KSR.pv.get("$td")
            rc = KSR.auth_db.auth_check(realm, "subscriber", 1)
            if rc < 0:
                self.challenge(rc, realm)
                return 1
            KSR.auth.consume_credentials()
            if KSR.registrar.save(TABLE, 0) < 0:
                KSR.sl.sl_reply_error()
            return 1
        if not KSR.is_ACK():
            realm = KSR.pv.get("$fd")
            rc = KSR.auth_db.auth_check(realm, "subscriber", 0)
            if rc < 0:
                self.challenge(rc, realm)
                return 1
            KSR.auth.consume_credentials()
        if KSR.is_INVITE() or KSR.is_SUBSCRIBE() or KSR.is_method("REFER"):
            KSR.rr.record_route()
        self.location()
        return 1

    @staticmethod
    def challenge(rc, realm):
        if rc in (-2, -3, -8):
            KSR.sl.send_reply(403, "Forbidden")
        elif rc in (-4, -6):
            KSR.auth.auth_challenge(realm, 17)
        else:
            KSR.auth.auth_challenge(realm, 1)

    def in_dialog(self):
        if KSR.rr.loose_route() > 0:
            self.forward()
            return 1
        if KSR.is_ACK():
            if KSR.tm.t_check_trans() > 0:
                self.forward()
            return 1
        KSR.sl.send_reply(404, "Not Found")
        return 1

    def location(self):
        rc = KSR.registrar.lookup(TABLE)
        if rc < 0:
            KSR.tm.t_newtran()
            if rc == -2:
                KSR.tm.t_reply(405, "Method Not Allowed")
            else:
                KSR.tm.t_reply(404, "Not Found")
            return
        if KSR.tm.t_load_contacts() < 0:
            KSR.sl.sl_reply_error()
            return
        if KSR.tm.t_next_contacts() == -1:
            KSR.sl.sl_reply_error()
            return
        KSR.tm.t_on_failure(CALL_FAILED)
        KSR.tm.t_on_branch_failure(FLOW_FAILED)
        self.forward()

    def forward(self):
        if KSR.tm.t_relay() < 0:
            KSR.sl.sl_reply_error()

    def ksr_failure_call(self, msg):
        if KSR.tm.t_check_status("6[0-9][0-9]") < 0 and KSR.tm.t_next_contacts() > 0:
            KSR.tm.t_on_branch_failure(FLOW_FAILED)
            KSR.tm.t_relay()
            return 1
        if KSR.tm.t_check_status("430") > 0:
            KSR.tm.t_reply(480, "Temporarily Unavailable")
        return 1

    def ksr_branch_failure_flow(self, msg, event=""):
        timed_out = KSR.tm.t_branch_timeout() > 0 and KSR.tm.t_branch_replied() < 0
        if KSR.tm.t_check_status("403|430") > 0 or timed_out:
            KSR.registrar.unregister_ruid(TABLE, KSR.kx.get_turi(), KSR.pv.get("$T_reply_ruid") or "")
            if KSR.tm.t_next_contact_flow() > 0:
                KSR.tm.t_on_branch_failure(FLOW_FAILED)
                KSR.tm.t_relay()
        return 1

    def ksr_reply_route(self, msg):
        return 1


def mod_init():
    return RegistrarFloor()
