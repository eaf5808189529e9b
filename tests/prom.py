"""Scrape a Kamailio's /metrics and read it as Prometheus text, strictly.

Two readers must agree on every scrape (``parse``):

* Debian's python3-prometheus-client (``prometheus_client.parser.
  text_string_to_metric_families``), the reference reader. It takes xhttp_prom's
  output as it is (the space after the comma between labels, the millisecond
  timestamps), but it is lenient: it takes ``foo 1 2 3`` (timestamp "2 3") and
  ``foo{a="1",,b="2"}`` (a label named ",b"), so it alone would not catch a
  malformed line.
* ``strict_samples`` below: the text exposition format (version 0.0.4) as
  xhttp_prom writes it, line by line. A line is empty, a comment (``# HELP name
  text``, ``# TYPE name counter|gauge|histogram|summary|untyped``, any other
  ``#`` text) or a sample::

      name{label="value", label="value"} value [timestamp]

  ``name`` and each label name ``[a-zA-Z_:][a-zA-Z0-9_:]*`` (label names without
  ``:``), label values quoted with ``\\\\``, ``\\"`` and ``\\n`` the only
  escapes, labels separated by ``,`` and optional blanks, no label twice,
  ``value`` a float (or ``NaN``, ``+Inf``, ``-Inf``), ``timestamp`` an integer
  (milliseconds). Anything else raises ``MalformedExposition`` naming the line.

A sample is keyed by (name, sorted label pairs); a metric that was never
counted is absent, and ``delta`` reads absent as 0.
"""

from __future__ import annotations

import math
import re
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, tuple[tuple[str, str], ...]]

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
LABEL_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
LABEL = rf"({LABEL_NAME})=({LABEL_VALUE})"
FLOAT = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|NaN|[+-]?Inf"
SAMPLE = re.compile(rf"({NAME})(?:\{{((?:{LABEL}(?:,[ \t]*{LABEL})*)?,?)\}})?[ \t]+({FLOAT})(?:[ \t]+(-?\d+))?")
LABELS = re.compile(rf"[ \t]*{LABEL}[ \t]*(?:,|$)")
TYPE = re.compile(rf"# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped)")
HELP = re.compile(rf"# HELP ({NAME})(?: .*)?")
ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


class MalformedExposition(ValueError):
    pass


def key(name: str, **labels: str) -> Key:
    return (name, tuple(sorted(labels.items())))


def _unquote(value: str) -> str:
    return re.sub(r'\\[\\"n]', lambda m: ESCAPES[m.group(0)], value[1:-1])


def strict_samples(text: str) -> dict[Key, float]:
    """Every sample of ``text``, checked line by line (the module's grammar)."""
    samples: dict[Key, float] = {}
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            if line.startswith("# TYPE") and not TYPE.fullmatch(line):
                raise MalformedExposition(f"line {number}: bad TYPE line {line!r}")
            if line.startswith("# HELP") and not HELP.fullmatch(line):
                raise MalformedExposition(f"line {number}: bad HELP line {line!r}")
            continue
        match = SAMPLE.fullmatch(line)
        if match is None:
            raise MalformedExposition(f"line {number}: not a sample {line!r}")
        name, label_text, value = match.group(1), match.group(2) or "", match.group(7)
        labels: dict[str, str] = {}
        for pair in LABELS.finditer(label_text):
            if pair.group(1) in labels:
                raise MalformedExposition(f"line {number}: label {pair.group(1)} twice in {line!r}")
            labels[pair.group(1)] = _unquote(pair.group(2))
        sample = key(name, **labels)
        if sample in samples:
            raise MalformedExposition(f"line {number}: {name}{labels} a second time")
        samples[sample] = float(value)
    return samples


def library_samples(text: str) -> dict[Key, float]:
    """Every sample of ``text`` as prometheus_client reads it."""
    return {key(s.name, **s.labels): s.value for family in text_string_to_metric_families(text)
            for s in family.samples}


def parse(text: str) -> dict[Key, float]:
    """The samples of a scrape; both readers must take it and agree."""
    strict = strict_samples(text)
    library = library_samples(text)
    if strict.keys() != library.keys() or any(
            not (strict[k] == library[k] or (math.isnan(strict[k]) and math.isnan(library[k]))) for k in strict):
        raise MalformedExposition(f"the strict reader and prometheus_client disagree:\n{strict}\n{library}")
    return strict


def scrape_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        content_type = answer.headers.get("Content-Type", "")
        if not content_type.startswith("text/plain"):
            raise MalformedExposition(f"{url}: Content-Type {content_type!r}, not text/plain")
        return answer.read().decode()


def scrape(url: str) -> dict[Key, float]:
    return parse(scrape_text(url))


def delta(before: dict[Key, float], after: dict[Key, float], prefix: str = "") -> dict[Key, float]:
    """What changed between two scrapes (absent = 0), only names starting with ``prefix``."""
    keys = {k for k in (*before, *after) if k[0].startswith(prefix)}
    changes = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in keys}
    return {k: v for k, v in changes.items() if v}
