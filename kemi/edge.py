"""app_python3 entry point for the edge proxy role (RFC 5626 §5)."""

from adapter.edge_routes import EdgeRoutes
from adapter.runtime import bootstrap


def mod_init() -> EdgeRoutes:
    return EdgeRoutes(bootstrap("edge", needs_keys=True))
