#!/usr/bin/python3
"""Turn bench/run.py results into the docs: a markdown table (medians of the
alternated rounds, ours / native ratios) and a PNG of throughput against
offered rate.

    /usr/bin/python3 bench/report.py RESULTS.json [--doc docs/benchmarks.md] [--png docs/benchmarks.png]

With --doc, the text between ``<!-- bench:results:begin -->`` and
``<!-- bench:results:end -->`` in that file is replaced, and the edge scale
run's section (``<!-- bench:scale-edge:begin -->``, bench/scale_edge.py) when
the results have one (its plot: scale-edge.png beside --png). Results without
rounds (run.py --only-scale) leave the rounds' section and plot alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale_edge  # noqa: E402
import scale_registrar  # noqa: E402
import soak  # noqa: E402

import analysis  # noqa: E402

BEGIN = "<!-- bench:results:begin -->"
END = "<!-- bench:results:end -->"
IMPLS = ("ours", "native")
FLOOR = "floor"  # issue 17: native's routes in Python (bench/floor), in runs that have it
RAMPS = (("register_udp", "REGISTER over UDP"), ("register_tcp", "REGISTER over TCP"),
         ("calls_udp", "calls to UDP outbound UAs"), ("calls_tcp", "calls to TCP outbound UAs"))

Getter = Callable[[dict], float | None]


def dig(*path: str | int) -> Getter:
    def get(round_: dict) -> float | None:
        value: object = round_
        for key in path:
            if isinstance(value, dict) and key in value:
                value = value[key]
            else:
                return None
        return float(value) if isinstance(value, int | float) else None
    return get


def sum_of(*getters: Getter) -> Getter:
    def get(round_: dict) -> float | None:
        values = [g(round_) for g in getters]
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)
    return get


# (label, unit, getter, higher_is_better, ramp key when the figure is a ramp maximum)
METRICS: list[tuple[str, str, Getter, bool, str]] = []
for key, label in RAMPS:
    unit = "REGISTER/s" if key.startswith("register") else "calls/s"
    METRICS.append((f"highest {label} rate, < 0.1 % failures", unit, dig(key, "max_rate"), True, key))
for key, label in RAMPS:
    for kam in ("edge1", "registrar"):
        name = "edge" if kam == "edge1" else "registrar"
        per = "REGISTER" if key.startswith("register") else "INVITE or BYE, 2 per call"
        METRICS.append((f"CPU per 1000 transactions, {label}, {name}", f"CPU s (1 tx = 1 {per})",
                        dig(key, "cpu_per_1000_tx", kam), False, ""))
for kam in ("edge1", "registrar"):
    name = "edge" if kam == "edge1" else "registrar"
    METRICS.append((f"script time per request, {name} (median)", "µs",
                    dig("calls_udp", "latency", kam, "request", "median_us"), False, ""))
    METRICS.append((f"script time per request, {name} (90th percentile)", "µs",
                    dig("calls_udp", "latency", kam, "request", "p90_us"), False, ""))
    METRICS.append((f"script time per reply, {name} (median)", "µs",
                    dig("calls_udp", "latency", kam, "reply", "median_us"), False, ""))
for key, label in (("calls_udp", "UDP"), ("calls_tcp", "TCP")):
    METRICS.append((f"call setup time under load, {label}: rate (half the highest)", "calls/s",
                    dig(key, "setup_latency", "rate"), True, ""))
    METRICS.append((f"call setup time under load, {label}: INVITE -> 200, median", "ms",
                    dig(key, "setup_latency", "median_ms"), False, ""))
    METRICS.append((f"call setup time under load, {label}: INVITE -> 200, 99th percentile", "ms",
                    dig(key, "setup_latency", "p99_ms"), False, ""))
METRICS += [
    ("shared memory per 10,000 registered TCP flows, edge", "MiB",
     dig("memory", "shm_per_10k_mib", "edge1"), False, ""),
    ("shared memory per 10,000 registered TCP flows, registrar", "MiB",
     dig("memory", "shm_per_10k_mib", "registrar"), False, ""),
    ("shared memory per 10,000 registered TCP flows, both", "MiB",
     sum_of(dig("memory", "shm_per_10k_mib", "edge1"), dig("memory", "shm_per_10k_mib", "registrar")), False, ""),
    ("process memory (PSS) growth per 10,000 TCP flows, both", "MiB",
     sum_of(dig("memory", "pss_per_10k_mib", "edge1"), dig("memory", "pss_per_10k_mib", "registrar")), False, ""),
    ("failover: flow killed -> call answered on the other flow", "ms", dig("failover", "kill_to_answer_ms"), False, ""),
    ("failover: INVITE sent -> answered on the other flow", "ms", dig("failover", "invite_to_answer_ms"), False, ""),
    ("normal call: INVITE sent -> answered (same UA, both flows up)", "ms",
     dig("failover", "probe_invite_to_answer_ms"), False, ""),
]


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def rounds_of(results: dict, impl: str) -> list[dict]:
    return [r for r in results["rounds"] if r.get("impl") == impl and "error" not in r]


def censored(results: dict, impl: str, key: str) -> bool:
    """True when some round of ``impl`` passed the top step of the ``key`` ramp."""
    return any(r.get(key, {}).get("censored") for r in rounds_of(results, impl))


def impls_of(results: dict) -> tuple[str, ...]:
    """ours and native, and the floor when the run has floor rounds."""
    return IMPLS + ((FLOOR,) if rounds_of(results, FLOOR) else ())


def table(results: dict) -> str:
    with_floor = FLOOR in impls_of(results)
    if with_floor:
        lines = ["| figure | unit | ours (median) | floor (median) | native C (median) | ours / floor | "
                 "floor / native | ours / native | better is |",
                 "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    else:
        lines = ["| figure | unit | ours (median) | native C (median) | ours / native | better is |",
                 "| --- | --- | ---: | ---: | ---: | --- |"]
    impls = impls_of(results)
    for label, unit, get, higher, ramp in METRICS:
        medians = {impl: analysis.median(get(r) for r in rounds_of(results, impl)) for impl in impls}
        cells = {impl: fmt(medians[impl]) for impl in impls}
        for impl in impls:
            if ramp and censored(results, impl, ramp):
                cells[impl] = "≥ " + cells[impl]  # a round passed the top step

        def ratio_text(a: str, b: str, medians: dict = medians, ramp: str = ramp) -> str:
            rat = analysis.ratio(medians[a], medians[b])
            text = fmt(rat, 2)
            return "≤ " + text if ramp and censored(results, b, ramp) and rat is not None else text

        better = "higher" if higher else "lower"
        if with_floor:
            lines.append(f"| {label} | {unit} | {cells['ours']} | {cells[FLOOR]} | {cells['native']} | "
                         f"{ratio_text('ours', FLOOR)} | {ratio_text(FLOOR, 'native')} | "
                         f"{ratio_text('ours', 'native')} | {better} |")
        else:
            lines.append(f"| {label} | {unit} | {cells['ours']} | {cells['native']} | "
                         f"{ratio_text('ours', 'native')} | {better} |")
    return "\n".join(lines)


def cpu_by_rate(results: dict, key: str) -> str:
    """Edge + registrar CPU µs per transaction at each offered rate (medians):
    Python's cost per message falls as the load rises (warmer caches)."""
    per = 1 if key.startswith("register") else 2
    rates: set[float] = set()
    impls = impls_of(results)
    values: dict[str, dict[float, list[float]]] = {impl: {} for impl in impls}
    for impl in impls:
        for r in rounds_of(results, impl):
            for s in r.get(key, {}).get("steps", []):
                if s["passed"] and s["successful"]:
                    us = (s["cpu"]["edge1"] + s["cpu"]["registrar"]) * 1e6 / (s["successful"] * per)
                    values[impl].setdefault(s["offered"], []).append(us)
                    rates.add(s["offered"])
    head = "| offered /s | " + " | ".join(f"{x:g}" for x in sorted(rates)) + " |"
    lines = [head, "| --- |" + " ---: |" * len(rates)]
    for impl in impls:
        cells = [fmt(analysis.median(values[impl].get(x, []))) for x in sorted(rates)]
        lines.append(f"| {impl} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_round(results: dict) -> str:
    """Every round's headline numbers, in the order they ran (A B A B)."""
    lines = ["| round | impl | REG/s UDP | REG/s TCP | calls/s UDP | calls/s TCP | edge CPU s/1000 REG (UDP) |"
             " failover ms | seconds | load average at start |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results["rounds"]:
        if "error" in r:
            lines.append(f"| {r['index']} | {r['impl']} | error: {r['error'][:60]} | | | | | | | |")
            continue
        lines.append(
            f"| {r['index']} | {r['impl']} | {fmt(dig('register_udp', 'max_rate')(r))} | "
            f"{fmt(dig('register_tcp', 'max_rate')(r))} | {fmt(dig('calls_udp', 'max_rate')(r))} | "
            f"{fmt(dig('calls_tcp', 'max_rate')(r))} | {fmt(dig('register_udp', 'cpu_per_1000_tx', 'edge1')(r))} | "
            f"{fmt(dig('failover', 'invite_to_answer_ms')(r))} | {fmt(r.get('seconds'))} | "
            f"{', '.join(f'{x:.1f}' for x in r.get('loadavg_start', []))} |")
    return "\n".join(lines)


def machine(results: dict) -> str:
    m = results["machine"]
    load = ", ".join(f"{x:.2f}" for x in m.get("loadavg_start", []))
    load_end = ", ".join(f"{x:.2f}" for x in m.get("loadavg_end", []))
    return (f"- {m['cores']} cores ({m['cpu']}), Linux {m['kernel']}, {m['kamailio']}, {m['sipp']}, "
            f"Python {m['python']}\n- load average at start {load}; at end {load_end} (shared machine)\n"
            f"- command: `{results['command']}`, {len(results['rounds'])} rounds "
            f"({' '.join(r['impl'] for r in results['rounds'])}) in {fmt(results.get('seconds'))} s"
            f"{auth_line(results)}")


def auth_line(results: dict) -> str:
    """Runs since digest authentication (bench/run.py records it) say so; older ones say nothing."""
    auth = results.get("auth") or {}
    if not auth.get("on"):
        return ""
    return ("\n- digest authentication on for both sides (the same auth_db subscriber table, "
            f"{auth.get('db', '')}): {auth.get('challenged', '')} is challenged first, so one REGISTER "
            "here is a registration (REGISTER, 401, REGISTER, 200) and one call INVITE, 407, ACK, INVITE, ..., BYE")


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    colours = {"ours": "tab:blue", "native": "tab:orange", FLOOR: "tab:green"}
    names = {"ours": "ours (KEMI Python)", "native": "native (C outbound module)",
             FLOOR: "floor (native's routes in Python)"}
    for ax, (key, label) in zip(axes.flat, RAMPS, strict=True):
        top = 0.0
        for impl in impls_of(results):
            by_rate: dict[float, list[float]] = {}
            for r in rounds_of(results, impl):
                steps = r.get(key, {}).get("steps", [])
                xs = [s["offered"] for s in steps]
                ys = [s["throughput"] for s in steps]
                ax.plot(xs, ys, "o", color=colours[impl], alpha=0.3, markersize=4)
                for s in steps:
                    by_rate.setdefault(s["offered"], []).append(s["throughput"])
                    top = max(top, s["offered"])
            rates = sorted(by_rate)
            ax.plot(rates, [analysis.median(by_rate[x]) for x in rates], "-", color=colours[impl], label=names[impl])
        ax.plot([0, top], [0, top], ":", color="grey", label="offered = carried")
        ax.set_title(label)
        ax.set_xlabel("offered rate (per s)")
        ax.set_ylabel("carried rate, successful (per s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Throughput against offered rate (medians of alternated rounds; dots: single rounds)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


CARRIED = ("durability", "replication", "metrics_cost")


def carried_note(part: dict) -> str:
    return f" (from an earlier run: `{part['from']}`)" if part.get("from") else ""


def durability_section(results: dict) -> str:
    """bench/durability.py's figures (runs before issue 14 have none)."""
    d = results.get("durability")
    if not d:
        return ""
    if "error" in d:
        return f"Durability ({d['bindings']} bindings): failed: `{d['error'][:300]}`\n\n"
    return (f"Durability of our registrar with {d['bindings']} outbound bindings (usrloc write-back on SQLite, "
            f"a DMQ pair on loopback; bench/durability.py){carried_note(d)}:\n\n"
            "| figure | value |\n| --- | --- |\n"
            f"| reload at start (exec until all bindings are served) | {fmt(d['reload_seconds'])} s |\n"
            f"| shared memory per binding | {d['shm_bytes_per_binding']} B |\n"
            f"| DMQ resync of an empty peer (exec until it holds all) | {fmt(d['dmq_resync_seconds'])} s, "
            f"{d['dmq_resync_per_second']} bindings/s |\n"
            f"| write-back of the resynced bindings to the peer's SQLite | {fmt(d['write_back_seconds'])} s, "
            f"{d['write_back_rows_per_second']} rows/s |\n\n")


def replication_section(results: dict) -> str:
    r = results.get("replication")
    if not r:
        return ""
    if "error" in r:
        return f"Registrar pair: failed: `{r['error'][:300]}`\n\n"
    cpu = r["cpu_us_per_register"]
    return (f"Registrar pair on DMQ{carried_note(r)}, {r['registrations']} REGISTER at {r['rate']}/s over UDP "
            "through our edge to "
            f"reg1 ({r['failed']} failed; {r['replicated']} bindings at reg2 afterwards): CPU µs per REGISTER at "
            f"the saving registrar {cpu.get('pair-reg1')}, at its peer {cpu.get('pair-reg2')}, at the edge "
            f"{cpu.get('pair-edge')}.\n\n")


def metrics_cost_section(results: dict) -> str:
    """Issue 16: the metrics' cost, on vs off, per REGISTER (medians of the alternated runs)."""
    m = results.get("metrics_cost")
    if not m:
        return ""
    if "error" in m:
        return f"Metrics cost: failed: `{m['error'][:300]}`\n\n"
    rows = []
    for role in ("edge", "registrar"):
        on = [r[f"{role}_us"] for r in m["runs"] if r["metrics"]]
        off = [r[f"{role}_us"] for r in m["runs"] if not r["metrics"]]
        if on and off:
            mid_on, mid_off = statistics.median(on), statistics.median(off)
            rows.append(f"| {role} | {mid_on:g} ({', '.join(map(str, on))}) | {mid_off:g} ({', '.join(map(str, off))}) "
                        f"| {mid_on / mid_off:.2f} |")
    return (f"Metrics cost (issue 16){carried_note(m)}: our edge + registrar at "
            f"{m['rate']} REGISTER/s over UDP for {m['seconds']:g} s, metrics on (the default) and off "
            "(`-A WITH_NOMETRICS`), alternated; CPU µs per REGISTER, median (each run):\n\n"
            "| role | metrics on | metrics off | on/off |\n|---|---|---|---|\n" + "\n".join(rows) + "\n\n")


def instructions_section(results: dict) -> str:
    """Issue 17: instructions per registration and per call (callgrind), and
    the profile of our routes (bench/instructions.py)."""
    ins = results.get("instructions")
    if not ins:
        return ""
    if "error" in ins:
        return f"Instructions: failed: `{ins['error'][:300]}`\n\n"
    impls = [i for i in ("native", "floor", "ours") if i in ins["impls"]]
    head = "| role | work | " + " | ".join(f"{i} Ir" for i in impls) + " | ours/floor | floor/native | ours/native |"
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for role in ("edge", "registrar"):
        for work, label in (("register", "per registration"), ("call", "per call")):
            got = {i: ins["impls"][i][work][role]["total"] for i in impls}

            def ratio(a: str, b: str, got: dict = got) -> str:
                return f"{got[a] / got[b]:.2f}" if a in got and b in got and got[b] else "n/a"

            rows.append(f"| {role} | {label} | " + " | ".join(f"{got[i] / 1e6:.2f} M" for i in impls)
                        + f" | {ratio('ours', 'floor')} | {ratio('floor', 'native')} | {ratio('ours', 'native')} |")
    split = ["| impl | role | work | SIP messages | Python entries | in Python | of it in KSR calls (C) "
             "| interpreter (ours/floor code, entry, exit) | outside Python |", "|---|---|---|---|---|---|---|---|---|"]
    for impl in (i for i in ("floor", "ours") if i in ins["impls"]):
        for role in ("edge", "registrar"):
            for work in ("register", "call"):
                c = ins["impls"][impl][work][role]
                split.append(f"| {impl} | {role} | {work} | {c['messages']:g} | {c['python_entries']:g} "
                             f"| {c['python'] / 1e6:.2f} M | {c['ksr'] / 1e6:.2f} M "
                             f"| {(c['python'] - c['ksr']) / 1e6:.2f} M | {(c['total'] - c['python']) / 1e6:.2f} M |")
    runs = ins["impls"][impls[0]]["runs"]
    text = (f"Instructions per transaction (callgrind, issue 17): {ins['registrations']} registrations (UDP, "
            f"4/s) and {ins['calls']} calls (UDP, 2/s, to 5 registered UAs) per implementation, edge and "
            f"registrar each under `valgrind --tool=callgrind`, counted only inside "
            f"{', '.join('`' + f + '`' for f in ins['entry_functions'])} (a message's work; not start-up, idle "
            "timers or RPC). Ir = instructions executed, summed over the role's processes"
            + (f"; from `{ins['command']}`" if ins.get("command") else "") + ". A call is INVITE (407, INVITE, "
            "100, 180, 200, ACK) and BYE, through the edge twice. Counts, not time: the machine's other load "
            "does not change them; each process's first messages (a few M once) are included. (First run's "
            f"SIPp retransmissions: {runs['register']['retransmissions']} / "
            f"{runs['call']['retransmissions']}.)\n\n" + "\n".join(rows) + "\n\nWhere it goes, per registration / "
            "per call (`in Python`: inclusive in app_python3's route entry, apy_exec; `KSR calls`: inclusive in "
            "sr_apy_kemi_exec_func_ex, the C work called from Python):\n\n" + "\n".join(split) + "\n\n")
    for role, prof in (ins.get("profile") or {}).items():
        lines = ["| function | calls | own ms | cumulative ms |", "|---|---|---|---|"]
        for row in prof["rows"][:20]:
            lines.append(f"| `{row['function']}` | {row['calls']} | {row['own_s'] * 1e3:.1f} "
                         f"| {row['cum_s'] * 1e3:.1f} |")
        text += (f"Profile of our {role} (cProfile in each of its {prof.get('processes', 0)} processes that ran "
                 f"Python, merged; {prof['total_s'] * 1e3:.0f} ms of Python in all; {4 * ins['registrations']} "
                 f"registrations and {4 * ins['calls']} calls, not under valgrind; most own time first):\n\n"
                 + "\n".join(lines) + "\n\n")
    return text


def persistence_line(results: dict) -> str:
    mode = (results.get("settings") or {}).get("usrloc_db_mode")
    if mode is None:
        return ""
    what = {0: "memory only", 1: "write-through", 2: "write-back"}.get(mode, str(mode))
    return (f"Both registrars ran usrloc with db_mode {mode} ({what}) on their own SQLite location file "
            "(the same modparams; usrloc's timer every second, so that each step pays for its own writes).\n\n")


def render(results: dict) -> str:
    return (f"{BEGIN}\n\n{machine(results)}\n\n{persistence_line(results)}{table(results)}\n\n"
            "`≥`: a round passed the top step of the ramp, so the real limit is higher (and the ratio is an "
            "upper bound, `≤`).\n\nEdge + registrar CPU µs per REGISTER (UDP ramp) at each offered rate, "
            f"medians of the passing steps:\n\n{cpu_by_rate(results, 'register_udp')}\n\n"
            f"Edge + registrar CPU µs per transaction (UDP call ramp, 2 per call):\n\n"
            f"{cpu_by_rate(results, 'calls_udp')}\n\n{durability_section(results)}{replication_section(results)}"
            f"{metrics_cost_section(results)}{instructions_section(results)}"
            f"Every round:\n\n{per_round(results)}\n\n{END}")


def replace_section(path: Path, begin: str, end: str, text: str) -> None:
    """Write ``text`` (which starts with ``begin`` and ends with ``end``) over
    that section of the file at ``path``."""
    doc = path.read_text()
    if begin not in doc or end not in doc:
        raise SystemExit(f"{path}: no {begin} ... {end} section")
    head, _, rest = doc.partition(begin)
    _, _, tail = rest.partition(end)
    path.write_text(head + text + tail)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("--doc", type=Path)
    parser.add_argument("--png", type=Path)
    parser.add_argument("--carry-from", type=Path,
                        help="an earlier results.json whose durability, replication and metrics-cost figures "
                             "to show when this run has none")
    parser.add_argument("--instructions", type=Path,
                        help="a results.json whose instruction counts to show (run.py --only-instructions)")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    if args.carry_from:
        # parts this run skipped (e.g. --durability 0), shown from an earlier run and said so
        earlier = json.loads(args.carry_from.read_text())
        for part in CARRIED:
            if part not in results and part in earlier:
                results[part] = {**earlier[part], "from": earlier.get("command", str(args.carry_from))}
    if args.instructions:
        other = json.loads(args.instructions.read_text())
        results["instructions"] = {**other["instructions"], "command": other.get("command", "")}
    if "soak" in results and not results.get("rounds"):
        # bench/run.py --soak: only the soak section and docs/soak.png (beside the doc)
        text = soak.render(results["soak"], results.get("command", ""))
        impl = results["soak"].get("impl", "ours")
        if args.doc:
            replace_section(args.doc, *soak.markers(impl), text)
            if "samples" in results["soak"]:
                soak.plot(results["soak"], args.doc.with_name(soak.plot_name(impl)))
        else:
            print(text)
        return 0
    # a results file of the scale runs alone (run.py --only-scale) leaves the rounds' section and plot alone
    scale_parts = [part for part in ("scale_edge", "scale_registrar") if part in results]
    main_part = bool(results.get("rounds")) or "instructions" in results or not scale_parts
    text = render(results) if main_part else ""
    if args.doc and main_part:
        replace_section(args.doc, BEGIN, END, text)
    elif main_part:
        print(text)
    if args.png and main_part:
        plot(results, args.png)
    if "scale_edge" in results:  # bench/scale_edge.py's section and plot
        section = scale_edge.render(results)
        if args.doc:
            replace_section(args.doc, scale_edge.BEGIN, scale_edge.END, section)
        else:
            print(section)
        if args.png or args.doc:
            scale_edge.plot(results, (args.png or args.doc).with_name("scale-edge.png"))
    if "scale_registrar" in results:  # bench/scale_registrar.py's section and plot
        section = scale_registrar.render(results)
        if args.doc:
            replace_section(args.doc, scale_registrar.BEGIN, scale_registrar.END, section)
            scale_registrar.plot(results, args.doc.parent / "scale-registrar.png")
        else:
            print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
