"""Cohort rules: the parser (one-line errors), matching, hour windows (wrap, zones), the plan's
layout inside the cohort, the per-cohort series and what set-weight --cohort means."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import threading
from collections import Counter

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from repo_manager.analysis import PromQLProvider, ScrapeProvider, judge
from repo_manager.cli.render import history_text, status_text
from repo_manager.cli.watch import Watch
from repo_manager.errors import InvalidInputError, InvalidWeightError
from repo_manager.gates import LiveGates
from repo_manager.history.archive import entry_document
from repo_manager.metric_sources import baseline_words, in_cohort, judged_series
from repo_manager.metrics.router import RouterMetrics
from repo_manager.phases import Phase
from repo_manager.rollout.cohorts import weight_move
from repo_manager.rollout.ledger import KEEP, with_canary_at
from repo_manager.routing import RoutePlan
from repo_manager.routing.cohort import parse
from repo_manager.routing.plan import compile_cohort
from repo_manager.state import RolloutState, RoutingTable, state_key
from repo_manager.unpinned import public_config, public_route, unpinned_route
from tests.unit.routing_fakes import MODEL, binomial_ok
from tests.unit.test_cli_render import status_document
from tests.unit.test_metrics_providers import vector_answer
from tests.unit.test_modelconfig import detector_config
from tests.unit.test_rollout_ordering import Harness, manager  # noqa: F401 (the fixture)
from tests.unit.test_status_watch import Scripted


def at(text: str) -> float:
    """Epoch seconds of an ISO time (UTC when it names no zone)."""
    when = dt.datetime.fromisoformat(text)
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def cohort_table(rule: str, inside: int, outside: int = 0) -> RoutingTable:
    return RoutingTable(
        model=MODEL,
        stable="1",
        canary="2",
        weights={"1": 100 - outside, "2": outside},
        generation=1,
        cohort={"rule": rule, "weight": inside},
    )


# -- the language ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("line=3", "line=3"),
        ("  line = 3  ", "line=3"),
        ("line in (3, 4,3) and device=crane", "line in (3,4) and device=crane"),
        ("device != 'jetson nano'", "device!='jetson nano'"),
        ('zone not in (a, "b c")', "zone not in (a,'b c')"),
        ("hour in 22..6", "hour in 22..6"),
        ("hour in 0..5 tz Europe/Berlin and line=3", "hour in 0..5 tz Europe/Berlin and line=3"),
        ("hour in 0..24 tz UTC", "hour in 0..24"),
        ("hour in (1,2)", "hour in (1,2)"),  # a list: the attribute "hour", not the clock
        ("cam.id=a/b:c", "cam.id=a/b:c"),
    ],
)
def test_rules_parse_to_one_canonical_text_that_parses_to_itself(
    written: str, canonical: str
) -> None:
    assert str(parse(written)) == canonical
    assert str(parse(canonical)) == canonical


@pytest.mark.parametrize(
    ("rule", "says"),
    [
        ("", "empty rule"),
        ("line", "expected '=', '!=' or 'in' after 'line' at the end"),
        ("line=", "expected a value at the end"),
        ("line=3 or line=4", "expected 'and' between clauses, found 'or'"),
        ("(line=3)", "expected an attribute name, found '('"),
        ("line in ()", "expected a value, found ')'"),
        ("line in (3,4", "expected ')' at the end"),
        ("line not = 3", "expected 'in' after 'line not'"),
        ("3=line", "expected an attribute name, found '3'"),
        ("line=3 and", "expected a clause at the end"),
        ("a!b", "unexpected '!' at position 2"),
        ("hour in 5..5", "hour window 5..5 is empty"),
        ("hour in 1..25", "hour must be 0..24, found '25'"),
        ("hour in 24..2", "hour must be 0..23, found '24'"),
        ("hour in 0..5 tz Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
        ("hour in 0..5 tz", "expected a time zone after 'tz' at the end"),
        ("hour in 1..2 and hour in 3..4", "one hour window per rule"),
    ],
)
def test_every_bad_rule_is_one_line_saying_what_is_wrong(rule: str, says: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse(rule)
    message = str(raised.value)
    assert "\n" not in message
    assert message == f"cohort rule {rule!r}: {says}"
    with pytest.raises(InvalidInputError, match="cohort rule") as manager_side:
        compile_cohort(rule)
    assert manager_side.value.exit_code == 2


def test_clauses_match_attributes_and_a_missing_attribute_is_outside() -> None:
    rule = parse("line in (3,4) and device=crane and zone!=a")
    assert rule.matches({"line": "3", "device": "crane", "zone": "b"}, 0)
    assert rule.matches({"line": 4, "device": "crane", "zone": "b"}, 0)  # an int: its text
    assert not rule.matches({"line": "5", "device": "crane", "zone": "b"}, 0)
    assert not rule.matches({"line": "3", "device": "crane", "zone": "a"}, 0)
    assert not rule.matches({"line": "3", "device": "crane"}, 0)  # no zone: outside
    assert not rule.matches({"line": "03", "device": "crane", "zone": "b"}, 0)
    assert not rule.matches(None, 0)
    assert not parse("zone not in (a)").matches({}, 0)
    assert parse("zone not in (a)").matches({"zone": "c"}, 0)


@pytest.mark.parametrize(
    ("rule", "when", "inside"),
    [
        ("hour in 0..5", "2026-01-15T04:59:59", True),
        ("hour in 0..5", "2026-01-15T05:00:00", False),  # half-open
        ("hour in 0..5", "2026-01-15T00:00:00", True),
        ("hour in 22..6", "2026-01-15T23:30:00", True),  # wraps midnight
        ("hour in 22..6", "2026-01-15T03:00:00", True),
        ("hour in 22..6", "2026-01-15T06:00:00", False),
        ("hour in 22..6", "2026-01-15T12:00:00", False),
        ("hour in 22..6", "2026-01-15T22:00:00", True),
        # Berlin is UTC+1 in January, UTC+2 in July.
        ("hour in 0..5 tz Europe/Berlin", "2026-01-15T23:30:00", True),
        ("hour in 0..5 tz Europe/Berlin", "2026-01-15T04:30:00", False),
        ("hour in 0..5 tz Europe/Berlin", "2026-07-15T22:30:00", True),
        ("hour in 0..5 tz Europe/Berlin", "2026-07-15T03:30:00", False),
        ("hour in 0..5 tz Asia/Kolkata", "2026-01-15T18:40:00", True),  # 00:10 at +05:30
    ],
)
def test_hour_windows_are_half_open_wrap_midnight_and_follow_the_zone(
    rule: str, when: str, inside: bool
) -> None:
    assert parse(rule).matches(None, at(when)) is inside


def test_the_cached_hour_answer_follows_a_clock_that_jumps_both_ways() -> None:
    rule = parse("hour in 0..5 and line=3")
    night, day = at("2026-03-01T02:15:00"), at("2026-03-01T14:15:00")
    attributes = {"line": "3"}
    answers = [rule.matches(attributes, t) for t in (night, day, night, night + 1, day, night)]
    assert answers == [True, False, True, True, False, True]
    edge = at("2026-03-01T05:00:00")
    assert rule.matches(attributes, edge - 0.001) and not rule.matches(attributes, edge)


# -- the plan -------------------------------------------------------------------------------


def test_the_cohort_goes_to_the_canary_and_everyone_else_by_the_weights() -> None:
    plan = RoutePlan.build(MODEL, cohort_table("line=3", inside=100))
    for line in range(1, 6):
        chosen = Counter(plan.choose(f"cam-{i}", {"line": str(line)}) for i in range(500))
        assert chosen == Counter({"2" if line == 3 else "1": 500}), line
    assert {plan.choose() for _ in range(200)} == {"1"}  # no attributes: outside


def test_inside_the_cohort_the_split_follows_its_weight_and_keys_stick() -> None:
    plan = RoutePlan.build(MODEL, cohort_table("line=3", inside=50, outside=10))
    same_weights = RoutePlan.build(
        MODEL,
        RoutingTable(model=MODEL, stable="1", canary="2", weights={"1": 50, "2": 50}, generation=1),
    )
    inside = {"line": "3"}
    hits = sum(plan.choose(f"cam-{i}", inside) == "2" for i in range(20_000))
    assert binomial_ok(hits, 20_000, 0.5)
    for i in range(200):  # the same layout as a plain table at the cohort's weight
        key = f"cam-{i}"
        assert {plan.choose(key, inside) for _ in range(5)} == {same_weights.choose(key)}
    outside = sum(plan.choose(f"cam-{i}", {"line": "1"}) == "2" for i in range(20_000))
    assert binomial_ok(outside, 20_000, 0.1)


def test_a_time_window_cohort_reads_the_plans_clock() -> None:
    now = [at("2026-01-15T02:00:00")]
    plan = RoutePlan.build(MODEL, cohort_table("hour in 0..5", inside=100), clock=lambda: now[0])
    assert {plan.choose(f"k{i}") for i in range(100)} == {"2"}
    now[0] = at("2026-01-15T12:00:00")
    assert {plan.choose(f"k{i}") for i in range(100)} == {"1"}


def test_a_rule_that_does_not_compile_puts_nobody_in_the_cohort() -> None:
    plan = RoutePlan.build(MODEL, cohort_table("line in (3", inside=100))
    assert plan.cohort is None
    assert {plan.choose(f"k{i}", {"line": "3"}) for i in range(100)} == {"1"}


def test_series_carry_the_cohort_label_only_with_a_rule() -> None:
    registry = CollectorRegistry()
    store = RouterMetrics(registry)
    plan = RoutePlan.build(MODEL, cohort_table("line=3", inside=100), store)
    plan.inside_metrics["2"].served(0.01)
    plan.metrics["1"].served(0.01)
    plain = RoutePlan.build(MODEL, RoutingTable(**{**_plain(), "generation": 2}), store)
    plain.metrics["1"].served(0.01)
    get = registry.get_sample_value
    name = "repo_manager_router_requests_total"
    assert get(name, {"model": MODEL, "version": "2", "cohort": "in", "outcome": "ok"}) == 1
    assert get(name, {"model": MODEL, "version": "1", "cohort": "out", "outcome": "ok"}) == 1
    assert get(name, {"model": MODEL, "version": "1", "outcome": "ok"}) == 1
    assert 'cohort=""' not in generate_latest(registry).decode()


def _plain() -> dict[str, object]:
    return {"model": MODEL, "stable": "1", "canary": "2", "weights": {"1": 90, "2": 10}}


# -- set-weight --cohort, the state and the public name ---------------------------------------


def test_set_weight_words_become_the_cohort_and_the_weights() -> None:
    move = weight_move("50", "line in (3,4)", None)
    assert move.outside == 0 and move.cohort == {"rule": "line in (3,4)", "weight": 50}
    assert weight_move("100", "line=3", "5").outside == 5
    assert weight_move("20", None, None).cohort is KEEP
    cleared = weight_move("20", "-", None)
    assert cleared.cohort is None and cleared.outside == 20
    with pytest.raises(InvalidInputError, match=r"--others .* add --cohort RULE"):
        weight_move("20", None, "5")
    with pytest.raises(InvalidInputError, match=r"^cohort rule 'line=': expected a value"):
        weight_move("100", "line=", None)
    with pytest.raises(InvalidWeightError):
        weight_move("100", "line=3", "101")


def test_the_cohort_is_kept_by_weight_moves_of_its_canary_and_dropped_for_a_new_one() -> None:
    state = RolloutState(
        model=MODEL,
        phase=Phase.PROGRESSING,
        stable="1",
        canary="2",
        weights={"1": 100, "2": 0},
        cohort={"rule": "line=3", "weight": 100},
    )
    again = RolloutState.from_json(state.to_json(), source="test")
    assert again.cohort == state.cohort
    assert again.routing_table().cohort == {"rule": "line=3", "weight": 100}
    assert with_canary_at(state, 25, phase=Phase.ANALYZING).cohort == state.cohort
    assert with_canary_at(state, 25, phase=Phase.PROGRESSING, canary="3").cohort is None
    assert with_canary_at(state, 25, phase=Phase.PROGRESSING, cohort=None).cohort is None


def test_the_weighted_public_names_route_names_the_cohort_so_a_change_reloads_it() -> None:
    table = cohort_table("line=3", inside=50)
    config = public_config("weighted", target=detector_config(), table=table)
    routing = json.loads(config.parameters["routing"].string_value)
    assert routing["cohort"] == {"rule": "line=3", "weight": 50}
    words = unpinned_route("weighted", table)
    assert words == "weighted 1:100,2:0 cohort 'line=3' at 50%"
    assert public_route(config) == words
    assert unpinned_route("weighted", cohort_table("line=4", inside=50)) != words


# -- judged inside the cohort ---------------------------------------------------------------

ROUTER_TEXT = """# TYPE repo_manager_router_requests counter
repo_manager_router_requests_total{model="m",version="1",cohort="in",outcome="ok"} 40
repo_manager_router_requests_total{model="m",version="1",cohort="out",outcome="ok"} 900
repo_manager_router_requests_total{model="m",version="2",cohort="in",outcome="ok"} 60
# TYPE repo_manager_router_errors counter
repo_manager_router_errors_total{model="m",version="2",cohort="in"} 0
repo_manager_router_errors_total{model="m",version="1",cohort="out"} 0
# TYPE repo_manager_router_latency_seconds_sum counter
repo_manager_router_latency_seconds_sum{model="m",version="1",cohort="in"} 0.4
repo_manager_router_latency_seconds_sum{model="m",version="1",cohort="out"} 90.0
repo_manager_router_latency_seconds_sum{model="m",version="2",cohort="in"} 0.9
# TYPE repo_manager_router_latency_seconds_count counter
repo_manager_router_latency_seconds_count{model="m",version="1",cohort="in"} 40
repo_manager_router_latency_seconds_count{model="m",version="1",cohort="out"} 900
repo_manager_router_latency_seconds_count{model="m",version="2",cohort="in"} 60
"""


def test_with_a_cohort_the_canary_is_compared_with_stables_traffic_from_the_cohort(
    http_server,  # type: ignore[no-untyped-def]
) -> None:
    address, _, responses = http_server
    responses["/metrics"] = ROUTER_TEXT.encode()
    snapshot = ScrapeProvider([address]).snapshot("m")
    assert snapshot["router_ok"] == {
        "1": 940.0,
        in_cohort("1"): 40.0,
        "2": 60.0,
        in_cohort("2"): 60.0,
    }
    cohort = {"rule": "line=3", "weight": 60}
    stable, canary = judged_series("1", "2", cohort)
    gates = LiveGates(min_requests=5)
    verdict = judge(snapshot, {}, stable=stable, canary=canary, gates=gates)
    ratio = {g.name: g for g in verdict.gates}["max_latency_ratio[router]"]
    # 15 ms inside the cohort against stable's 10 ms from it (not its 100 ms elsewhere).
    assert ratio.value == pytest.approx(1.5)
    assert judge(snapshot, {}, stable="1", canary="2", gates=gates).gates != verdict.gates
    assert baseline_words(cohort) == "stable inside cohort 'line=3'"


def test_a_cohort_that_is_all_canary_is_judged_against_stables_whole_traffic() -> None:
    cohort = {"rule": "line=3", "weight": 100}
    assert judged_series("1", "2", cohort) == ("1", in_cohort("2"))
    assert baseline_words(cohort) == ("stable outside cohort 'line=3' (the cohort is all canary)")


def test_promql_sums_router_series_by_version_and_cohort(http_server) -> None:  # type: ignore[no-untyped-def]
    address, seen, responses = http_server
    responses["/api/v1/query"] = vector_answer(
        [
            {"metric": {"version": "1", "cohort": "in"}, "value": [0, "4"]},
            {"metric": {"version": "1", "cohort": "out"}, "value": [0, "90"]},
            {"metric": {"version": "2"}, "value": [0, "6"]},
        ]
    )
    snapshot = PromQLProvider(address).snapshot("m")
    assert snapshot["router_ok"] == {"1": 94.0, in_cohort("1"): 4.0, "2": 6.0}
    assert any(q.startswith("query=sum by (version, cohort) (repo_manager_router") for q in seen)


# -- the manager: set-weight records the cohort, promote and rollback clear it -----------------


@pytest.mark.parametrize("ending", ["promote", "rollback"])
def test_the_manager_records_the_cohort_on_each_move_and_clears_it_at_the_end(
    manager: Harness,  # noqa: F811 (the fixture imported above)
    ending: str,
) -> None:
    rollout, _, storage = manager
    state = rollout.set_weight("m", 50, cohort="line in (3, 4)", others="5")
    assert state.cohort == {"rule": "line in (3,4)", "weight": 50}
    assert state.weights == {"1": 95, "2": 5}
    assert state.history[-1].cohort == state.cohort
    assert state.history[-1].action == "set-weight cohort 'line in (3,4)' at 50%, 5% outside it"
    widened = rollout.set_weight("m", 30)
    assert widened.cohort == state.cohort and widened.weights == {"1": 70, "2": 30}
    with pytest.raises(InvalidInputError, match="cohort rule"):
        rollout.set_weight("m", 50, cohort="line in (3")
    assert RolloutState.from_json(storage.read_bytes(state_key("m")) or b"", source="t") == widened
    final = getattr(rollout, ending)("m")
    assert final.cohort is None and all(t.cohort is None for t in final.history[-2:])
    assert RoutingTable.from_document(json.loads(final.to_json())).cohort is None


# -- what status, status --watch and history show -----------------------------------------


def test_status_watch_and_history_show_the_rule_and_the_weight_inside_it(
    manager: Harness,  # noqa: F811 (the fixture imported above)
) -> None:
    rollout = manager[0]
    rollout.set_weight("m", 50, cohort="line=3")
    doc, state = Scripted(manager).read()
    assert doc["cohort"] == {"rule": "line=3", "weight": 50}
    shown = (
        "cohort 'line=3' at 50%: requests it matches go to the canary at 50%, "
        "all others by the weights"
    )
    assert f"  {shown}" in status_text(status_document(cohort=doc["cohort"])).splitlines()
    frames: list[str] = []
    stop = threading.Event()
    clock = itertools.count()
    totals = itertools.count(1)

    def write(frame: str) -> None:
        frames.append(frame)
        stop.set() if len(frames) == 2 else None

    def sample() -> dict[str, dict[str, float]]:
        n = 10.0 * next(totals)
        inside = {in_cohort("1"): n, in_cohort("2"): n}
        return {"router_ok": {"1": 3 * n, "2": n, **inside}}

    Watch(
        read=lambda: (doc, state),
        sample=sample,
        write=write,
        tty=True,
        interval=0.001,
        stop=stop,
        source="scrape",
        clock=lambda: float(next(clock)),
    ).run()
    frame = frames[-1].splitlines()
    assert f"cohort    {shown}" in frame
    assert any(line.split()[:3] == ["router", "canary:in", "v2"] for line in frame), frame
    text = history_text([entry_document(t) for t in state.history])
    assert "set-weight cohort 'line=3' at 50%, 0% outside it" in text
