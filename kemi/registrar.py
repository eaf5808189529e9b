"""app_python3 entry point for the registrar / home proxy role (RFC 5626 §6, §7)."""

from adapter.registrar_routes import RegistrarRoutes
from adapter.runtime import bootstrap


def mod_init() -> RegistrarRoutes:
    return RegistrarRoutes(bootstrap("registrar", needs_keys=False))
