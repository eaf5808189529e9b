"""The home proxy's fork and failover transaction (RFC 5626 §7, RFC 3261 §16.6-16.7, RFC 3263 §4.3), sans-I/O.

A request toward a registered AOR is one fork transaction. tm gives the home
proxy three moments, and each is one call of :class:`Fork`:

* ``lookup(aor)`` (request route): the AOR's bindings; none: 404. A request
  to a GRUU (``only``, RFC 5627 §6.1) keeps its instance's live bindings
  alone (``gruu.instance_flows``; none: 480, or 404 for a GRUU never given
  out) and the whole transaction stays with that instance. They are
  planned into waves (``bindings.plan_forks``: instances by q, highest first,
  parallel within a q, at most ``max_parallel`` per wave, one flow per
  instance, its most recent flow first). The first wave with a usable flow
  becomes the branches (the first one in the Request-URI); no wave has one:
  480. They are relayed; when not one can be sent: 480.
* ``branch_failed(outcome)`` (tm branch-failure route, once per failed
  branch): nothing after a CANCEL. The best real final answer is remembered
  (:func:`better_reply`). Only a 430, or a 408/503 this proxy generated
  itself (no reply at all: a timeout, a transport error), lets the branch be
  replaced (:func:`failover_allowed`); any other final answer ends that
  instance. A branch toward an edge named in Path by hostname first goes to
  that edge's next address (only on our own 408/503, never on a 430), and
  the address that failed is held down. After that, a binding that is no
  outbound flow is kept; an outbound flow is unregistered and the instance's
  next usable flow becomes a new branch, while the other branches ring on.
* ``all_failed(outcome)`` (tm failure route, every branch done): after a
  CANCEL, a flow failure becomes 487. Otherwise, unless a 6xx ended the call,
  the next wave (a lower q, or same-q instances that spilled over; never an
  instance tried already). When no wave can be started, the caller gets
  tm's pick, unless it is a flow failure (430, our own 408/503): then the best
  real answer of another branch that ranks before 5xx (486 from another
  device beats 480), else 480, or 408 when nothing answered at all
  (:func:`caller_reply`; a 430 never reaches the caller, RFC 5626 §11.5).
  A 408 or 503 a device really sent is its answer, not a flow failure.

Each call is a generator of actions. Most are orders the adapter carries out
(:class:`AddBranch`, :class:`Unregister`, :class:`HoldDown`, :class:`Note`,
``decisions.Reply``); four are questions it answers through ``send()``:
:class:`Fetch` (the AOR's bindings now), :class:`Recall` (was a public GRUU
given out), :class:`Locate` (the binding's
``Target``, or ``Unusable``: a garbage Path, an unresolvable edge hostname, a
dead local flow, which is unregistered too) and :class:`Relay` (did t_relay
send anything; when not, the core moves on: the edge's next address, the next
wave, or 480). Log lines are in the actions, as text.

What outlives a call is :class:`ForkState`: the AOR, the instance of a
GRUU, the q of the current wave, the instances tried, the slot counter, each live branch (binding,
Route, Record-Route, the edge's addresses) and the best answer so far. Its
text form (:meth:`ForkState.to_text`, one line of JSON) is kept in one xavp,
which tm keeps with the transaction, so that the failure routes see it in
whichever process they run. Unreadable text is the empty state: no failover,
tm's answer (a flow failure still becomes 480). A branch finds its entry by
its slot number, which travels in the branch flags.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import gruu
from .bindings import DEFAULT_Q, Binding, EdgeAddresses, InstanceQueue, Target, Unusable, other_flows, plan_forks
from .decisions import Reply

# ----- what tm reports -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a branch ended (branch-failure route), or the transaction (failure
    route: ``status`` is tm's pick), as tm reports it."""

    status: int  # $T_reply_code: a received final status, or tm's own 408/503
    slot: int = 0  # the branch's slot (its branch flags); 0: not a branch of ours
    replied: bool = False  # the branch had received a reply (t_branch_replied)
    canceled: bool = False  # the caller sent CANCEL (t_is_canceled)
    reason: str = ""  # the reason phrase of a received reply

    @property
    def locally_generated(self) -> bool:
        """A 408 or 503 of our own: nothing at all came back on the branch (a
        timeout or a transport error, RFC 3261 §16.8-16.9)."""
        return not self.replied and self.status in (408, 503)


# ----- what the core asks for ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fetch:
    """Question: the AOR's bindings as usrloc has them now; the answer is a
    sequence of ``Binding``."""

    aor: str


@dataclass(frozen=True, slots=True)
class Recall:
    """Question: did this registrar give out the public GRUU of ``instance``
    of ``aor`` (RFC 5627 §6.1: then 480 while it is away, else 404); the answer
    is a bool."""

    aor: str
    instance: str


@dataclass(frozen=True, slots=True)
class Locate:
    """Question: where ``binding`` of ``aor`` goes now; the answer is a
    ``Target``, or ``Unusable`` (then the core moves on to the next flow)."""

    aor: str
    binding: Binding


@dataclass(frozen=True, slots=True)
class Relay:
    """Question: relay the branches added since the last Relay (tm, with our
    branch and failure routes armed); the answer is True when anything was
    sent, False when nothing could be (a transport error of our own)."""


@dataclass(frozen=True, slots=True)
class AddBranch:
    """A branch to ``target``, numbered ``slot`` (it travels in the branch
    flags); ``in_ruri``: the request's own branch (the first of the request
    route), else an appended one."""

    slot: int
    binding: Binding
    target: Target
    in_ruri: bool = False


@dataclass(frozen=True, slots=True)
class Unregister:
    """Remove a binding from usrloc (a flow that failed or is known dead,
    RFC 5626 §7); ``log`` is the line saying why; ``failover``: the flow failed
    under a call and the instance's next flow is tried (its reason code for
    outbound.metrics.FLOW_FAILOVERS: ``430``, ``408_local``, ``503_local``)."""

    aor: str
    ruid: str
    log: str
    failover: str = ""


@dataclass(frozen=True, slots=True)
class HoldDown:
    """``address`` (a ``$du`` URI) did not answer: later transactions try it
    last for a while (locator.health, RFC 3261 §21.5.4)."""

    address: str
    why: str


@dataclass(frozen=True, slots=True)
class Note:
    """A line for the log (notice level)."""

    log: str


Action = Fetch | Recall | Locate | Relay | AddBranch | Unregister | HoldDown | Note | Reply
Steps = Generator[Action, Any, None]


# ----- what lasts between tm's routes ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Branch:
    """What a failure route needs to know about one live branch."""

    ruid: str
    group: str
    route: str = ""
    record_route: str = ""
    outbound: bool = False
    addresses: EdgeAddresses | None = None  # an edge named by hostname: the address tried and the rest
    path: str = ""  # the binding's Path when the branch started: which flow it is


@dataclass(slots=True)
class ForkState:
    """Everything a fork transaction remembers (see the module docstring)."""

    aor: str = ""
    instance: str = ""  # a request to a GRUU: this instance only (RFC 5627 §6.1)
    q: float = DEFAULT_Q  # of the wave started last
    tried: list[str] = field(default_factory=list)  # instance groups already given a wave
    slots: int = 0  # the last slot number handed out
    branches: dict[int, Branch] = field(default_factory=dict)  # by slot, until its failure is handled
    best: int | None = None  # the best real final answer of any branch (better_reply)
    best_reason: str = ""
    received: list[int] = field(default_factory=list)  # 408/503 that a branch really received
    answered: bool = False  # some branch received a final response (a 430 too)

    def to_text(self) -> str:
        """One line of JSON (ASCII); :meth:`from_text` reads it back."""
        return json.dumps({
            "aor": self.aor,
            "instance": self.instance,
            "q": self.q,
            "tried": self.tried,
            "slots": self.slots,
            "branches": {str(slot): [b.ruid, b.group, b.route, b.record_route, b.outbound,
                                     list(b.addresses.all) if b.addresses else [], b.path]
                         for slot, b in self.branches.items()},
            "best": None if self.best is None else [self.best, self.best_reason],
            "received": self.received,
            "answered": self.answered,
        }, separators=(",", ":"))

    @classmethod
    def from_text(cls, text: object) -> ForkState:
        """The state :meth:`to_text` wrote; anything else (nothing, truncated,
        garbage, a field of the wrong type) is the empty state."""
        if not isinstance(text, str) or not text:
            return cls()
        try:
            return cls._read(json.loads(text))
        except (ValueError, TypeError, KeyError, RecursionError):
            return cls()

    @classmethod
    def _read(cls, data: object) -> ForkState:
        fields = _typed(data, dict)
        branches = {}
        for slot, item in _typed(fields["branches"], dict).items():
            ruid, group, route, record_route, outbound, addresses, path = _typed(item, list)
            branches[int(slot)] = Branch(
                _typed(ruid, str), _typed(group, str), _typed(route, str), _typed(record_route, str),
                _typed(outbound, bool), EdgeAddresses.of([_typed(a, str) for a in _typed(addresses, list)]),
                _typed(path, str))
        best = fields["best"]
        code, reason = (None, "") if best is None else _typed(best, list)
        return cls(
            aor=_typed(fields["aor"], str),
            instance=_typed(fields.get("instance", ""), str),
            q=float(_typed(fields["q"], int | float)),
            tried=[_typed(group, str) for group in _typed(fields["tried"], list)],
            slots=_typed(fields["slots"], int),
            branches=branches,
            best=None if code is None else _typed(code, int),
            best_reason=_typed(reason, str),
            received=[_typed(code, int) for code in _typed(fields.get("received", []), list)],
            answered=_typed(fields.get("answered", False), bool),
        )


def _typed(value: Any, kind: Any) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise TypeError(f"expected {kind}, got {type(value).__name__}")
    return value


# ----- the transaction ----------------------------------------------------------------


class Fork:
    """One fork transaction: ``state`` (saved between tm's routes) and the
    three events. Each event is a generator: see the module docstring."""

    def __init__(self, state: ForkState | None = None, *, max_parallel: int) -> None:
        self.state = state if state is not None else ForkState()
        self.max_parallel = max_parallel

    def lookup(self, aor: str, *, only: gruu.GruuTarget | None = None, now: int = 0, loading: int = 0) -> Steps:
        """Request route: fork to the first wave that has a usable flow (RFC 5626 §7,
        RFC 3261 §16.6); a GRUU (``only``) to its instance alone, one flow at a
        time (RFC 5627 §6.1). ``now`` (Unix time) tells a GRUU's live bindings.
        ``loading``: seconds this registrar may still be loading its bindings
        (usrloc's table at start, a pair peer's sync; 0: none); an AOR without
        bindings meanwhile is 503 with Retry-After (RFC 3261 §21.5.4), so that
        an edge tries another registrar (RFC 3263 §4.3) instead of the caller
        hearing a 404 that may not be true."""
        bindings = yield Fetch(aor)
        if only is not None:
            chosen = gruu.instance_flows(only, list(bindings), now)
            if chosen is None:
                chosen = gruu.unknown_instance(only, bool((yield Recall(only.aor, only.instance))))
            if isinstance(chosen, Reply):
                yield chosen
                return
            bindings = chosen
            self.state.instance = only.instance
        elif not bindings and loading > 0:
            yield Reply(503, "Service Unavailable", f"no binding for {aor} yet: the bindings are still loading",
                        (f"Retry-After: {loading}",), cause="bindings_loading")
            return
        elif not bindings:
            yield Reply(404, "Not Found", f"no binding for {aor}", cause="no_binding")
            return
        self.state.aor = aor
        for wave in plan_forks(list(bindings), max_parallel=self.max_parallel).waves:
            if (yield from self._start_wave(wave, in_request=True)):
                break
        else:
            yield Reply(480, "Temporarily Unavailable", f"no usable flow for {aor}", cause="no_usable_flow")
            return
        if not (yield Relay()):
            # every branch failed at once (a TCP contact refusing the connection): a
            # transport error is a 503 of our own (RFC 3261 §16.9), which the caller
            # sees as 480 like any flow failure (RFC 5626 §11.5)
            yield Reply(480, "Temporarily Unavailable", f"could not send to any binding of {aor}",
                        cause="all_flows_failed")

    def branch_failed(self, outcome: Outcome) -> Steps:
        """Branch-failure route: on 430 or our own 408/503, the same binding at
        the edge's next address, else the instance's next flow (RFC 5626 §7,
        §9.3); any other final answer leaves the instance alone."""
        if outcome.canceled:
            return  # the caller gave up: no new branches
        self._remember(outcome)
        branch = self.state.branches.pop(outcome.slot, None)
        status, locally = outcome.status, outcome.locally_generated
        if not outcome.slot or not failover_allowed(status, locally):
            return
        aor = self.state.aor
        if not aor or branch is None or not branch.ruid:
            yield Note(f"{status} on a branch without flow state; nothing to fail over")
            return
        if (yield from self._next_address(branch, outcome)):
            return
        if not branch.outbound:
            # 430 is an edge's word about a flow (RFC 5626 §11.5); a plain binding has none
            yield Note(f"{status} from {branch.ruid} of {aor}, which is no outbound flow: binding kept")
            return
        bindings = list((yield Fetch(aor)))
        now = next((b for b in bindings if b.ruid == branch.ruid), None)
        candidates = other_flows(bindings, branch.group, branch.ruid)
        if now is not None and now.path != branch.path:
            # the device registered this reg-id again, over a new flow, while the
            # branch was out (usrloc updated the binding in place): only the flow
            # that failed goes (§7), the new one is the instance's first to try
            yield Note(f"{status} from {branch.ruid} of {aor}, registered again over another flow since: "
                       "binding kept")
            candidates = (now, *candidates)
        else:
            yield Unregister(aor, branch.ruid, f"flow {branch.ruid} of {aor} failed with {status}"
                                               f"{' (local)' if locally else ''}; removing it",
                             failover=f"{status}{'_local' if locally else ''}")
        found = yield from self._first_usable(candidates)
        if found is None:
            yield Note(f"no flow left for {branch.group} of {aor}")
            return
        yield self._branch(*found)
        if not (yield Relay()):
            yield Note(f"could not start the next flow {found[0].ruid}")

    def all_failed(self, outcome: Outcome) -> Steps:
        """Failure route: the next q-wave unless a 6xx or a CANCEL ended the call
        (RFC 3261 §16.6-16.7); a flow failure never reaches the caller (RFC 5626 §11.5)."""
        status = outcome.status
        locally = self.picked_locally(status)
        if outcome.canceled:
            if is_flow_failure(status, locally):
                yield Reply(487, "Request Terminated", f"canceled; {status} is a flow failure", cause="canceled")
            return
        aor = self.state.aor
        if aor and not 600 <= status < 700:
            bindings = yield Fetch(aor)
            plan = plan_forks(list(bindings), max_parallel=self.max_parallel, max_q=self.state.q,
                              skip_groups=frozenset(self.state.tried), instance=self.state.instance or None)
            for wave in plan.waves:
                if (yield from self._start_wave(wave, in_request=False)) and (yield Relay()):
                    return
        best = self.state.best
        sent = caller_reply(status, best, locally, not self.state.answered)
        if sent is not None:
            reason = self.state.best_reason if sent == best else ""
            yield Reply(sent, reason or FAILURE_REASONS.get(sent, "Request Failed"),
                        f"tm picked {status}{' (ours)' if locally else ''}, a flow failure",
                        cause=final_cause(sent, best))

    # ----- the steps ------------------------------------------------------------

    def _start_wave(self, wave: tuple[InstanceQueue, ...], *, in_request: bool) -> Generator[Action, Any, int]:
        """One branch per instance of ``wave``, to its first usable flow; how many."""
        self.state.q = wave[0].q
        started = 0
        for queue in wave:
            found = yield from self._first_usable(queue.flows)
            if queue.group not in self.state.tried:
                self.state.tried.append(queue.group)
            if found is not None:
                yield self._branch(*found, in_ruri=in_request and not started)
                started += 1
        return started

    def _first_usable(self, flows: Sequence[Binding]) -> Generator[Action, Any, tuple[Binding, Target] | None]:
        """The first of an instance's ``flows`` that has a target; a flow known
        dead is unregistered on the way (RFC 5626 §7), one with no usable target skipped."""
        for binding in flows:
            found = yield Locate(self.state.aor, binding)
            if isinstance(found, Target):
                return binding, found
            unusable: Unusable = found
            if unusable.forget:
                yield Unregister(self.state.aor, binding.ruid, unusable.log)
            else:
                yield Note(unusable.log)
        return None

    def _next_address(self, branch: Branch, outcome: Outcome) -> Generator[Action, Any, bool]:
        """The edge named in the binding's Path could not be reached at this
        address (our own 408/503): hold the address down and send the same
        binding to the edge's next one (RFC 3263 §4.3), again while sending
        fails. True when a new branch went out; False: the flow has failed."""
        addresses = branch.addresses
        if addresses is None or not outcome.locally_generated:
            return False
        status = outcome.status
        yield HoldDown(addresses.current, f"{status} local")
        following = addresses.after_failure(status, True)
        if following is None:
            return False
        aor = self.state.aor
        bindings = yield Fetch(aor)
        binding = next((b for b in bindings if b.ruid == branch.ruid), None)
        if binding is None:
            return False  # removed meanwhile (another branch's 430, a de-registration)
        while following is not None:
            yield Note(f"edge of {branch.ruid} of {aor} unreachable at {addresses.current} ({status} local); "
                       f"trying {following.current}")
            yield self._branch(binding, Target(binding.contact, following.current, branch.route,
                                               record_route=branch.record_route, addresses=following))
            if (yield Relay()):
                return True
            # could not even send there: a transport error of our own, on to the next address
            yield HoldDown(following.current, "transport error")
            addresses, status = following, 503
            following = addresses.after_failure(status, True)
        return False

    def _branch(self, binding: Binding, target: Target, *, in_ruri: bool = False) -> AddBranch:
        self.state.slots += 1
        slot = self.state.slots
        self.state.branches[slot] = Branch(binding.ruid, binding.group, target.route, target.record_route,
                                           binding.outbound, target.addresses, binding.path)
        return AddBranch(slot, binding, target, in_ruri)

    def picked_locally(self, status: int) -> bool:
        """Failure route: tm's pick is a 408/503 of our own, unless some branch
        really received that status (tm reports no branch with its pick)."""
        return status in (408, 503) and status not in self.state.received

    def _remember(self, outcome: Outcome) -> None:
        if not outcome.locally_generated and outcome.status >= 300:
            self.state.answered = True
            if outcome.status in (408, 503) and outcome.status not in self.state.received:
                self.state.received.append(outcome.status)
        kept = better_reply(self.state.best, outcome.status, outcome.locally_generated)
        if kept is not None and kept != self.state.best:
            self.state.best, self.state.best_reason = kept, outcome.reason


# ----- the rules on final responses ------------------------------------------------------

FAILURE_REASONS = {480: "Temporarily Unavailable", 408: "Request Timeout"}


def failover_allowed(status: int, locally_generated: bool) -> bool:
    """RFC 5626 §7: replace a branch only after 430, or a 408/503 we generated
    ourselves (timeout with no reply, transport error; RFC 3261 §16.8-16.9).
    Any other final response ends that instance."""
    if status == 430:
        return True
    return locally_generated and status in (408, 503)


def caller_status(status: int, locally_generated: bool, nothing_answered: bool = False) -> int | None:
    """What the caller sees instead of a failure of ours (None: the status stands).

    * our own 408 when no branch received any final response at all is 408
      (RFC 3261 §16.7 step 6, §16.8): the caller hears the truth, not 480;
    * otherwise 430 (for proxies only, RFC 5626 §11.5) and our own 408/503
      (the flows that could not be reached) mean the device cannot be reached: 480;
    * a 408 or 503 a device really sent is its answer (tm turns a 503 into 500
      on its way up, RFC 3261 §16.7)."""
    if locally_generated and status == 408 and nothing_answered:
        return 408
    if is_flow_failure(status, locally_generated):
        return 480
    return None


def is_flow_failure(status: int, locally_generated: bool) -> bool:
    """A 430, or our own 408/503: ranks after every real answer (RFC 5626 §11.5)."""
    return status == 430 or (locally_generated and status in (408, 503))


def response_rank(status: int) -> int:
    """How tm ranks a final response when it picks the one for the caller (lower
    wins, RFC 3261 §16.7 step 6): 6xx, then 3xx, then 4xx (401, 407, 415, 420,
    484 first), then 5xx. Mirrors tm's get_prio (t_reply.c, 5.6)."""
    kind, xx = divmod(status, 100)
    base = {6: 1000, 3: 3000, 4: 4000, 5: 5000}.get(kind)
    if base is None:
        return 10000 + status
    if kind == 4 and xx not in (1, 7, 15, 20, 84):
        xx += 100
    return base + xx


def better_reply(best: int | None, status: int, locally_generated: bool = False) -> int | None:
    """The best final response so far that is not a flow failure (a 430, or our
    own 408/503, ranks after every real answer: RFC 5626 §11.5)."""
    if is_flow_failure(status, locally_generated) or not 300 <= status < 700:
        return best
    if best is None or response_rank(status) < response_rank(best):
        return status
    return best


def caller_reply(picked: int, best_other: int | None, locally_generated: bool = False,
                 nothing_answered: bool = False) -> int | None:
    """What the caller gets instead of tm's pick when that pick is a flow failure:
    the best real answer of another branch unless its class ranks after 4xx (a
    5xx), e.g. 486 Busy from another device; else caller_status (480, or 408
    when nothing answered at all; RFC 5626 §11.5: 430 ranks last). None: tm's
    pick stands."""
    if not is_flow_failure(picked, locally_generated):
        return None
    mapped = caller_status(picked, locally_generated, nothing_answered)
    if mapped is None:
        return None
    if best_other is not None and response_rank(best_other) < response_rank(500):
        return best_other
    return mapped


def final_cause(sent: int, best: int) -> str:
    """The reason code of the caller's final answer after failures: 480 of ours
    (every flow failed, RFC 5626 §11.5), 408 (nothing answered at all), or the
    best real answer passed on (RFC 3261 §16.7)."""
    if sent == 480 and sent != best:
        return "all_flows_failed"
    if sent == 408:
        return "no_answer"
    return "best_answer"
