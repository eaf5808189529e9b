"""app_python3 entry point for single-server mode: edge and registrar in one Kamailio."""

from adapter.profiling import maybe_profiled
from adapter.runtime import bootstrap
from adapter.single_routes import SingleRoutes


def mod_init() -> object:  # the routes object (wrapped only when profiling)
    return maybe_profiled(SingleRoutes(bootstrap("single", needs_keys=True)))
