"""RFC 4475 torture messages (tests/data/rfc4475/<name>.dat) and what RFC 4475
says of each: valid (process it) or invalid (refuse it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "rfc4475"


@dataclass(frozen=True)
class Torture:
    name: str  # RFC 4475's name, e.g. "wsinv"
    section: str  # e.g. "3.1.1.1"
    valid: bool


TORTURE: tuple[Torture, ...] = ()


def load(name: str) -> bytes:
    return (DATA / f"{name}.dat").read_bytes()
