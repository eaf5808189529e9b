"""A stand-in for Kamailio's ``KSR`` in unit tests of the adapter's order of calls.

``KSR`` exists only inside Kamailio. :class:`Script` records every call as
(name, args) and returns scripted answers (a value, or a callable given the
call's arguments); it implements none of Kamailio's behaviour. What a real
Kamailio does is shown by the integration tests.
"""

from __future__ import annotations

import types
from typing import Any


class Script:
    """Scripted answers; every call is recorded as (name, args)."""

    def __init__(self, **answers: Any) -> None:
        self.answers = answers
        self.calls: list[tuple[str, tuple]] = []

    def namespace(self, prefix: str, *names: str) -> types.SimpleNamespace:
        return types.SimpleNamespace(**{n: self.recorder(f"{prefix}{n}") for n in names})

    def recorder(self, name: str):
        def call(*args: Any) -> Any:
            self.calls.append((name, args))
            answer = self.answers.get(name)
            return answer(*args) if callable(answer) else answer
        return call

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]
