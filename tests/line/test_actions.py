import pytest
from pydantic import ValidationError

from line_agent.actions import BurstRule, ControlRules, DecisionRules
from line_agent.contracts import LineAction as Action


def actions(rules: DecisionRules, seq: list[tuple[str, float]]) -> list[list[Action]]:
    return [[t.action for t in rules.on_decision(d, ts)] for d, ts in seq]


def test_reject_gate_fires_for_rejects_only() -> None:
    r = DecisionRules(ControlRules(stop=None))
    out = actions(r, [("pass", 0), ("reject", 1), ("rework", 2), ("pass", 3)])
    assert out == [[], [Action.REJECT_PART], [], []]


def test_stop_trips_exactly_at_threshold_in_parts() -> None:
    r = DecisionRules(ControlRules(stop=BurstRule(count=3, within_parts=5)))
    seq = [("reject", 0), ("pass", 1), ("reject", 2), ("pass", 3)]
    assert all(Action.STOP not in a for a in actions(r, seq))
    assert Action.STOP in actions(r, [("reject", 4)])[0]  # 3 rejects in the last 5 parts


def test_old_rejects_slide_out_of_the_part_window() -> None:
    r = DecisionRules(ControlRules(stop=BurstRule(count=2, within_parts=3)))
    out = actions(r, [("reject", 0), ("pass", 1), ("pass", 2), ("reject", 3)])
    assert all(Action.STOP not in a for a in out)


def test_stop_in_seconds_window() -> None:
    r = DecisionRules(ControlRules(stop=BurstRule(count=2, within_s=10)))
    assert Action.STOP not in actions(r, [("reject", 0), ("reject", 20)])[1]
    assert Action.STOP in actions(r, [("reject", 25)])[0]


def test_slow_before_stop_and_window_resets_after_trip() -> None:
    r = DecisionRules(ControlRules(slow=BurstRule(count=2, within_parts=4), stop=BurstRule(count=4, within_parts=4)))
    out = actions(r, [("reject", 0), ("reject", 1)])
    assert out[1] == [Action.REJECT_PART, Action.SLOW]
    out = actions(r, [("reject", 2), ("reject", 3)])
    assert Action.STOP in out[1]
    # After a stop the windows start empty: one more reject trips nothing.
    assert actions(r, [("reject", 4)]) == [[Action.REJECT_PART]]


@pytest.mark.parametrize("bad", [{"count": 3}, {"count": 5, "within_parts": 2}, {"count": 0, "within_s": 1}])
def test_invalid_rules_name_the_problem(bad: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        BurstRule(**bad)
