"""app_python3 entry point for the edge proxy role (RFC 5626 §5)."""

from adapter.edge_routes import EdgeRoutes
from adapter.profiling import maybe_profiled
from adapter.runtime import bootstrap


def mod_init() -> object:  # the routes object (wrapped only when profiling)
    return maybe_profiled(EdgeRoutes(bootstrap("edge", needs_keys=True)))
