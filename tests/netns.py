"""A private network namespace for one test: its own loopback with IPv6
addresses of our choice (documentation-style ULA, never routed anywhere).

Kamailio spells an IPv6 address with hex letters and zero runs its own way
(``FD00:AB:CD::20``); the only loopback address the machine has, ``::1``,
has neither, so a test of "one spelling per address" needs addresses like
these. Nothing leaves the namespace: it has no interface but ``lo``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextmanager
def ipv6_loopback(*addresses: str) -> Iterator[str]:
    """A namespace whose ``lo`` is up and carries ``addresses`` (/128, no DAD);
    yields its name; deleted afterwards."""
    name = f"ko-v6-{os.getpid()}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        for address in addresses:
            _ip("-n", name, "-6", "addr", "add", f"{address}/128", "dev", "lo", "nodad")
        yield name
    finally:
        _ip("netns", "del", name)
