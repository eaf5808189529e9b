"""RFC 3263 §4.3: which failed branches are retried on the next target."""

import pytest

from locator.failover import BranchOutcome, failover_verdict


@pytest.mark.parametrize(
    ("outcome", "why"),
    [
        (BranchOutcome(408, timed_out=True, replied_before=False), "no response at all"),
        (BranchOutcome(503, timed_out=False, replied_before=False), "503"),
        (BranchOutcome(477, timed_out=False, replied_before=False), "transport error"),
        (BranchOutcome(503, timed_out=False, replied_before=True), "503"),  # 100 Trying, then 503
    ],
    ids=["silence", "503", "send-failed", "provisional-then-503"],
)
def test_failures_that_move_to_the_next_target(outcome, why):
    verdict = failover_verdict(outcome)

    assert verdict.retry and why in verdict.why


@pytest.mark.parametrize(
    "outcome",
    [
        BranchOutcome(408, timed_out=False, replied_before=False),  # a 408 received from the server
        BranchOutcome(500, timed_out=False, replied_before=False),
        BranchOutcome(486, timed_out=False, replied_before=False),
        BranchOutcome(404, timed_out=False, replied_before=False),
        BranchOutcome(603, timed_out=False, replied_before=False),
        BranchOutcome(408, timed_out=True, replied_before=True),  # 100 Trying, then silence
        BranchOutcome(503, timed_out=False, replied_before=False, canceled=True),
        BranchOutcome(408, timed_out=True, replied_before=False, canceled=True),
    ],
    ids=["408-received", "500", "486", "404", "603", "provisional-then-timeout",
         "canceled-503", "canceled-timeout"],
)
def test_real_answers_never_move_to_the_next_target(outcome):
    assert not failover_verdict(outcome).retry
