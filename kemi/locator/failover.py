"""When a failed branch may be retried on the next target (RFC 3263 §4.3).

RFC 3263 §4.3 counts as failure a 503 response, a transport error, or a
transaction timeout with no response at all (RFC 3261 §17.1.1.2 Timer B,
§17.1.2.2 Timer F); the client then sends a new request (new Via branch) to
the next element. A 503 counts whenever it comes, after a provisional too
(a proxy answers 100 Trying at once). Anything else - a received 408, 500 or
other 4xx-6xx, or a timeout after a provisional - is a real answer, never a
reason to try elsewhere (docs/compliance-dns.md B7, D12).
"""

from __future__ import annotations

from dataclasses import dataclass

# Kamailio's own status for "could not send to the next hop" (core/error.c
# E_SEND), seen when tm fails a branch locally; not a code any server sends.
LOCAL_SEND_FAILED = 477


@dataclass(frozen=True, slots=True)
class BranchOutcome:
    """How the branch that failed ended, as tm reports it in a failure route."""

    status: int  # the final status picked for the branch (408 for a local timeout)
    timed_out: bool  # tm's own timer fired (t_branch_timeout)
    replied_before: bool  # the branch had a reply before this one: a provisional (t_branch_replied)
    canceled: bool = False  # the caller sent CANCEL (t_is_canceled)


@dataclass(frozen=True, slots=True)
class Verdict:
    retry: bool
    why: str


def failover_verdict(outcome: BranchOutcome) -> Verdict:
    """Try the next target only on 503, a transport error or silence."""
    if outcome.canceled:
        return Verdict(False, "the transaction was canceled")
    if outcome.status == 503 and not outcome.timed_out:
        # any 503 counts, after a provisional too: a home proxy answers 100 at once
        return Verdict(True, "503 from the server")
    if outcome.replied_before:
        return Verdict(False, "the server had answered provisionally")
    if outcome.timed_out:
        return Verdict(True, "no response at all before the timeout")
    if outcome.status == LOCAL_SEND_FAILED:
        return Verdict(True, "transport error")
    return Verdict(False, f"{outcome.status} is a final answer")
