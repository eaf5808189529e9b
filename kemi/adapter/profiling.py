"""The bench's Python profile of our routes (issue 17, docs/benchmarks.md).

Off unless Kamailio's environment names a folder in ``KO_PROFILE_DIR``; then
every route entry Kamailio makes into the routes object (``ksr_*``) runs under
cProfile, one profiler per Kamailio process, and each process writes its
statistics to ``<folder>/<pid>.prof`` every ``DUMP_EVERY`` entries (Kamailio's
children end by signal, so nothing waits for an exit). bench/instructions.py
merges the files. With the variable unset the routes object is returned as it
is: not one call more on the hot path.
"""

from __future__ import annotations

import cProfile
import os
from pathlib import Path
from typing import Any

PROFILE_DIR_ENV = "KO_PROFILE_DIR"
DUMP_EVERY = 50


class ProfiledRoutes:
    """Stands in for a routes object: ``ksr_*`` attributes come back wrapped in
    this process's profiler; everything else is the object's own."""

    def __init__(self, routes: Any, folder: Path) -> None:
        self._routes = routes
        self._folder = folder
        self._profiler: cProfile.Profile | None = None
        self._pid = 0
        self._entries = 0

    def _process_profiler(self) -> cProfile.Profile:
        pid = os.getpid()
        if self._profiler is None or pid != self._pid:  # Kamailio forked a child: a profile of its own
            self._profiler, self._pid, self._entries = cProfile.Profile(), pid, 0
        return self._profiler

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._routes, name)
        if not name.startswith("ksr_") or not callable(target):
            return target

        def entry(*args: Any) -> Any:
            profiler = self._process_profiler()
            try:
                return profiler.runcall(target, *args)
            finally:
                self._entries += 1
                if self._entries % DUMP_EVERY == 0:
                    profiler.dump_stats(str(self._folder / f"{self._pid}.prof"))

        return entry


def maybe_profiled(routes: Any) -> Any:
    """``routes`` itself, or wrapped for profiling when KO_PROFILE_DIR is set."""
    folder = os.environ.get(PROFILE_DIR_ENV)
    if not folder:
        return routes
    Path(folder).mkdir(parents=True, exist_ok=True)
    return ProfiledRoutes(routes, Path(folder))
