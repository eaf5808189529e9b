"""The home proxy's fork transaction (RFC 5626 §7, §11.5; RFC 3261 §16.6-16.7; RFC 3263 §4.3), table-driven.

Each test runs the core the way adapter/home_proxy.py does: one event per tm
moment, on a Fork loaded from the text the previous event left (the xavp),
with the core's questions answered by a scripted :class:`World`.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from outbound.bindings import Binding, EdgeAddresses, Target, Unusable
from outbound.decisions import Reply
from outbound.forking import (
    AddBranch,
    Branch,
    Fetch,
    Fork,
    ForkState,
    HoldDown,
    Locate,
    Note,
    Outcome,
    Relay,
    Unregister,
    better_reply,
    caller_reply,
    caller_status,
    failover_allowed,
    response_rank,
)

AOR = "sip:bob@example.com"
PHONE = "urn:uuid:00000000-0000-1000-8000-000a95a0e128"
LAPTOP = "urn:uuid:11111111-0000-1000-8000-000a95a0e128"
TABLET = "urn:uuid:22222222-0000-1000-8000-000a95a0e128"
DEAD, LIVE, THIRD = "sip:192.0.2.1:5060;transport=udp", "sip:192.0.2.2:5060;transport=udp", "sip:[2001:db8::3]:5060"


def flow(ruid: str, instance: str = PHONE, reg_id: int = 1, *, q: float = 1.0, modified: int = 0,
         outbound: bool = True) -> Binding:
    """An outbound flow of ``instance`` (reg-id, flagged outbound by the registrar)."""
    return Binding(ruid, f"sip:{ruid}@198.51.100.7", instance=instance, reg_id=reg_id, q=q, modified=modified,
                   outbound=outbound)


def plain(ruid: str, *, q: float = 1.0, modified: int = 0) -> Binding:
    """A binding without +sip.instance: an instance of its own, no outbound flow."""
    return Binding(ruid, f"sip:{ruid}@198.51.100.7", q=q, modified=modified)


def target_of(binding: Binding) -> Target:
    return Target(binding.contact, f"sip:192.0.2.{len(binding.ruid)}:5060", f"<sip:edge-{binding.ruid};lr>")


class World:
    """The adapter's answers, as scripted: usrloc's bindings (less those
    unregistered), a target per RUID (default: toward an edge by address),
    t_relay's result per Relay (default: sent)."""

    def __init__(self, bindings: list[Binding], targets: dict[str, Target | Unusable] | None = None,
                 relays: list[bool] | None = None) -> None:
        self.bindings = bindings
        self.targets = targets or {}
        self.relays = relays or []
        self.gone: set[str] = set()

    def answer(self, action: object) -> object:
        if isinstance(action, Fetch):
            return [b for b in self.bindings if b.ruid not in self.gone]
        if isinstance(action, Locate):
            return self.targets.get(action.binding.ruid) or target_of(action.binding)
        if isinstance(action, Relay):
            return self.relays.pop(0) if self.relays else True
        if isinstance(action, Unregister):
            self.gone.add(action.ruid)
        return None

    def run(self, steps) -> list[object]:
        done: list[object] = []
        answer = None
        while True:
            try:
                action = steps.send(answer)
            except StopIteration:
                return done
            done.append(action)
            answer = self.answer(action)


class Call:
    """One fork transaction: every event on a Fork read from the previous text."""

    def __init__(self, world: World, max_parallel: int = 8) -> None:
        self.world = world
        self.max_parallel = max_parallel
        self.text = ""

    @property
    def state(self) -> ForkState:
        return ForkState.from_text(self.text)

    def _event(self, name: str, *args: object) -> list[object]:
        fork = Fork(ForkState.from_text(self.text), max_parallel=self.max_parallel)
        actions = self.world.run(getattr(fork, name)(*args))
        self.text = fork.state.to_text()
        return actions

    def lookup(self) -> list[object]:
        return self._event("lookup", AOR)

    def slot(self, ruid: str) -> int:
        return max(slot for slot, branch in self.state.branches.items() if branch.ruid == ruid)

    def fail(self, ruid: str, status: int, *, replied: bool | None = None, canceled: bool = False,
             reason: str = "") -> list[object]:
        """tm's branch-failure route for the live branch toward ``ruid``; a status
        other than 408/503 was received (a reply) unless told otherwise."""
        replied = status not in (408, 503) if replied is None else replied
        return self._event("branch_failed", Outcome(status, self.slot(ruid), replied, canceled, reason))

    def all_failed(self, status: int, *, canceled: bool = False) -> list[object]:
        return self._event("all_failed", Outcome(status, canceled=canceled))


def added(actions) -> list[str]:
    return [a.binding.ruid for a in actions if isinstance(a, AddBranch)]


def removed(actions) -> list[str]:
    return [a.ruid for a in actions if isinstance(a, Unregister)]


def held(actions) -> list[tuple[str, str]]:
    return [(a.address, a.why) for a in actions if isinstance(a, HoldDown)]


def notes(actions) -> list[str]:
    return [a.log for a in actions if isinstance(a, Note)]


def replies(actions) -> list[tuple[int, str]]:
    return [(a.code, a.reason) for a in actions if isinstance(a, Reply)]


# --- RFC 5626 §7: one flow per instance in the target set at a time ----------------------------

ONE_FLOW_CASES = [
    ("three-flows-of-one-instance-one-branch-the-newest",
     [flow("p1", modified=1), flow("p2", reg_id=2, modified=3), flow("p3", reg_id=3, modified=2)], ["p2"]),
    ("two-instances-one-flow-each",
     [flow("p1", modified=10), flow("l1", LAPTOP, modified=20), flow("p2", reg_id=2, modified=30),
      flow("l2", LAPTOP, 2, modified=5)], ["p2", "l1"]),
    ("plain-bindings-are-each-an-instance-of-their-own",
     [plain("a", modified=30), flow("p1", modified=20), plain("b", modified=10)], ["a", "p1", "b"]),
]


@pytest.mark.parametrize(("bindings", "expected"), [c[1:] for c in ONE_FLOW_CASES], ids=[c[0] for c in ONE_FLOW_CASES])
def test_rfc5626_7_one_flow_per_instance_in_the_target_set(bindings, expected):
    actions = Call(World(bindings)).lookup()

    assert added(actions) == expected
    assert [a.in_ruri for a in actions if isinstance(a, AddBranch)] == [True] + [False] * (len(expected) - 1)
    assert actions[-1] == Relay()


def test_rfc5626_7_failover_replaces_the_flow_it_never_adds_a_second_one():
    call = Call(World([flow("p1", modified=3), flow("p2", reg_id=2, modified=2), flow("p3", reg_id=3, modified=1),
                       flow("l1", LAPTOP)]))
    assert added(call.lookup()) == ["p1", "l1"]

    assert added(call.fail("p1", 430)) == ["p2"]
    assert added(call.fail("p2", 408)) == ["p3"]
    assert sorted(b.ruid for b in call.state.branches.values()) == ["l1", "p3"]
    last = call.fail("p3", 430)
    assert added(last) == [] and notes(last) == [f"no flow left for instance:{PHONE} of {AOR}"]


# --- RFC 5626 §7: failover only on 430 or a locally generated 408/503 ----------------------------

FAILOVER_CASES = [
    # (id, status, replied before/with it, fails over)
    ("430-fails-over", 430, True, True),
    ("430-fails-over-whatever-came-before", 430, False, True),
    ("local-408-timeout-fails-over", 408, False, True),
    ("local-503-transport-error-fails-over", 503, False, True),
    ("received-408-is-an-answer", 408, True, False),
    ("received-503-is-an-answer", 503, True, False),
    *((f"{status}-ends-the-instance", status, True, False) for status in (486, 603, 500, 404, 480, 487)),
]


@pytest.mark.parametrize(("status", "replied", "fails_over"), [c[1:] for c in FAILOVER_CASES],
                         ids=[c[0] for c in FAILOVER_CASES])
def test_rfc5626_7_failover_to_the_next_flow_only_on_430_or_a_local_408_503(status, replied, fails_over):
    call = Call(World([flow("p1", modified=2), flow("p2", reg_id=2, modified=1)]))
    call.lookup()

    actions = call.fail("p1", status, replied=replied)

    if fails_over:
        local = " (local)" if status != 430 else ""
        assert actions[0] == Fetch(AOR)
        assert actions[1] == Unregister(AOR, "p1", f"flow p1 of {AOR} failed with {status}{local}; removing it",
                                        failover=f"{status}{'_local' if status != 430 else ''}")
        assert added(actions) == ["p2"] and actions[-1] == Relay()
    else:
        assert actions == []


def test_rfc5626_7_a_flow_registered_again_while_its_branch_was_out_is_kept_and_tried_first():
    """The device's flow died and the device registered the same reg-id again over
    a new flow (usrloc updated the binding in place, same RUID, new Path) before
    the old flow's 430 came back: only the failed flow goes, not the new one."""
    old = replace(flow("p1", modified=2), path="<sip:OLDTOKEN@192.0.2.1;lr;ob>")
    world = World([old, flow("p2", reg_id=2, modified=1)])
    call = Call(world)
    call.lookup()
    world.bindings[0] = replace(old, path="<sip:NEWTOKEN@192.0.2.1;lr;ob>", modified=3)

    actions = call.fail("p1", 430)

    assert removed(actions) == []
    assert notes(actions) == [f"430 from p1 of {AOR}, registered again over another flow since: binding kept"]
    assert added(actions) == ["p1"] and actions[-1] == Relay()
    assert call.state.branches[call.slot("p1")].path == "<sip:NEWTOKEN@192.0.2.1;lr;ob>"


def test_rfc5626_7_the_same_flow_refreshed_while_its_branch_was_out_still_goes_on_430():
    """A refresh over the failed flow itself (same Path) does not save the binding."""
    old = replace(flow("p1", modified=2), path="<sip:OLDTOKEN@192.0.2.1;lr;ob>")
    world = World([old, flow("p2", reg_id=2, modified=1)])
    call = Call(world)
    call.lookup()
    world.bindings[0] = replace(old, modified=3)

    actions = call.fail("p1", 430)

    assert removed(actions) == ["p1"] and added(actions) == ["p2"]


@pytest.mark.parametrize("status", [486, 603, 404, 480])
def test_rfc5626_7_after_another_final_answer_no_other_flow_of_that_instance_not_even_in_a_later_wave(status):
    call = Call(World([flow("p1", modified=2), flow("p2", reg_id=2, modified=1), plain("low", q=0.5)]))
    call.lookup()
    call.fail("p1", status)

    later = call.all_failed(status)

    assert "p2" not in added(later)


@pytest.mark.parametrize(("status", "replied"), [(430, True), (408, False), (503, False)],
                         ids=["430", "local-408", "local-503"])
@pytest.mark.parametrize("binding", [plain("pl"), flow("pl", reg_id=0, outbound=False)],
                         ids=["no-instance", "instance-reg-id-ignored"])
def test_rfc5626_11_5_a_binding_that_is_no_outbound_flow_is_kept_on_430(binding, status, replied):
    """430 is an edge's word about a flow; a plain binding has none (our own 408/503 neither)."""
    call = Call(World([binding]))
    call.lookup()

    actions = call.fail("pl", status, replied=replied)

    assert removed(actions) == [] and added(actions) == []
    assert notes(actions) == [f"{status} from pl of {AOR}, which is no outbound flow: binding kept"]


# --- RFC 3261 §16.10: never new branches after CANCEL -----------------------------------------------

def test_rfc3261_16_10_never_new_branches_after_cancel():
    call = Call(World([flow("p1", modified=2), flow("p2", reg_id=2, modified=1), plain("low", q=0.5)]))
    call.lookup()

    assert call.fail("p1", 430, canceled=True) == []
    assert call.fail("p1", 408, replied=False, canceled=True) == []
    assert call.all_failed(430, canceled=True) == [
        Reply(487, "Request Terminated", "canceled; 430 is a flow failure", cause="canceled")]
    assert call.all_failed(487, canceled=True) == []
    assert call.all_failed(408, canceled=True) == [
        Reply(487, "Request Terminated", "canceled; 408 is a flow failure", cause="canceled")]


def test_rfc3261_16_10_a_canceled_answer_is_not_remembered():
    call = Call(World([flow("p1"), flow("l1", LAPTOP)]))
    call.lookup()
    call.fail("l1", 486, canceled=True, reason="Busy Here")

    assert call.state.best is None


# --- RFC 3261 §16.6: q-value waves --------------------------------------------------------------------

WAVE_CASES = [
    # (id, bindings, max_parallel, waves started one after the other)
    ("higher-q-first", [flow("a", q=0.1), flow("b", LAPTOP, q=1.0), flow("c", TABLET, q=0.5)], 8,
     [["b"], ["c"], ["a"]]),
    ("parallel-within-a-q", [flow("a", q=1.0, modified=3), flow("b", LAPTOP, q=1.0, modified=2),
                             flow("c", TABLET, q=0.5)], 8, [["a", "b"], ["c"]]),
    ("max-parallel-spills-a-q-group", [plain("a", modified=3), plain("b", modified=2), plain("c", modified=1)], 2,
     [["a", "b"], ["c"]]),
    ("spill-then-the-lower-q", [plain("a", modified=3), plain("b", modified=2), plain("c", modified=1),
                                plain("d", q=0.5)], 2, [["a", "b"], ["c"], ["d"]]),
    ("serial", [plain("a", modified=3), plain("b", modified=2)], 1, [["a"], ["b"]]),
]


@pytest.mark.parametrize(("bindings", "max_parallel", "expected"), [c[1:] for c in WAVE_CASES],
                         ids=[c[0] for c in WAVE_CASES])
def test_rfc3261_16_6_q_waves_parallel_within_a_q_serially_across_highest_first(bindings, max_parallel, expected):
    call = Call(World(bindings), max_parallel)
    waves = [added(call.lookup())]
    while waves[-1]:
        for ruid in waves[-1]:
            call.fail(ruid, 480)
        waves.append(added(call.all_failed(480)))

    assert waves == [*expected, []]


@pytest.mark.parametrize("status", [600, 603, 604, 606])
def test_rfc3261_16_7_a_6xx_ends_the_call_no_next_wave(status):
    call = Call(World([plain("a"), plain("b", q=0.5)]))
    call.lookup()
    call.fail("a", status)

    assert call.all_failed(status) == []


def test_rfc3261_16_6_a_wave_without_a_usable_flow_gives_way_to_the_next():
    skipped = Unusable("binding a has an unusable Path (bad); skipped")
    call = Call(World([plain("a"), plain("b", q=0.5)], targets={"a": skipped}))

    actions = call.lookup()

    assert notes(actions) == [skipped.log] and added(actions) == ["b"]
    assert call.state.q == 0.5 and call.state.tried == ["ruid:a", "ruid:b"]


def test_rfc3261_16_6_a_wave_that_cannot_be_sent_gives_way_to_the_next():
    call = Call(World([plain("a"), plain("b", q=0.5), plain("c", q=0.1)], relays=[True, False, True]))
    call.lookup()
    call.fail("a", 480)

    actions = call.all_failed(480)

    assert added(actions) == ["b", "c"] and actions.count(Relay()) == 2


def test_an_instance_without_a_usable_flow_is_not_tried_again_in_a_later_wave():
    call = Call(World([plain("a", modified=2), plain("b", modified=1), plain("c")],
                      targets={"b": Unusable("binding b has a Path that is not ours; skipped")}), max_parallel=2)
    assert added(call.lookup()) == ["a"]
    call.fail("a", 480)

    assert added(call.all_failed(480)) == ["c"]


# --- RFC 5626 §11.5: the best real answer wins over flow failures ------------------------------------

BEST_CASES = [
    # (id, each branch's end (ruid, status, reason), tm's pick, the caller's reply or None: tm's stands)
    ("486-from-another-device-beats-480", [("p1", 430, ""), ("l1", 486, "Busy Here")], 430, (486, "Busy Here")),
    ("486-before-the-430", [("l1", 486, "Busy Here"), ("p1", 430, "")], 430, (486, "Busy Here")),
    ("404-beats-our-408", [("p1", 408, ""), ("l1", 404, "Nobody Here")], 408, (404, "Nobody Here")),
    ("flow-failures-only-480", [("p1", 430, ""), ("l1", 503, "")], 430, (480, "Temporarily Unavailable")),
    ("a-5xx-ranks-after-the-480", [("p1", 430, ""), ("l1", 500, "Oops")], 430, (480, "Temporarily Unavailable")),
    ("a-best-without-reason-phrase", [("p1", 430, ""), ("l1", 486, "")], 430, (486, "Request Failed")),
    ("tm-picked-a-real-answer-it-stands", [("p1", 486, "Busy Here"), ("l1", 430, "")], 486, None),
]


@pytest.mark.parametrize(("ends", "picked", "expected"), [c[1:] for c in BEST_CASES], ids=[c[0] for c in BEST_CASES])
def test_rfc5626_11_5_the_best_real_answer_wins_over_flow_failures(ends, picked, expected):
    call = Call(World([flow("p1"), flow("l1", LAPTOP)]))
    call.lookup()
    for ruid, status, reason in ends:
        call.fail(ruid, status, reason=reason)

    assert replies(call.all_failed(picked)) == ([expected] if expected else [])


def test_rfc5626_11_5_every_flow_failed_480():
    call = Call(World([flow("p1", modified=2), flow("p2", reg_id=2, modified=1)]))
    call.lookup()
    call.fail("p1", 430)
    call.fail("p2", 408)

    actions = call.all_failed(408)

    assert actions == [Fetch(AOR), Reply(480, "Temporarily Unavailable", "tm picked 408 (ours), a flow failure",
                                              cause="all_flows_failed")]


def test_rfc3261_16_7_nothing_answered_at_all_is_408():
    """Every branch timed out without any final response (issue 13 item 7,
    checklist C3): the caller hears 408, not 480."""
    call = Call(World([flow("p1", modified=2), flow("p2", reg_id=2, modified=1)]))
    call.lookup()
    call.fail("p1", 408)
    call.fail("p2", 408)

    actions = call.all_failed(408)

    assert actions[-1] == Reply(408, "Request Timeout", "tm picked 408 (ours), a flow failure", cause="no_answer")


def test_rfc3261_16_7_a_408_the_device_sent_reaches_the_caller():
    call = Call(World([flow("p1")]))
    call.lookup()
    call.fail("p1", 408, replied=True)

    assert replies(call.all_failed(408)) == []


# --- RFC 3263 §4.3: an edge named by hostname, every address before the flow fails -----------------

EDGE = Target("sip:p1@198.51.100.7", DEAD, "<sip:t@edge.example.com;lr;ob>",
              addresses=EdgeAddresses(DEAD, (LIVE, THIRD)))
P2_DST = target_of(flow("p2")).dst_uri

EDGE_CASES = [
    # (id, status, replied, t_relay results, held down, where the new branches went, unregistered)
    ("local-408-next-address", 408, False, [], [(DEAD, "408 local")], [LIVE], []),
    ("local-503-next-address", 503, False, [], [(DEAD, "503 local")], [LIVE], []),
    ("430-is-the-edges-answer-the-flow-failed", 430, True, [], [], [P2_DST], ["p1"]),
    ("received-408-is-an-answer", 408, True, [], [], [], []),
    ("received-503-is-an-answer", 503, True, [], [], [], []),
    ("486-is-an-answer", 486, True, [], [], [], []),
    ("send-failure-at-the-next-address-the-one-after", 408, False, [False],
     [(DEAD, "408 local"), (LIVE, "transport error")], [LIVE, THIRD], []),
    ("every-address-failed-then-the-flow", 408, False, [False, False],
     [(DEAD, "408 local"), (LIVE, "transport error"), (THIRD, "transport error")], [LIVE, THIRD, P2_DST], ["p1"]),
]


@pytest.mark.parametrize(("status", "replied", "relays", "holds", "dsts", "gone"), [c[1:] for c in EDGE_CASES],
                         ids=[c[0] for c in EDGE_CASES])
def test_rfc3263_4_3_the_edges_next_address_before_the_flow_counts_as_failed(status, replied, relays, holds, dsts,
                                                                          gone):
    world = World([flow("p1", modified=2), flow("p2", reg_id=2, modified=1)], targets={"p1": EDGE})
    call = Call(world)
    call.lookup()
    world.relays = relays

    actions = call.fail("p1", status, replied=replied)

    assert held(actions) == holds
    assert [a.target.dst_uri for a in actions if isinstance(a, AddBranch)] == dsts
    assert removed(actions) == gone


def test_rfc3263_4_3_the_same_binding_goes_to_the_next_address_with_its_route():
    call = Call(World([flow("p1")], targets={"p1": EDGE}))
    call.lookup()

    actions = call.fail("p1", 408)

    assert notes(actions) == [f"edge of p1 of {AOR} unreachable at {DEAD} (408 local); trying {LIVE}"]
    [branch] = [a for a in actions if isinstance(a, AddBranch)]
    assert branch.binding.ruid == "p1" and not branch.in_ruri
    assert branch.target == Target(EDGE.ruri, LIVE, EDGE.route, addresses=EdgeAddresses(LIVE, (THIRD,)))
    assert call.state.branches[branch.slot].addresses == EdgeAddresses(LIVE, (THIRD,))
    assert [a.target.dst_uri for a in call.fail("p1", 408) if isinstance(a, AddBranch)] == [THIRD]


def test_rfc3263_4_3_the_last_address_is_held_down_and_the_flow_fails():
    call = Call(World([flow("p1", modified=2), flow("p2", reg_id=2, modified=1)],
                      targets={"p1": Target(EDGE.ruri, DEAD, EDGE.route, addresses=EdgeAddresses(DEAD))}))
    call.lookup()

    actions = call.fail("p1", 503)

    assert held(actions) == [(DEAD, "503 local")] and removed(actions) == ["p1"] and added(actions) == ["p2"]


def test_rfc3263_4_3_a_binding_removed_meanwhile_gets_no_next_address():
    world = World([flow("p1", modified=2), flow("p2", reg_id=2, modified=1)], targets={"p1": EDGE})
    call = Call(world)
    call.lookup()
    world.gone.add("p1")  # another branch's 430, a de-registration

    actions = call.fail("p1", 408)

    assert held(actions) == [(DEAD, "408 local")] and added(actions) == ["p2"]


def test_an_edge_by_address_is_not_held_down():
    call = Call(World([flow("p1", modified=2), flow("p2", reg_id=2, modified=1)]))
    call.lookup()

    actions = call.fail("p1", 408)

    assert held(actions) == [] and removed(actions) == ["p1"] and added(actions) == ["p2"]


# --- what the caller gets when nothing can be tried -----------------------------------------------

def test_no_binding_404():
    assert Call(World([])).lookup() == [Fetch(AOR),
                                        Reply(404, "Not Found", f"no binding for {AOR}", cause="no_binding")]


def test_no_binding_while_the_bindings_load_is_503_with_retry_after():
    """RFC 3261 §21.5.4: not "no such user" but "not ready": the edge tries another registrar."""
    actions = World([]).run(Fork(max_parallel=8).lookup(AOR, loading=4))
    assert actions == [Fetch(AOR), Reply(503, "Service Unavailable",
                                         f"no binding for {AOR} yet: the bindings are still loading",
                                         ("Retry-After: 4",), cause="bindings_loading")]


def test_bindings_are_forked_to_while_the_bindings_load():
    world = World([flow("p1")])
    assert added(world.run(Fork(max_parallel=8).lookup(AOR, loading=4))) == ["p1"]


def test_no_usable_flow_480():
    skip = {ruid: Unusable(f"cannot locate edge.example.com (Path of {ruid}); skipped") for ruid in ("p1", "low")}
    actions = Call(World([flow("p1"), plain("low", q=0.5)], targets=skip)).lookup()

    assert notes(actions) == [skip["p1"].log, skip["low"].log]
    assert actions[-1] == Reply(480, "Temporarily Unavailable", f"no usable flow for {AOR}", cause="no_usable_flow")
    assert Relay() not in actions and added(actions) == []


def test_rfc3261_16_9_a_send_failure_of_every_branch_480():
    actions = Call(World([flow("p1"), flow("l1", LAPTOP)], relays=[False])).lookup()

    assert sorted(added(actions)) == ["l1", "p1"]
    assert actions[-2:] == [Relay(), Reply(480, "Temporarily Unavailable", f"could not send to any binding of {AOR}",
                                               cause="all_flows_failed")]


def test_the_next_flow_that_cannot_be_sent_is_logged():
    call = Call(World([flow("p1", modified=2), flow("p2", reg_id=2, modified=1)], relays=[True, False]))
    call.lookup()

    actions = call.fail("p1", 430)

    assert actions[-2:] == [Relay(), Note("could not start the next flow p2")]


# --- RFC 5626 §7: a flow known dead is invalidated; a binding without target skipped ------------

def test_rfc5626_7_a_dead_local_flow_is_unregistered_and_the_instances_next_flow_tried():
    dead = Unusable(f"removing binding p1 of {AOR}: its flow is gone", forget=True)
    actions = Call(World([flow("p1", modified=2), flow("p2", reg_id=2, modified=1)], targets={"p1": dead})).lookup()

    assert actions[:3] == [Fetch(AOR), Locate(AOR, flow("p1", modified=2)), Unregister(AOR, "p1", dead.log)]
    assert added(actions) == ["p2"]


def test_a_binding_without_usable_target_is_skipped_and_kept():
    garbage = Unusable("binding p2 has an unusable Path (bad); skipped")
    call = Call(World([flow("p1", modified=3), flow("p2", reg_id=2, modified=2), flow("p3", reg_id=3, modified=1)],
                      targets={"p2": garbage}))
    call.lookup()

    actions = call.fail("p1", 430)

    assert removed(actions) == ["p1"] and notes(actions) == [garbage.log] and added(actions) == ["p3"]


# --- the state: one text, by slot, robust to garbage ---------------------------------------------

def test_each_branch_is_found_by_its_slot_until_its_failure_is_handled():
    record = Target("sip:p1@198.51.100.7", "sip:198.51.100.7:49152;transport=tcp", "<sip:proxy;lr>",
                    "tcp:192.0.2.10:5060", "sip:TOKEN@192.0.2.10:5060;transport=tcp")
    call = Call(World([flow("p1"), plain("pl")], targets={"p1": record}))
    actions = call.lookup()
    slots = {a.binding.ruid: a.slot for a in actions if isinstance(a, AddBranch)}

    assert call.state.branches[slots["p1"]] == Branch("p1", f"instance:{PHONE}", record.route, record.record_route,
                                                      True, None)
    assert call.state.branches[slots["pl"]] == Branch("pl", "ruid:pl", target_of(plain("pl")).route)
    call.fail("pl", 486)
    assert list(call.state.branches) == [slots["p1"]]


def test_state_text_round_trips():
    state = ForkState(aor=AOR, q=0.5, tried=[f"instance:{PHONE}", "ruid:x"], slots=7,
                      branches={3: Branch("r3", "ruid:r3", "<sip:e;lr>, <sip:f;lr>", "sip:t@h", True,
                                          EdgeAddresses(DEAD, (LIVE, THIRD))),
                                7: Branch("r7", f"instance:{LAPTOP}")},
                      best=486, best_reason="Busy \"Here\" \x1f, ünïcode")

    text = state.to_text()

    assert ForkState.from_text(text) == state
    assert "\n" not in text and text.isascii()


@pytest.mark.parametrize("text", [
    None, 42, b"{}", "", "garbage", "{", "[]", "null", "{}", '{"aor": 5}',
    '{"aor":"a","q":1.0,"tried":[],"slots":1,"branches":{"1":["r","g","","",true]},"best":null}',
    '{"aor":"a","q":1.0,"tried":[],"slots":1,"branches":{"x":["r","g","","",true,[]]},"best":null}',
    '{"aor":"a","q":"1","tried":[],"slots":1,"branches":{},"best":null}',
    '{"aor":"a","q":1.0,"tried":[3],"slots":1,"branches":{},"best":null}',
    '{"aor":"a","q":1.0,"tried":[],"slots":true,"branches":{},"best":null}',
    '{"aor":"a","q":1.0,"tried":[],"slots":1,"branches":{},"best":[486]}',
    '{"aor":"a","q":1.0,"tried":[],"slots":1,"branches":{},"best":["486","x"]}',
    "1" * 5000, "[" * 100000,
], ids=lambda text: repr(text)[:30])
def test_garbage_state_is_the_empty_state(text):
    assert ForkState.from_text(text) == ForkState()


def test_from_the_empty_state_nothing_fails_over_and_a_flow_failure_still_becomes_480():
    fork = Fork(ForkState.from_text("garbage"), max_parallel=8)
    world = World([flow("p1")])

    assert world.run(fork.branch_failed(Outcome(430, slot=1, replied=True))) == [
        Note("430 on a branch without flow state; nothing to fail over")]
    assert world.run(fork.all_failed(Outcome(430))) == [
        Reply(480, "Temporarily Unavailable", "tm picked 430, a flow failure", cause="all_flows_failed")]


def test_a_branch_that_is_not_ours_is_left_alone():
    call = Call(World([flow("p1")]))
    call.lookup()

    assert call.world.run(Fork(call.state, max_parallel=8).branch_failed(Outcome(430, slot=0))) == []


# --- the rules on final responses (RFC 5626 §7, §11.5; RFC 3261 §16.7) ------------------------------

@pytest.mark.parametrize(("status", "locally", "allowed"), [
    (430, False, True), (430, True, True), (408, True, True), (503, True, True),
    (408, False, False), (503, False, False), (486, False, False), (603, False, False), (500, False, False),
    (404, False, False), (486, True, False), (500, True, False), (200, False, False),
], ids=[
    "430-received", "430-local", "408-local-timeout", "503-local-transport-error",
    "408-received", "503-received", "486-busy", "603-decline", "500-server-error",
    "404-not-found", "486-flagged-local-still-no", "500-flagged-local-still-no", "200-ok",
])
def test_failover_allowed(status, locally, allowed):
    """RFC 5626 §7: replace the branch only after 430 or a 408/503 generated by this proxy."""
    assert failover_allowed(status, locally) is allowed


@pytest.mark.parametrize(
    ("status", "replied", "locally"),
    [(408, False, True), (503, False, True), (408, True, False), (503, True, False), (430, False, False),
     (486, False, False)],
    ids=["408-no-reply", "503-no-reply", "408-received", "503-received", "430", "486"],
)
def test_locally_generated_is_our_own_408_503_with_nothing_received(status, replied, locally):
    assert Outcome(status, replied=replied).locally_generated is locally


@pytest.mark.parametrize(
    ("status", "locally", "expected"),
    [(430, False, 480), (503, True, 480), (408, True, 408), (408, False, None), (503, False, None),
     (486, False, None), (200, False, None), (603, False, None), (404, False, None)],
    ids=["430", "our-503", "our-408-nothing-answered", "408-received", "503-received", "486", "200", "603", "404"],
)
def test_caller_status(status, locally, expected):
    """RFC 5626 §11.5: 430 is for proxies only, the caller sees 480; nothing
    answered at all is 408 (RFC 3261 §16.7, checklist C3); a device's own 408 or
    503 is its answer (issue 13 item 7)."""
    assert caller_status(status, locally, nothing_answered=True) == expected
    if (status, locally) == (408, True):
        assert caller_status(status, locally, nothing_answered=False) == 480  # a 430 came back somewhere


@pytest.mark.parametrize(
    ("statuses", "best"),
    [
        (((430, False), (486, False)), 486),
        (((486, False), (430, False)), 486),
        (((408, True), (486, False), (503, True)), 486),
        (((430, False), (408, True)), None),
        (((486, False), (404, False)), 404),  # tm's order: 404 before 486
        (((486, False), (401, False)), 401),
        (((500, False), (486, False)), 486),
        (((603, False), (486, False)), 603),
        (((302, False), (486, False)), 302),
        (((180, False), (200, False)), None),
        (((430, False), (408, False)), 408),  # a 408 the device sent is a real answer
    ],
)
def test_better_reply_keeps_the_best_real_answer(statuses, best):
    """A 430, or our own 408/503, ranks after every real answer (RFC 5626 §11.5)."""
    found = None
    for status, locally in statuses:
        found = better_reply(found, status, locally)
    assert found == best


@pytest.mark.parametrize(
    ("picked", "locally", "best_other", "sent"),
    [
        (430, False, 486, 486),
        (430, False, None, 480),
        (408, True, 486, 486),
        (408, True, None, 408),  # nothing answered at all: 408, not 480 (RFC 3261 §16.7)
        (430, False, 500, 480),  # a 5xx ranks after the 480 a flow failure becomes
        (503, True, 404, 404),
        (503, True, None, 480),
        (408, False, None, None),  # a device's own 408 stands
        (503, False, None, None),  # a device's own 503: tm sends 500
        (486, False, None, None),  # tm picked a real answer: it stands
        (404, False, 486, None),
    ],
)
def test_caller_reply_never_430_and_never_hides_a_better_answer(picked, locally, best_other, sent):
    assert caller_reply(picked, best_other, locally, nothing_answered=best_other is None and picked == 408) == sent


def test_response_rank_follows_tm():
    assert response_rank(603) < response_rank(302) < response_rank(401) < response_rank(404)
    assert response_rank(404) < response_rank(430) < response_rank(480) < response_rank(486) < response_rank(500)
