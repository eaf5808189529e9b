"""Bounded per-process memos (outbound.memo)."""

from outbound.memo import remember


def test_a_full_memo_is_emptied_before_it_keeps_more():
    memo: dict[str, int] = {}
    for index in range(5):
        remember(memo, f"k{index}", index, limit=3)
        assert len(memo) <= 3
    assert memo == {"k3": 3, "k4": 4}
