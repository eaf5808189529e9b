"""Every name the cfg files and the Python side share, and the text form of each value.

Kamailio and our routes meet on names: a branch flag the cfg defines and the
registrar stores, an AVP the rr or registrar module reads, an htable the cfg
declares and the Python fills, a route callback a module calls by name, a
``#!define`` the Python reads. A typo on either side fails silently (an
htable that is not there reads as empty), so each name lives here once, and
tests/unit/test_names.py reads cfg/*.cfg and checks both directions: every
name a cfg declares for the Python exists here, and every name here that
needs a cfg declaration has one in the cfgs listed.

Names only the Python uses (transaction xavps, $var scratch, the usrloc fetch
handle) are here too, so that no two modules pick the same one.

Value codecs: ``ko_flows`` items (:class:`FlowsEntry`, below), ``ko_health``
(``locator.health.TargetHealth.to_text``), the home proxy's transaction state
(``outbound.forking``: its own ``to_text``).
"""

from __future__ import annotations

from dataclasses import dataclass

EDGE, REGISTRAR, SINGLE = "edge", "registrar", "single"
ALL_ROLES = (EDGE, REGISTRAR, SINGLE)

# ----- branch flags (#!define in the cfg, stored in usrloc cflags) ------------

FLB_OUTBOUND = 6  # a binding is an outbound flow (RFC 5626 §6 applied)

# ----- AVPs a module reads (modparam in the cfg) ------------------------------

RR_USER_AVP = "$avp(ko_rr_user)"  # rr custom_user_avp: the Record-Route user part (a flow token)
RECEIVED_AVP = "$avp(ko_received)"  # registrar received_avp: where a first-hop REGISTER came from

# ----- htables (modparam("htable", "htable", ...) in the cfg) -----------------

HEALTH_TABLE = "ko_health"  # hold-downs of failed targets, one item
HEALTH_ITEM = "targets"
FLOWS_TABLE = "ko_flows"  # edge, single server: which AORs live on which flow (names.FlowsEntry)
BAN_TABLE = "ipban"  # flood limit: banned sources
FLOWS_ITERATOR = "ko_it"
GRUU_TABLE = "ko_gruu"  # registrar, single: the public GRUUs given out (RFC 5627 §6.1: 480, not 404)

# ----- route callbacks Kamailio calls by name ---------------------------------

TCP_EVENT_CALLBACK = "ksr_tcp_event"  # tcpops event_callback (edge, single)
SWEEP_CALLBACK = "ksr_sweep_flows"  # rtimer exec route (single)
XHTTP_CALLBACK = "ksr_xhttp_event"  # xhttp event_callback: every HTTP request (metrics socket, WebSocket)
WS_EVENT_CALLBACK = "ksr_websocket_event"  # websocket event_callback: "websocket:closed" (edge, single)
WS_CLOSED_EVENT = "websocket:closed"
# tm callbacks armed from Python (methods of the routes object)
BRANCH_ROUTE = "ksr_branch_outbound"
BRANCH_FAILURE_ROUTE = "ksr_branch_failure_outbound"
# tm's t_on_branch_failure, called from Python under a native cfg, looks the route up
# among the event routes by its whole name, event_route[tm:branch-failure:NAME], and
# adds an empty one for any other name (with the bare name a registrar worker died)
BRANCH_FAILURE_EVENT = f"tm:branch-failure:{BRANCH_FAILURE_ROUTE}"
FAILURE_ROUTE = "ksr_failure_outbound"
FLOW_FAILURE_ROUTE = "ksr_failure_flow"
HOME_FAILURE_ROUTE = "ksr_failure_home"
HOME_REPLY_ROUTE = "ksr_reply_home"
DIALOG_FAILURE_ROUTE = "ksr_failure_dialog"
TM_CALLBACKS = (BRANCH_ROUTE, BRANCH_FAILURE_ROUTE, FAILURE_ROUTE,
                FLOW_FAILURE_ROUTE, HOME_FAILURE_ROUTE, HOME_REPLY_ROUTE, DIALOG_FAILURE_ROUTE)
# each role's tm routes in its cfg (failure_route[...], onreply_route[...], branch_route[...],
# event_route[tm:branch-failure:...]), each calling the method of its own name
TM_ROUTES = {
    EDGE: (FLOW_FAILURE_ROUTE, HOME_FAILURE_ROUTE, HOME_REPLY_ROUTE, DIALOG_FAILURE_ROUTE),
    REGISTRAR: (BRANCH_ROUTE, BRANCH_FAILURE_ROUTE, FAILURE_ROUTE, DIALOG_FAILURE_ROUTE),
    SINGLE: (FLOW_FAILURE_ROUTE, BRANCH_ROUTE, BRANCH_FAILURE_ROUTE, FAILURE_ROUTE, DIALOG_FAILURE_ROUTE),
}
# what the shared routes call with python_exec (cfg/routing.cfg, adapter.base.BaseRoutes)
NATIVE_ENTRIES = ("ksr_kdmq", "ksr_register", "ksr_initial", "ksr_within_dialog", "ksr_flood", "ksr_max_forwards",
                  "ksr_cancel_unmatched", "ksr_relay_failed", "ksr_stray_reply")

# ----- cfg defines the Python reads --------------------------------------------

CONFIG_DEFINE = "KO_CONFIG"  # the YAML file
ADDR_DEFINE = "KO_ADDR"  # listen address
PORT_DEFINE = "KO_PORT"
TLS_PORT_DEFINE = "KO_TLS_PORT"
WS_PORT_DEFINE = "KO_WS_PORT"  # WebSocket port (WITH_WEBSOCKET)
WSS_PORT_DEFINE = "KO_WSS_PORT"  # secure WebSocket port (WITH_WEBSOCKET and WITH_TLS)
BAN_DEFINE = "KO_PIKE_BAN"  # seconds a flooding source stays banned
NOPIKE_SWITCH = "WITH_NOPIKE"
NOAUTH_SWITCH = "WITH_NOAUTH"
NOGRUU_SWITCH = "WITH_NOGRUU"  # no GRUUs (RFC 5627) are given out or dereferenced
DMQ_SWITCH = "WITH_DMQ"  # registrar: the pair replicates bindings over DMQ (adapter.replication)
DMQ_PEER_DEFINE = "KO_DMQ_PEER"  # the other registrar's DMQ address
METRICS_ADDR_DEFINE = "KO_METRICS_ADDR"  # the metrics socket (adapter.observe): /metrics, /RPC
METRICS_PORT_DEFINE = "KO_METRICS_PORT"
NOMETRICS_SWITCH = "WITH_NOMETRICS"  # no metrics socket, no counting (the decision log stays)
LOAD_WINDOW_DEFINE = "KO_LOAD_WINDOW"  # s after start a lookup miss is 503, not 404 (adapter.usrloc.LoadWindow)
KDMQ_METHOD = "KDMQ"  # the dmq module's request method
# defines that override YAML keys (-A or the environment)
DEFINE_OVERRIDES = {
    "KO_REGISTRAR": "edge.registrar",
    "KO_FORCE_OUTBOUND": "edge.force_outbound",
    "KO_FLOW_KEYS_FILE": "flow_tokens.keys_file",
    "KO_FLOW_TIMER": "registrar.flow_timer",
    "KO_DEFAULT_EXPIRES": "registrar.default_expires",
}

# ----- names only the Python uses ---------------------------------------------

DNS_REMAINING_AVP = "$avp(ko_dns_remaining)"  # targets still to try (transaction AVP)
DNS_CURRENT_AVP = "$avp(ko_dns_current)"  # the target being tried (cfg/edge.cfg reads it too)
REGISTER_CONID_AVP = "$avp(ko_reg_conid)"  # edge: the device connection of a REGISTER (its 2xx sets the lifetime)
REGISTER_FLOW_AVP = "$avp(ko_reg_flow)"  # edge: "flow-key conn-id expires aor" of a REGISTER (its 2xx books the flow)
FORK_XAVP = "ko_tx"  # the home proxy's transaction state (outbound.forking.ForkState.to_text)
FORK_STATE = f"$xavp({FORK_XAVP})"  # read it; a first write adds it
FORK_STATE_FIRST = f"$xavp({FORK_XAVP}[0])"  # a later write replaces it
RR_CALLER_SIDE_XAVP = "$xavp(ko_rr=>a)"  # single server: the caller's Record-Route entry
HDR_INDEX_VAR = "$var(ko_hdr_index)"  # runtime.kamailio_fields
CONID_VAR = "$var(ko_conid)"  # tcp_get_conid's answer
FLOW_KEY_VAR = "$var(ko_flow_key)"  # adapter.flows: a ko_flows key, for $shtex
LOOKUP_HANDLE = "ko"  # reg_fetch_contacts handle (adapter.usrloc, the one reader of usrloc)


SWEEP_TIMER = "ko_sweep"  # rtimer timer running SWEEP_CALLBACK (cfg only)


@dataclass(frozen=True, slots=True)
class CfgName:
    """A name a cfg must declare, in which roles' cfgs, and (a define) its value."""

    name: str
    kind: str  # "define", "avp", "htable", "callback", "timer"
    roles: tuple[str, ...]
    value: str | None = None


CFG_NAMES = (
    CfgName("FLB_OUTBOUND", "define", ALL_ROLES, str(FLB_OUTBOUND)),
    CfgName(CONFIG_DEFINE, "define", ALL_ROLES),
    CfgName(ADDR_DEFINE, "define", ALL_ROLES),
    CfgName(PORT_DEFINE, "define", ALL_ROLES),
    CfgName(TLS_PORT_DEFINE, "define", (EDGE, SINGLE)),
    CfgName(WS_PORT_DEFINE, "define", (EDGE, SINGLE)),
    CfgName(WSS_PORT_DEFINE, "define", (EDGE, SINGLE)),
    CfgName(BAN_DEFINE, "define", ALL_ROLES),
    CfgName(DMQ_PEER_DEFINE, "define", (REGISTRAR,)),
    CfgName(LOAD_WINDOW_DEFINE, "define", (REGISTRAR, SINGLE)),
    CfgName(METRICS_ADDR_DEFINE, "define", ALL_ROLES),
    CfgName(METRICS_PORT_DEFINE, "define", ALL_ROLES),
    CfgName("ko_rr_user", "avp", (EDGE, SINGLE)),
    CfgName("ko_received", "avp", (REGISTRAR, SINGLE)),
    CfgName(HEALTH_TABLE, "htable", (EDGE, REGISTRAR)),
    CfgName(FLOWS_TABLE, "htable", (EDGE, SINGLE)),
    CfgName(BAN_TABLE, "htable", ALL_ROLES),
    CfgName(GRUU_TABLE, "htable", (REGISTRAR, SINGLE)),
    CfgName(TCP_EVENT_CALLBACK, "callback", (EDGE, SINGLE)),
    CfgName(SWEEP_CALLBACK, "callback", (SINGLE,)),
    CfgName(XHTTP_CALLBACK, "callback", ALL_ROLES),
    CfgName(WS_EVENT_CALLBACK, "callback", (EDGE, SINGLE)),
    CfgName(SWEEP_TIMER, "timer", (SINGLE,)),
    # the native cfg: each role's tm routes, the shared python_exec entries, and
    # the AVP the edge's failure route reads (the target being tried)
    *(CfgName(name, "callback", tuple(role for role in ALL_ROLES if name in TM_ROUTES[role]))
      for name in TM_CALLBACKS),
    *(CfgName(name, "callback", ALL_ROLES) for name in NATIVE_ENTRIES),
    CfgName("ko_dns_current", "avp", (EDGE,)),
)


# ----- value codecs ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlowsEntry:
    """A ``ko_flows`` value: the connection id, then the AORs on it."""

    conn_id: int
    aors: tuple[str, ...] = ()

    def to_text(self) -> str:
        return " ".join([str(self.conn_id), *self.aors])

    @classmethod
    def from_text(cls, text: object) -> FlowsEntry | None:
        """None for an empty or malformed item."""
        parts = text.split() if isinstance(text, str) else []
        if not parts or not parts[0].isdigit():
            return None
        return cls(int(parts[0]), tuple(parts[1:]))
