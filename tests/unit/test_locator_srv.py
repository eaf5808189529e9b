"""RFC 2782 ordering: priority first, then the running-sum weighted draw."""

import random
from collections import Counter

from locator.records import Srv
from locator.srv import rfc2782_order, service_unavailable, usable, weighted_order

DRAWS = 10_000


def first_counts(records: list[Srv], seed: int = 2782) -> Counter:
    rng = random.Random(seed)
    return Counter(weighted_order(records, rng)[0].target for _ in range(DRAWS))


def test_weights_90_10_over_10000_seeded_draws():
    """The documented draw (shuffle, weight 0 first, integer r in [0, total]) puts
    the weight-90 record first with probability (91/101 + 90/101) / 2 = 0.896
    (the record placed first by the shuffle also wins r == its running sum).
    Tolerance: +-0.01, over three standard deviations (0.003) of 10,000 draws."""
    counts = first_counts([Srv(10, 90, 5060, "big"), Srv(10, 10, 5060, "small")])

    expected = (91 / 101 + 90 / 101) / 2
    assert abs(counts["big"] / DRAWS - expected) < 0.01
    assert abs(counts["small"] / DRAWS - (1 - expected)) < 0.01


def test_rfc2782_example_three_to_one_in_priority_0_and_priority_1_after():
    """RFC 2782 "Usage rules" example: old-slow-box (weight 1) and new-fast-box
    (weight 3) share priority 0; sysadmins-box and server (weight 0) have
    priority 1 and come after both, whatever the draw."""
    records = [
        Srv(0, 1, 9, "old-slow-box.example.com"),
        Srv(0, 3, 9, "new-fast-box.example.com"),
        Srv(1, 0, 9, "sysadmins-box.example.com"),
        Srv(1, 0, 9, "server.example.com"),
    ]
    rng = random.Random(7)
    firsts = Counter()
    for _ in range(DRAWS):
        order = rfc2782_order(records, rng)
        assert {r.priority for r in order[:2]} == {0} and {r.priority for r in order[2:]} == {1}
        firsts[order[0].target] += 1
    # shuffle + integer draw: (3/5 + 4/5) / 2 = 0.7 for the weight-3 box (nominal 0.75)
    assert abs(firsts["new-fast-box.example.com"] / DRAWS - 0.7) < 0.015


def test_weight_zero_is_chosen_last_but_possible():
    """RFC 2782: weight-0 records sit first in the list, so r == 0 picks them:
    probability 1/(total + 1) = 1/11 here; most of the time they come last."""
    counts = first_counts([Srv(10, 0, 5060, "zero"), Srv(10, 10, 5060, "ten")])

    assert counts["zero"] > 0, "weight 0 must remain possible"
    assert abs(counts["zero"] / DRAWS - 1 / 11) < 0.01


def test_all_weights_zero_spread_evenly():
    counts = first_counts([Srv(1, 0, 5060, name) for name in ("a", "b", "c")])

    for name in "abc":
        assert abs(counts[name] / DRAWS - 1 / 3) < 0.02


def test_lowest_priority_first_whatever_the_weights():
    records = [Srv(20, 1000, 5060, "late"), Srv(10, 0, 5060, "early"), Srv(15, 1, 5060, "middle")]
    rng = random.Random(1)

    for _ in range(200):
        assert [r.target for r in rfc2782_order(records, rng)] == ["early", "middle", "late"]


def test_every_record_appears_exactly_once():
    records = [Srv(p, w, 5060, f"h{p}-{w}") for p in (1, 2) for w in (0, 5, 50)]
    order = rfc2782_order(records, random.Random(3))

    assert sorted(order, key=lambda r: r.target) == sorted(records, key=lambda r: r.target)


def test_same_seed_same_order():
    records = [Srv(1, w, 5060, f"h{w}") for w in (1, 2, 3, 4, 5)]

    assert rfc2782_order(records, random.Random(42)) == rfc2782_order(records, random.Random(42))


def test_lone_dot_target_means_not_available():
    assert service_unavailable([Srv(0, 0, 0, ".")])
    assert not service_unavailable([Srv(0, 0, 0, "."), Srv(10, 0, 5060, "sip.example.com")])
    assert usable([Srv(0, 0, 0, "."), Srv(10, 0, 5060, "sip.example.com")]) == [Srv(10, 0, 5060, "sip.example.com")]


class EdgeDraws(random.Random):
    """A generator that keeps records in place and always draws the highest
    number it is asked for: with [0, sum) that would be sum - 1, with RFC
    2782's [0, sum] it is sum itself."""

    def __init__(self) -> None:
        super().__init__(0)
        self.asked: list[tuple[int, int]] = []

    def shuffle(self, x) -> None:  # noqa: ANN001 - random.Random's signature
        return None

    def randint(self, a: int, b: int) -> int:
        self.asked.append((a, b))
        return b


def test_the_draw_is_from_zero_to_the_sum_inclusive():
    """RFC 2782 (compliance-dns B9): r uniform in [0, sum] *inclusive*. Drawing
    the sum itself picks the record whose running sum reaches it: the last
    one; an exclusive range ([0, sum)) would never draw it, and a draw of
    sum - 1 would pick the first record here (running sums 10, 11)."""
    rng = EdgeDraws()
    first, last = Srv(0, 10, 5060, "a.example."), Srv(0, 1, 5060, "b.example.")

    order = weighted_order([first, last], rng)

    assert rng.asked[0] == (0, 11)
    assert order == [last, first]
