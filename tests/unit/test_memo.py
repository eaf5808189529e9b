"""Bounded per-process memos (outbound.memo)."""

import pytest

from outbound.memo import remember, text_memo


def test_a_full_memo_is_emptied_before_it_keeps_more():
    memo: dict[str, int] = {}
    for index in range(5):
        remember(memo, f"k{index}", index, limit=3)
        assert len(memo) <= 3
    assert memo == {"k3": 3, "k4": 4}


def test_a_text_memo_answers_a_seen_text_from_the_memo_and_stays_bounded():
    calls: list[str] = []

    def parse(text: str) -> tuple[str]:
        calls.append(text)
        return (text.upper(),)

    memo: dict[str, tuple[str]] = {}
    parsed = text_memo(parse, memo, limit=3, max_chars=8)
    first = parsed("a")
    assert parsed("a") is first and calls == ["a"]
    for index in range(10):
        assert parsed(f"v{index}") == (f"V{index}",)
        assert len(memo) <= 3
    assert parsed("long-text") == ("LONG-TEXT",) and "long-text" not in memo


def test_a_text_memo_keeps_no_refusal():
    calls: list[str] = []

    def refuse(text: str) -> str:
        calls.append(text)
        raise ValueError(text)

    memo: dict[str, str] = {}
    refused = text_memo(refuse, memo, limit=3, max_chars=8)
    for _ in range(2):
        with pytest.raises(ValueError):
            refused("bad")
    assert calls == ["bad", "bad"] and memo == {}
