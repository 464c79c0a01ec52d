"""Which metrics a Grafana dashboard's queries name, and which a live endpoint exports.

A small PromQL tokenizer, enough for dashboards: strings, label matchers ``{...}``, range
and subquery brackets ``[...]``, ``by (...)``/``without (...)``/``on (...)`` label lists,
numbers, durations, keywords and functions are dropped; what is left are metric names.
An identifier followed by ``(`` must be a PromQL function or aggregation, so a typo'd
function fails as loudly as a typo'd metric.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

FUNCTIONS = frozenset(
    """
    abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes
    clamp clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year
    days_in_month deg delta deriv exp floor histogram_avg histogram_count histogram_fraction
    histogram_quantile histogram_stddev histogram_stdvar histogram_sum holt_winters hour idelta
    increase irate label_join label_replace last_over_time ln log10 log2 mad_over_time
    max_over_time min_over_time minute month pi predict_linear present_over_time
    quantile_over_time rad rate resets round scalar sgn sin sinh sort sort_by_label
    sort_by_label_desc sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time tan tanh
    time timestamp vector year
    avg bottomk count count_values group limitk limit_ratio max min quantile stddev stdvar sum
    topk
    """.split()  # noqa: SIM905 (one word list reads better than 90 quoted strings)
)
#: Keywords whose parenthesised list holds label names, not expressions.
_LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2", "group_left", "group_right"}
)
_DURATION = re.compile(r"\b(?:\d+(?:ms|s|m|h|d|w|y))+\b")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(" + "|".join(_LABEL_LISTS) + r")\s*\([^()]*\)")
_TOKEN = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?|\d+(?:\.\d+)?(?:e[+-]?\d+)?")
_SAMPLE_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.*?)\s*,\s*[A-Za-z_]\w*\s*\)\s*$")


class UnknownFunctionError(ValueError):
    """A query calls something that is not a PromQL function."""


def metric_names(expr: str) -> set[str]:
    """The metric names one PromQL expression selects."""
    text = _STRING.sub(" ", expr)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables ($model, $__rate_interval)
    text = _MATCHERS.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    text = _DURATION.sub(" ", text)  # offset 5m, @ modifiers' durations
    names = set()
    for match in _TOKEN.finditer(text):
        token = match.group(0)
        if token[0].isdigit():
            continue
        if match.group(1):  # a call
            name = token.rstrip("( \t")
            if name not in FUNCTIONS:
                raise UnknownFunctionError(f"{name}() is not a PromQL function in {expr!r}")
            continue
        if token not in _KEYWORDS:
            names.add(token)
    return names


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[str]:
    """Every PromQL expression of a dashboard: panel targets (rows' too) and variables."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield str(target["expr"])
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        found = _LABEL_VALUES.match(text)
        if found:
            yield found.group(1)
        elif text:
            yield text


def dashboard_metrics(dashboard: dict[str, Any]) -> set[str]:
    return {name for expr in dashboard_queries(dashboard) for name in metric_names(expr)}


def exported_names(exposition: str) -> set[str]:
    """Sample names a Prometheus text exposition really holds, as Prometheus stores them
    (``_bucket``/``_sum``/``_count``, ``_total`` only where written): a family declared
    without samples does not count, and no parser renames Triton's counters."""
    names = set()
    for line in exposition.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.add(_SAMPLE_NAME.match(line).group(0))  # type: ignore[union-attr]
    return names
