"""app_python3 entry point for single-server mode: edge and registrar in one Kamailio."""

from adapter.runtime import bootstrap
from adapter.single_routes import SingleRoutes


def mod_init() -> SingleRoutes:
    return SingleRoutes(bootstrap("single", needs_keys=True))
