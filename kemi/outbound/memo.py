"""Bounded per-process memos of pure functions (tokens, header values).

A memo maps an input text (or value) to the result a pure function gave for
it, so a value seen again (the REGISTER that answers a challenge, a dialog's
Route set coming back, a flow's token, the farm's URIs) costs one dict lookup.
Bounded by clearing: a stream of new values (a flood, a scan) costs the work it
would cost without a memo and never more memory than ``limit`` entries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(memo: dict[K, V], key: K, value: V, limit: int) -> None:
    """Keep ``key -> value``; a full memo is emptied first."""
    if len(memo) >= limit:
        memo.clear()
    memo[key] = value


def text_memo(function: Callable[[str], V], memo: dict[str, V], *, limit: int,
              max_chars: int) -> Callable[[str], V]:
    """``function`` answering from ``memo`` for a text seen before. Only texts of
    at most ``max_chars`` are kept (a memo never holds a long value), and only
    results: a text ``function`` refuses (raises) is never kept."""

    def memoized(text: str) -> V:
        known = memo.get(text)
        if known is None:
            known = function(text)
            if len(text) <= max_chars:
                remember(memo, text, known, limit)
        return known

    memoized.__doc__ = function.__doc__
    return memoized
