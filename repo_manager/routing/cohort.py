"""The cohort rule: which requests a canary's cohort holds, by request attributes and time.

Standard library only, on purpose: like ``split``, this file is copied beside the weighted
public name's Triton model (``repo_manager/unpinned``, as ``routing_cohort.py``), so a
request with the same attributes lands in the same cohort through the Router and through
the public name. One rule, one file.

The language is small on purpose (one reading, no surprises): clauses joined by ``and``::

    line=3                      the attribute equals the value
    device!=nano                the attribute is present and differs from the value
    line in (3,4)               the attribute is one of the values
    zone not in (a,"b c")       the attribute is present and none of the values
    hour in 22..6               the hour of the day, from 22:00 up to 06:00 (half-open,
                                wrapping midnight), in UTC ...
    hour in 0..5 tz Europe/Berlin   ... or in the zone the rule names (zoneinfo)

No ``or`` and no parentheses besides an ``in`` list; at most one hour window. Names are
``[A-Za-z_][A-Za-z0-9_.-]*``; values are strings (quoted with ' or " when they hold
spaces or punctuation); attributes arrive as strings, and an integer attribute compares
as its decimal text. A request that lacks an attribute a clause names is outside the
cohort, whatever the clause (``!=`` and ``not in`` included): a client that says nothing
never gets the canary by a negative rule. Parsed once (``parse``), evaluated by
``Cohort.matches`` with set lookups only; the hour window's answer is cached until the
next hour boundary, so zoneinfo runs once an hour, not per request. Errors are one-line
``ValueError``s (the manager turns them into its own).
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Callable, Mapping

__all__ = ["Cohort", "parse"]

_NAME = r"[A-Za-z_][A-Za-z0-9_.-]*"
_TOKEN = re.compile(
    r"\s*(?:(?P<quoted>'[^']*'|\"[^\"]*\")|(?P<op>!=|=|\(|\)|,|\.\.)"
    r"|(?P<word>(?:(?!\.\.)[^\s=!(),'\"])+))"
)
_IS_NAME = re.compile(_NAME)
_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")
_UTC = "UTC"
_SECONDS_PER_HOUR = 3600.0


def _tokens(text: str) -> list[tuple[str, str]]:
    """``(kind, text)`` pairs: name, value (quoted, or a word that is no name), op."""
    found, at, end = [], 0, len(text.rstrip())
    while at < end:
        m = _TOKEN.match(text, at)
        if m is None or m.end() == at:
            raise _error(text, f"unexpected {text[at:].strip()[:1]!r} at position {at + 1}")
        kind = m.lastgroup or "op"
        value = m.group(kind)
        if kind == "quoted":
            kind, value = "value", value[1:-1]
        elif kind == "word":
            kind = "name" if _IS_NAME.fullmatch(value) else "value"
        found.append((kind, value))
        at = m.end()
    return found


def _error(text: str, what: str) -> ValueError:
    return ValueError(f"cohort rule {text!r}: {what}")


def _quoted(value: str) -> str:
    """A value as the canonical text writes it (quoted only when it must be)."""
    if re.fullmatch(r"[A-Za-z0-9_.:/+-]+", value) and ".." not in value:
        return value
    return f"'{value}'" if "'" not in value else f'"{value}"'


def _members(values: tuple[str, ...], *, negated: bool = False) -> frozenset[object]:
    """The set a clause looks attributes up in: each value, and its integer when the
    value is one's decimal text (so an int attribute matches without a conversion). A
    negated clause's set also holds None, what a missing attribute looks up: so a request
    without the attribute is outside by one set lookup, as for the other clauses."""
    members: set[object] = set(values)
    members.update(int(v) for v in values if _INTEGER.fullmatch(v))
    if negated:
        members.add(None)
    return frozenset(members)


Test = Callable[[Mapping[str, object] | None, float], bool]


def _attribute_test(clauses: tuple[tuple[str, frozenset[object], bool], ...]) -> Test:
    """One function ``(attributes, now)`` testing every attribute clause (not the time):
    ``a.get(n0) in m0 and ...``.

    Generated, because a loop over the clauses (tuple unpacking, ``is not`` per clause)
    measured about twice the time of one expression (about 400 against 180 ns for two
    clauses on this project's loaded 2-core machine). The source holds only the numbered
    parameter names: names and values of the rule are bound as default arguments, never
    written into the code.
    """
    bound: dict[str, object] = {}
    terms = []
    for i, (name, members, wanted) in enumerate(clauses):
        bound[f"n{i}"], bound[f"m{i}"] = name, members
        terms.append(f"a.get(n{i}) {'in' if wanted else 'not in'} m{i}")
    parameters = "".join(f", {k}={k}" for k in bound)
    body = " and ".join(["a is not None", *terms]) if terms else "True"
    test: Test = eval(f"lambda a, now{parameters}: {body}", {"__builtins__": {}}, bound)
    return test


class Cohort:
    """A compiled cohort rule; immutable but for the hour window's cached answer.

    ``cohort.matches(attributes, now)`` is True when a request with ``attributes`` at
    ``now`` (epoch seconds; read only by a rule with an hour window, ``timed``) is inside:
    set lookups in one generated expression, and the hour window's answer cached until
    the next hour boundary. ``str(cohort)`` is the canonical text (what the routing table
    and ``status`` show).
    """

    __slots__ = ("_cache", "_hours", "_match", "_text", "_zone", "matches", "timed")

    matches: Test

    def __init__(
        self,
        text: str,
        clauses: tuple[tuple[str, frozenset[object], bool], ...],
        hours: tuple[int, int] | None,
        zone: zoneinfo.ZoneInfo | None,
    ) -> None:
        self._text = text
        self._hours = hours
        self._zone = zone
        #: True when the rule has an hour window (its answer depends on the clock): a
        #: caller may pass any ``now`` to a rule without one.
        self.timed = hours is not None
        #: (valid from, valid until, answer) of the hour window; replaced whole (one
        #: assignment), so threads never see half of it.
        self._cache = (0.0, 0.0, False)
        self._match = _attribute_test(clauses)
        # One call per decision: a rule without an hour window is its attribute test.
        self.matches = self._timed if self.timed else self._match

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"Cohort({self._text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cohort) and other._text == self._text

    def __hash__(self) -> int:
        return hash(self._text)

    def _timed(self, attributes: Mapping[str, object] | None, now: float) -> bool:
        if not self._match(attributes, now):
            return False
        since, until, answer = self._cache
        if since <= now < until:
            return answer
        return self._hour_window(now)

    def _hour_window(self, now: float) -> bool:
        """Whether ``now`` is in the hour window; cached until the next hour boundary."""
        assert self._hours is not None
        local = dt.datetime.fromtimestamp(now, self._zone or dt.UTC)
        into_hour = local.minute * 60 + local.second + local.microsecond / 1e6
        start, end = self._hours
        hour = local.hour
        answer = start <= hour < end if start < end else (hour >= start or hour < end)
        since = now - into_hour
        self._cache = (since, since + _SECONDS_PER_HOUR, answer)
        return answer


def parse(text: str) -> Cohort:
    """Compile a cohort rule; a one-line ``ValueError`` says what is wrong with it."""
    tokens = _tokens(text)
    if not tokens:
        raise _error(text, "empty rule")
    parser = _Parser(text, tokens)
    return parser.rule()


class _Parser:
    """Recursive descent over the token list (one rule, read once)."""

    def __init__(self, text: str, tokens: list[tuple[str, str]]) -> None:
        self.text = text
        self.tokens = tokens
        self.at = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, what: str) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise _error(self.text, f"expected {what} at the end")
        self.at += 1
        return token

    def word(self, word: str) -> bool:
        """Consume the keyword ``word`` if it comes next."""
        token = self.peek()
        if token is not None and token[0] == "name" and token[1] == word:
            self.at += 1
            return True
        return False

    def expect(self, op: str) -> None:
        kind, found = self.take(repr(op))
        if kind != "op" or found != op:
            raise _error(self.text, f"expected {op!r}, found {found!r}")

    def value(self) -> str:
        kind, found = self.take("a value")
        if kind == "op":
            raise _error(self.text, f"expected a value, found {found!r}")
        return found

    def rule(self) -> Cohort:
        clauses: list[tuple[str, frozenset[object], bool]] = []
        words: list[str] = []
        hours: tuple[int, int] | None = None
        zone: zoneinfo.ZoneInfo | None = None
        while True:
            kind, name = self.take("a clause")
            if kind != "name":
                raise _error(self.text, f"expected an attribute name, found {name!r}")
            if name == "hour" and self.is_window():
                if hours is not None:
                    raise _error(self.text, "one hour window per rule")
                hours, zone, words_of = self.window()
                words.append(words_of)
            else:
                clause, words_of = self.clause(name)
                clauses.append(clause)
                words.append(words_of)
            token = self.peek()
            if token is None:
                break
            if not self.word("and"):
                raise _error(self.text, f"expected 'and' between clauses, found {token[1]!r}")
        return Cohort(" and ".join(words), tuple(clauses), hours, zone)

    def clause(self, name: str) -> tuple[tuple[str, frozenset[object], bool], str]:
        negated = self.word("not")
        if self.word("in"):
            self.expect("(")
            values = [self.value()]
            while self.peek() == ("op", ","):
                self.at += 1
                values.append(self.value())
            self.expect(")")
            unique = tuple(dict.fromkeys(values))
            shown = ",".join(_quoted(v) for v in unique)
            op = "not in" if negated else "in"
            clause = (name, _members(unique, negated=negated), not negated)
            return clause, f"{name} {op} ({shown})"
        if negated:
            raise _error(self.text, f"expected 'in' after '{name} not'")
        kind, op = self.take(f"'=', '!=' or 'in' after {name!r}")
        if kind != "op" or op not in ("=", "!="):
            raise _error(self.text, f"expected '=', '!=' or 'in' after {name!r}, found {op!r}")
        value = self.value()
        clause = (name, _members((value,), negated=op == "!="), op == "=")
        return clause, f"{name}{op}{_quoted(value)}"

    def is_window(self) -> bool:
        """``hour in A..B`` (a window), not ``hour in (...)`` or ``hour=...`` (attributes)."""
        rest = self.tokens[self.at : self.at + 2]
        return len(rest) == 2 and rest[0] == ("name", "in") and rest[1][0] != "op"

    def window(self) -> tuple[tuple[int, int], zoneinfo.ZoneInfo | None, str]:
        self.at += 1  # "in"
        start = self.hour(0, 23)
        self.expect("..")
        end = self.hour(0, 24)
        if start == end:
            raise _error(self.text, f"hour window {start}..{end} is empty")
        zone, words = None, f"hour in {start}..{end}"
        if self.word("tz"):
            kind, key = self.take("a time zone after 'tz'")
            if kind == "op":
                raise _error(self.text, f"expected a time zone after 'tz', found {key!r}")
            try:
                zone = zoneinfo.ZoneInfo(key)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise _error(self.text, f"unknown time zone {key!r}") from None
            if key != _UTC:
                words += f" tz {key}"
            else:
                zone = None
        return (start, end), zone, words

    def hour(self, lowest: int, highest: int) -> int:
        found = self.value()
        if not found.isdigit() or not lowest <= int(found) <= highest:
            raise _error(self.text, f"hour must be {lowest}..{highest}, found {found!r}")
        return int(found)
