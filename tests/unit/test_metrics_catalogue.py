"""kemi-outbound's metrics and reason codes (outbound.metrics): one catalogue,
declared to Kamailio by cfg/metrics.cfg and explained by docs/operations.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from outbound import metrics
from outbound.metrics import CATALOGUE, cfg_declarations, decision_line, family_counts, rpc_refusal

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "operations.md").read_text()
PROM_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def test_cfg_metrics_file_is_written_from_the_catalogue():
    assert (ROOT / "cfg" / "metrics.cfg").read_text() == cfg_declarations()


@pytest.mark.parametrize("role", ["edge", "registrar", "single"])
def test_every_role_includes_the_declarations_unless_metrics_are_off(role):
    cfg = (ROOT / "cfg" / f"{role}.cfg").read_text()
    block = re.search(r"#!ifndef WITH_NOMETRICS\n# ----- xhttp_prom params.*?#!endif", cfg, re.S)
    assert block is not None and 'include_file "metrics.cfg"' in block.group(0)


@pytest.mark.parametrize("metric", CATALOGUE, ids=lambda m: m.name)
def test_names_follow_prometheus_conventions(metric):
    assert PROM_NAME.match(metric.name) and metric.name.startswith("kemi_outbound_")
    assert metric.name.endswith("_total") == (metric.kind == metrics.COUNTER)
    assert len(metric.labels) <= 3  # xhttp_prom takes at most three labels
    assert all(PROM_NAME.match(label) for label in metric.labels)


@pytest.mark.parametrize("metric", CATALOGUE, ids=lambda m: m.name)
def test_every_metric_is_in_the_operations_reference_table(metric):
    labels = ", ".join(f"`{label}`" for label in metric.labels) or "-"
    row = f"| `{metric.name}` | {metric.kind} | {labels} | {', '.join(metric.roles)} | {metric.meaning} |"
    assert row in DOC.splitlines(), f"docs/operations.md lacks (or words differently) the row:\n{row}"


def causes_in_code() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "kemi").rglob("*.py"):
        found |= set(re.findall(r'cause="([a-z_0-9]+)"', path.read_text()))
        found |= set(re.findall(r'gone="([a-z_0-9]+)"', path.read_text()))
        found |= set(re.findall(r'return "(flow_[a-z_]+)"', path.read_text()))
        found |= set(re.findall(r'"(unparsable_header|not_utf8|refused_by_core|internal_error)"', path.read_text()))
    return found | {"all_flows_failed", "no_answer", "best_answer"}


def test_every_reason_code_in_the_code_is_explained_in_the_docs():
    causes = causes_in_code()
    assert len(causes) > 40
    missing = sorted(c for c in causes if f"`{c}`" not in DOC)
    assert not missing, f"reason codes missing from docs/operations.md: {missing}"


def test_a_forged_token_counts_in_its_family_and_a_flow_failure_by_its_cause():
    assert family_counts("forged_token") == ((metrics.FORGED_TOKENS, ("forged_token",)),)
    assert family_counts("flow_reused_connection") == ((metrics.FLOWS_GONE, ("reused_connection",)),)
    assert family_counts("all_flows_failed") == ((metrics.CALLS_UNREACHABLE, ()),)
    assert family_counts("relay_kdmq_stranger") == ((metrics.RELAY_REFUSALS, ("relay_kdmq_stranger",)),)
    assert family_counts("no_binding") == ()


def test_the_decision_line_starts_with_its_stable_fields():
    line = decision_line("flow_closed", 430, "a@b", "430 Flow Failed to INVITE from 192.0.2.1:5060: gone")
    assert line == ("kemi-outbound decision=flow_closed code=430 call-id=a@b "
                    "430 Flow Failed to INVITE from 192.0.2.1:5060: gone")
    assert decision_line("", 0, "", "") == "kemi-outbound decision=unnamed code=0 call-id=-"


def test_rpc_over_http_is_read_only():
    assert rpc_refusal("ul.dump", metrics.RPC_READ_ONLY) is None
    assert "not a read-only view" in rpc_refusal("ul.rm", metrics.RPC_READ_ONLY)
    assert rpc_refusal("", metrics.RPC_READ_ONLY) == "not a JSON-RPC request with a method"
    assert not {m for m in metrics.RPC_READ_ONLY if re.search(r"\b(rm|add|set|reload|flush|kill|delete)", m)}
