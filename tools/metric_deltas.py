"""The demo's metric deltas: what each role's /metrics counted during the story.

Reads the Prometheus text of kemi-outbound's metrics socket (xhttp_prom:
``name{label="v", ...} value [timestamp]``), takes the difference of two
scrapes of one role (a counter absent from the first scrape counted from 0)
and writes them as a table: printed by tools/demo.py and drawn beside the
ladder as metrics.png / metrics.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?P<labels>\{[^}]*\})?\s+(?P<value>\S+)(?:\s+\d+)?$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
PREFIX = "kemi_outbound_"


def samples(text: str) -> dict[str, float]:
    """Every sample of the scrape by its series ('name{a="x", b="y"}', labels sorted)."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        if match is None:
            continue
        labels = sorted(LABEL.findall(match["labels"] or ""))
        series = match["name"] + ("{" + ", ".join(f'{k}="{v}"' for k, v in labels) + "}" if labels else "")
        try:
            found[series] = float(match["value"])
        except ValueError:
            continue
    return found


@dataclass(frozen=True)
class Delta:
    role: str
    series: str
    change: float
    now: float
    gauge: bool


def deltas(role: str, before: str, after: str, gauges: tuple[str, ...] = ("kemi_outbound_flows",
                                                                        "kemi_outbound_bindings")) -> list[Delta]:
    """kemi-outbound's series that changed between two scrapes of ``role``
    (histogram buckets left out: their _count and _sum say it)."""
    old, new = samples(before), samples(after)
    out = []
    for series in sorted(new):
        if not series.startswith(PREFIX) or "_bucket{" in series:
            continue
        change = new[series] - old.get(series, 0.0)
        is_gauge = series.split("{", 1)[0] in gauges
        if change or (is_gauge and new[series]):
            out.append(Delta(role, series, change, new[series], is_gauge))
    return out


def table(rows: list[Delta]) -> str:
    """The deltas as a Markdown table."""
    lines = ["| role | metric | change | value at the end |", "|---|---|---|---|"]
    for row in rows:
        change = f"{row.change:+g}" if not row.gauge or row.change else "="
        lines.append(f"| {row.role} | `{row.series}` | {change} | {row.now:g} |")
    return "\n".join(lines) + "\n"


def draw(rows: list[Delta], path: Path, title: str) -> Path:
    """The counters' changes as one horizontal bar per series, grouped by role."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counters = [r for r in rows if not r.gauge]
    labels = [f"{r.role}: {r.series.removeprefix(PREFIX)}" for r in counters]
    fig, ax = plt.subplots(figsize=(11, 0.9 + 0.32 * max(len(counters), 1)))
    colours = {"edge1": "#1f3b73", "edge2": "#3f6fb5", "reg1": "#1a7f37", "reg2": "#4caf50"}
    ax.barh(range(len(counters)), [r.change for r in counters], color=[colours.get(r.role, "#777") for r in counters])
    ax.set_yticks(range(len(counters)), labels, fontsize=8)
    ax.invert_yaxis()
    for i, row in enumerate(counters):
        ax.text(row.change, i, f" +{row.change:g}", va="center", fontsize=8)
    ax.set_xlabel("increase during the story")
    ax.set_title(title, fontsize=10)
    ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
