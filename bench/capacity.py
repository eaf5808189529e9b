"""The capacity model of docs/scaling.md, computed from one bench/run.py results file.

Every input is a figure that run measured (medians of our rounds, bench/report.py);
the load is the issue's question: ``DEVICES`` devices, each refreshing its
registration every ``REFRESH_S`` seconds and placing or taking ``CALLS_PER_HOUR``
calls an hour. Assumptions that are not measurements are named in ASSUMPTIONS
and printed with the result.

    /usr/bin/python3 bench/capacity.py RESULTS.json [--doc docs/scaling.md]

With --doc, the text between ``<!-- capacity:begin -->`` and ``<!-- capacity:end -->``
is replaced.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import analysis  # noqa: E402
from report import dig, fmt, replace_section, rounds_of  # noqa: E402

BEGIN = "<!-- capacity:begin -->"
END = "<!-- capacity:end -->"

DEVICES = 10_000_000
REFRESH_S = 600
CALLS_PER_HOUR = 1.0
FLOWS_PER_DEVICE = 1  # the base case; RFC 5626 devices often keep 2 (x2 flows and REGISTERs)
CPU_BUDGET = 0.6  # of each core, leaving room for bursts and failover
CORES = 2  # of one registrar (this machine's)
EDGE_FLOWS_DESIGN = 100_000  # flows one edge is sized for (issue 17 measures the cost up to it)
SHM_PER_SERVER_GIB = 16  # shared memory one Kamailio is given (-m)
EDGE_TRAVERSALS_PER_CALL = 2  # the caller's edge and the callee's edge
TX_PER_CALL = 2  # INVITE and BYE
ASSUMPTIONS = (
    f"{DEVICES:,} devices, one flow each, a refresh every {REFRESH_S} s and {CALLS_PER_HOUR:g} call per device "
    "per hour (caller and callee both devices behind edges: two edge traversals per call, one registrar)",
    f"a server's cores are used up to {CPU_BUDGET:.0%}; CPU figures are this machine's cores (see the bench run)",
    f"an edge is sized for {EDGE_FLOWS_DESIGN:,} flows and a Kamailio for {SHM_PER_SERVER_GIB} GiB of shared memory "
    "(the flow count per edge measured here stops at the machine's 20,000 open files per process)",
    "a registrar pair: each REGISTER is saved at one registrar and applied at its peer (DMQ); each registrar writes "
    "every binding change it holds (its own and its peer's) to its own database",
)


class MissingFigures(ValueError):
    """The results lack a figure the model needs (e.g. a run with --durability 0)."""


@dataclass(frozen=True, slots=True)
class Inputs:
    """Measured figures (CPU seconds per transaction; bytes; rates)."""

    edge_cpu_register: float
    registrar_cpu_register: float
    edge_cpu_call_tx: float
    registrar_cpu_call_tx: float
    edge_shm_per_flow: float
    registrar_shm_per_binding: float
    peer_cpu_register: float
    write_back_rows_s: float
    dmq_resync_s: float
    reload_bindings_s: float
    highest_register_s: float

    @classmethod
    def from_results(cls, results: dict) -> Inputs:
        def median(*path: str) -> float:
            value = analysis.median(dig(*path)(r) for r in rounds_of(results, "ours"))
            if value is None:
                raise MissingFigures(f"no figure {'/'.join(path)} in the results")
            return value

        durability, replication = results.get("durability") or {}, results.get("replication") or {}
        if "reload_seconds" not in durability or "cpu_us_per_register" not in replication:
            raise MissingFigures("no durability / replication figures in the results (bench/run.py --durability)")
        return cls(
            edge_cpu_register=median("register_tcp", "cpu_per_1000_tx", "edge1") / 1000,
            registrar_cpu_register=median("register_tcp", "cpu_per_1000_tx", "registrar") / 1000,
            edge_cpu_call_tx=median("calls_tcp", "cpu_per_1000_tx", "edge1") / 1000,
            registrar_cpu_call_tx=median("calls_tcp", "cpu_per_1000_tx", "registrar") / 1000,
            edge_shm_per_flow=median("memory", "shm_per_10k_mib", "edge1") * 2**20 / 10_000,
            registrar_shm_per_binding=float(durability["shm_bytes_per_binding"]),
            peer_cpu_register=replication["cpu_us_per_register"]["pair-reg2"] / 1e6,
            write_back_rows_s=float(durability["write_back_rows_per_second"]),
            dmq_resync_s=float(durability["dmq_resync_per_second"]),
            reload_bindings_s=durability["bindings"] / durability["reload_seconds"],
            highest_register_s=median("register_tcp", "max_rate"),
        )


def model(i: Inputs) -> list[tuple[str, str]]:
    """(quantity, value) rows: the load, then each tier's needs and its first limit."""
    flows = DEVICES * FLOWS_PER_DEVICE
    registers = flows / REFRESH_S
    calls = DEVICES * CALLS_PER_HOUR / 3600
    edge_cores = (registers * i.edge_cpu_register
                  + calls * EDGE_TRAVERSALS_PER_CALL * TX_PER_CALL * i.edge_cpu_call_tx) / CPU_BUDGET
    edge_shm_flows = SHM_PER_SERVER_GIB * 2**30 / i.edge_shm_per_flow
    flows_per_edge = min(EDGE_FLOWS_DESIGN, edge_shm_flows)
    edges = math.ceil(flows / flows_per_edge)
    # one registrar pair: every REGISTER costs the saving registrar and its peer
    pair_cpu_per_register = i.registrar_cpu_register + i.peer_cpu_register
    # both up: each saves half and applies the other half; one down: the other saves all
    pair_register_cpu_limit = min(2 * CORES * CPU_BUDGET / pair_cpu_per_register,
                                  CORES * CPU_BUDGET / i.registrar_cpu_register)
    pair_register_db_limit = i.write_back_rows_s  # each registrar writes every REGISTER of the pair
    pair_shm_bindings = SHM_PER_SERVER_GIB * 2**30 / i.registrar_shm_per_binding
    registrar_cpu_total = (registers * pair_cpu_per_register
                           + calls * TX_PER_CALL * i.registrar_cpu_call_tx) / CPU_BUDGET
    pair_limit = min(pair_register_cpu_limit, pair_register_db_limit)
    first = "CPU" if pair_register_cpu_limit <= pair_register_db_limit else "database writes (SQLite)"
    pairs_needed = math.ceil(registers / pair_limit)
    return [
        ("REGISTER/s (refreshes)", f"{registers:,.0f}"),
        ("calls/s", f"{calls:,.0f}"),
        ("flows", f"{flows:,}"),
        ("edge: CPU (cores of this machine, all edges)", f"{edge_cores:,.1f}"),
        ("edge: shared memory per flow (measured)", f"{i.edge_shm_per_flow / 1024:,.1f} KiB"),
        (f"edge: flows per edge ({EDGE_FLOWS_DESIGN:,} design, {SHM_PER_SERVER_GIB} GiB shm allows "
         f"{edge_shm_flows:,.0f})", f"{flows_per_edge:,.0f}"),
        ("edges needed (flows, not CPU, decide)", f"{edges:,} ({edge_cores / edges:.2f} cores each)"),
        ("registrar: CPU per REGISTER at the saving registrar + at its peer (measured)",
         f"{i.registrar_cpu_register * 1e6:,.0f} + {i.peer_cpu_register * 1e6:,.0f} µs"),
        (f"registrar pair ({CORES} cores each): REGISTER/s its CPU allows, either registrar able to carry it alone",
         f"{pair_register_cpu_limit:,.0f}"),
        ("registrar pair: REGISTER/s its SQLite write-back allows (measured rows/s)", f"{pair_register_db_limit:,.0f}"),
        ("registrar pair: what saturates first", first),
        (f"registrar pair: bindings its {SHM_PER_SERVER_GIB} GiB shm holds "
         f"({i.registrar_shm_per_binding:,.0f} B per binding, measured)", f"{pair_shm_bindings:,.0f}"),
        ("registrar: CPU for the whole load (cores of this machine)", f"{registrar_cpu_total:,.1f}"),
        ("registrar pairs needed for the REGISTER rate", f"{pairs_needed:,}"),
        ("a pair's resync of 10,000,000 bindings at the measured DMQ rate",
         f"{DEVICES / i.dmq_resync_s / 60:,.0f} min"),
        ("a registrar's reload of 10,000,000 bindings at the measured SQLite rate",
         f"{DEVICES / i.reload_bindings_s / 60:,.0f} min"),
        ("highest REGISTER/s of our edge + registrar measured on this machine (TCP ramp)",
         fmt(i.highest_register_s)),
    ]


def render(results: dict) -> str:
    rows = model(Inputs.from_results(results))
    lines = [BEGIN, "", f"From `{results.get('command', 'bench/run.py')}` "
             f"({results.get('machine', {}).get('cpu', '')}, {results.get('machine', {}).get('cores', '?')} cores); "
             "bench/capacity.py computes it. Assumptions (not measurements):", ""]
    lines += [f"- {a}" for a in ASSUMPTIONS]
    lines += ["", "| quantity | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join([*lines, "", END])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("--doc", type=Path)
    parser.add_argument("--skip-incomplete", action="store_true",
                        help="a run without the figures the model needs leaves the doc alone (exit 0)")
    args = parser.parse_args(argv)
    try:
        text = render(json.loads(args.results.read_text()))
    except MissingFigures as exc:
        print(f"capacity: {exc}{': docs not updated' if args.skip_incomplete else ''}", file=sys.stderr)
        return 0 if args.skip_incomplete else 1
    if args.doc:
        replace_section(args.doc, BEGIN, END, text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
