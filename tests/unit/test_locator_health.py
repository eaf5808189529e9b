"""Hold-downs across transactions (RFC 3261 §21.5.4, RFC 3263 §4.3): locator.health."""

import random

import pytest

from locator.health import HoldPolicy, TargetHealth, key_of, key_of_uri, retry_after_seconds
from locator.plan import Policy, Target, plan
from locator.records import RType
from locator_zone import Zone, a, srv

POLICY = HoldPolicy(default_seconds=30, max_seconds=300, max_entries=4)

# a farm of four by SRV: priority 10 has two weighted targets, then 20, then 30
FARM = {
    "farm.example": {},  # no NAPTR: SRV next
    "_sip._udp.farm.example": {RType.SRV: [
        srv(10, 60, 5070, "a.example"), srv(10, 40, 5070, "b.example"),
        srv(20, 0, 5070, "c.example"), srv(30, 0, 5070, "d.example"),
    ]},
    "a.example": {RType.A: a("192.0.2.1")},
    "b.example": {RType.A: a("192.0.2.2")},
    "c.example": {RType.A: a("192.0.2.3")},
    "d.example": {RType.A: a("192.0.2.4")},
}


def key(t: Target):
    return key_of(t.transport, t.address, t.port)


def farm_targets(seed: int) -> list[Target]:
    return list(plan("sip:farm.example", Zone(FARM), random.Random(seed), Policy(("udp",), ("ipv4",), 8)).targets)


def addresses(targets):
    return [t.address for t in targets]


@pytest.mark.parametrize(("value", "seconds"), [
    ("60", 60), (" 120 ", 120), ("18000;duration=3600", 18000), ("120 (I'm in a meeting)", 120),
    ("0", 0), ("", None), ("soon", None), ("-5", None), ("12abc", None), (None, None),
])
def test_retry_after_delta_seconds_is_read_per_rfc3261_20_33(value, seconds):
    assert retry_after_seconds(value) == seconds


def test_503_retry_after_is_honoured_and_capped_by_the_maximum():
    health = TargetHealth(POLICY)
    target = ("udp", "192.0.2.1", 5070)

    assert health.fail(target, now=1000.0, retry_after=60) == 60
    assert health.is_held(target, 1059.9) and not health.is_held(target, 1060.0)

    assert health.fail(target, now=2000.0, retry_after=86400) == 300, "capped by max_seconds"
    assert health.is_held(target, 2299.0) and not health.is_held(target, 2300.0)


def test_failure_without_retry_after_holds_for_the_default():
    health = TargetHealth(POLICY)
    target = ("tcp", "192.0.2.9", 5060)

    assert health.fail(target, now=10.0) == 30
    assert health.remaining(target, 25.0) == 15.0
    assert not health.is_held(target, 40.0)


def test_zero_maximum_or_zero_retry_after_remembers_nothing():
    target = ("udp", "192.0.2.1", 5070)
    off = TargetHealth(HoldPolicy(default_seconds=0, max_seconds=0, max_entries=4))
    assert off.fail(target, 0.0, retry_after=60) == 0 and not off.is_held(target, 1.0)

    health = TargetHealth(POLICY)
    health.fail(target, 0.0)
    assert health.fail(target, 5.0, retry_after=0) == 0, "the server says: try again at once"
    assert not health.is_held(target, 5.0)


def test_hold_down_expires_and_the_planned_order_comes_back():
    targets = farm_targets(seed=1)
    health = TargetHealth(POLICY)
    first = targets[0]
    health.fail(key(first), now=100.0, retry_after=20)

    assert health.order(targets, 119.0, key)[-1] == first
    assert health.order(targets, 120.0, key) == targets
    health.prune(120.0)
    assert health.held == {}


@pytest.mark.parametrize("seed", range(20))
def test_healthy_targets_keep_the_rfc2782_order_held_ones_go_last_in_plan_order(seed):
    targets = farm_targets(seed)
    health = TargetHealth(POLICY)
    down = [targets[0], targets[2]]
    for target in down:
        health.fail(key(target), now=0.0)

    ordered = health.order(targets, 1.0, key)

    assert ordered == [t for t in targets if t not in down] + down
    assert sorted(addresses(ordered)) == sorted(addresses(targets)), "nothing removed"


def test_priority_order_is_kept_among_healthy_targets():
    """RFC 2782: priority 10 before 20 before 30 whatever is held down."""
    for seed in range(50):
        targets = farm_targets(seed)
        health = TargetHealth(POLICY)
        health.fail(("udp", "192.0.2.1", 5070), 0.0, retry_after=60)
        ordered = addresses(health.order(targets, 1.0, key))
        assert ordered[-1] == "192.0.2.1"
        assert ordered[:3] == [x for x in addresses(targets) if x != "192.0.2.1"]
        assert ordered.index("192.0.2.3") < ordered.index("192.0.2.4")


def test_when_every_target_is_held_down_they_are_all_tried_in_plan_order():
    targets = farm_targets(seed=7)
    health = TargetHealth(HoldPolicy(30, 300, 16))
    for offset, target in enumerate(reversed(targets)):
        health.fail(key(target), now=float(offset), retry_after=100 + offset)

    assert health.order(targets, 10.0, key) == targets


def test_a_success_clears_the_hold_down():
    targets = farm_targets(seed=3)
    health = TargetHealth(POLICY)
    health.fail(key(targets[0]), now=0.0, retry_after=60)

    assert health.succeed(key(targets[0])) is True
    assert health.order(targets, 1.0, key) == targets
    assert health.succeed(key(targets[0])) is False


def test_memory_is_bounded_keeping_the_longest_hold_downs():
    health = TargetHealth(HoldPolicy(30, 300, 3))
    for n in range(6):
        health.fail(("udp", f"192.0.2.{n}", 5060), now=0.0, retry_after=10 * (n + 1))

    assert sorted(health.held) == [("udp", f"192.0.2.{n}", 5060) for n in (3, 4, 5)]


def test_expired_entries_leave_before_live_ones_when_full():
    health = TargetHealth(HoldPolicy(30, 300, 2))
    health.fail(("udp", "192.0.2.1", 5060), now=0.0, retry_after=5)
    health.fail(("udp", "192.0.2.2", 5060), now=0.0, retry_after=100)
    health.fail(("udp", "192.0.2.3", 5060), now=10.0, retry_after=20)

    assert sorted(health.held) == [("udp", "192.0.2.2", 5060), ("udp", "192.0.2.3", 5060)]


def test_text_form_round_trips_and_ignores_garbage():
    health = TargetHealth(POLICY)
    health.fail(("udp", "192.0.2.1", 5070), now=1.5, retry_after=60)
    health.fail(("tcp", "2001:db8::1", 5060), now=2.0)

    again = TargetHealth.from_text(POLICY, health.to_text() + " junk udp/1.2.3.4/x/5 a/b/c")

    assert again.held == health.held
    assert TargetHealth.from_text(POLICY, None).held == {}
    assert TargetHealth.from_text(POLICY, "").held == {}


@pytest.mark.parametrize(("uri", "expected"), [
    ("sip:192.0.2.1:5070;transport=udp", ("udp", "192.0.2.1", 5070)),
    ("sip:[2001:db8::0001]:5070;transport=TCP", ("tcp", "2001:db8::1", 5070)),
    ("sip:192.0.2.1", ("udp", "192.0.2.1", 5060)),
    ("sips:192.0.2.1", ("tls", "192.0.2.1", 5061)),
    ("not a uri", None),
])
def test_key_of_a_du_uri(uri, expected):
    assert key_of_uri(uri) == expected


def test_du_uri_of_a_planned_target_gives_the_same_key():
    for target in farm_targets(seed=0):
        assert key_of_uri(target.uri) == key(target)
