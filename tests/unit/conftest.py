"""Make the pure core (``kemi/outbound``) importable as ``outbound``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "kemi"))
