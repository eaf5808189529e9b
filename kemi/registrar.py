"""app_python3 entry point for the registrar / home proxy role (RFC 5626 §6, §7)."""

from adapter.profiling import maybe_profiled
from adapter.registrar_routes import RegistrarRoutes
from adapter.runtime import bootstrap


def mod_init() -> object:  # the routes object (wrapped only when profiling)
    return maybe_profiled(RegistrarRoutes(bootstrap("registrar", needs_keys=False)))
