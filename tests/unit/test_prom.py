"""tests/prom.py, the reader of /metrics scrapes: xhttp_prom's text as it is, and
nothing malformed (both prometheus_client and the strict reader must take a scrape)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prom import MalformedExposition, delta, key, parse, strict_samples  # noqa: E402

# a scrape as Kamailio 5.6's xhttp_prom writes it (no TYPE lines, a space after the
# comma between labels, a timestamp in ms, gauges with six decimals, histogram buckets)
XHTTP_PROM = """# User defined metrics
kemi_outbound_refusals_total{code="403", cause="forged_token"} 1 1796199050942
kemi_outbound_flows{transport="tcp"} 0.000000 1796199050942
kemi_outbound_bindings 2.000000 1796199050942
kemi_outbound_call_branches_bucket{le="1.000000"} 1 1796199050942
kemi_outbound_call_branches_bucket{le="+Inf"} 1 1796199050942
kemi_outbound_call_branches_sum 1 1796199050942
kemi_outbound_call_branches_count 1 1796199050942
# Kamailio whole internal statistics
core_rcv_requests 10 1796199050942
"""


def test_xhttp_prom_output_is_read_by_both_readers():
    samples = parse(XHTTP_PROM)
    assert samples[key("kemi_outbound_refusals_total", code="403", cause="forged_token")] == 1
    assert samples[key("kemi_outbound_flows", transport="tcp")] == 0
    assert samples[key("kemi_outbound_call_branches_bucket", le="+Inf")] == 1
    assert samples[key("core_rcv_requests")] == 10
    assert len(samples) == 8


def test_a_label_value_keeps_its_escapes():
    samples = parse('m{a="x\\"y\\\\z\\n"} 1\n')
    assert samples == {key("m", a='x"y\\z\n'): 1}


MALFORMED = [
    pytest.param('m{a="1" 1\n', id="unclosed-labels"),
    pytest.param("m{a=1} 1\n", id="unquoted-value"),
    pytest.param("m bar\n", id="not-a-number"),
    pytest.param("m 1 2 3\n", id="two-timestamps"),  # prometheus_client takes it
    pytest.param('m{a="1",,b="2"} 1\n', id="empty-label"),  # prometheus_client takes it (label ",b")
    pytest.param('m{a="1", a="2"} 1\n', id="label-twice"),
    pytest.param("m 1 1.5\n", id="fractional-timestamp"),
    pytest.param("m 1\nm 2\n", id="sample-twice"),
    pytest.param("1m 1\n", id="bad-name"),
    pytest.param("# TYPE m countr\nm 1\n", id="bad-type"),
    pytest.param("m\n", id="no-value"),
    pytest.param('m{a="\\x"} 1\n', id="bad-escape"),
]


@pytest.mark.parametrize("text", MALFORMED)
def test_a_malformed_line_is_refused(text):
    """By the strict reader itself, so by parse() whatever prometheus_client makes of it."""
    with pytest.raises(MalformedExposition):
        strict_samples(text)
    with pytest.raises(ValueError):  # MalformedExposition is a ValueError, as prometheus_client's errors
        parse(text)


def test_delta_reads_absent_as_zero_and_keeps_only_changes():
    before = {key("kemi_outbound_a"): 1.0, key("kemi_outbound_b"): 2.0, key("core_x"): 1.0}
    after = {key("kemi_outbound_a"): 1.0, key("kemi_outbound_b"): 3.0, key("kemi_outbound_c", x="y"): 1.0,
             key("core_x"): 5.0}
    assert delta(before, after, "kemi_outbound_") == {key("kemi_outbound_b"): 1.0, key("kemi_outbound_c", x="y"): 1.0}
