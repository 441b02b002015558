from __future__ import annotations

import pytest

from hardware.tags import TagMap, TagMapError, WriteRefused

GOOD = """
line: l1
signals:
  - {name: speed, type: uint16, direction: read_write, scale: 0.1, min: 0, max: 100,
     modbus: {kind: holding, offset: 1}}
  - {name: temp, type: float32, direction: read, modbus: {kind: input, offset: 0}}
  - {name: gate, type: bool, direction: read, modbus: {kind: coil, offset: 0}}
  - {name: recipe, type: uint16, direction: read_write, modbus: {kind: holding, offset: 2}}
write_allow: [speed]
"""


def test_default_map_loads() -> None:
    t = TagMap.load()
    assert t.line == "line1"
    assert "reject_seq" in t.write_allow
    assert "recipe_id" not in t.write_allow
    assert t.get("speed_setpoint").modbus is not None


def test_scaling_round_trip() -> None:
    t = TagMap.from_yaml(GOOD)
    plan = t.plan_write("speed", 55.5)
    assert plan.raw == 555
    assert t.get("speed").to_engineering(555) == pytest.approx(55.5)


@pytest.mark.parametrize(
    ("tag", "value", "reason"),
    [
        ("recipe", 3, "not in the write allow-list"),
        ("gate", True, "not in the write allow-list"),
        ("nope", 1, "unknown tag"),
        ("speed", 100.1, "above the maximum 100"),
        ("speed", -1, "below the minimum 0"),
        ("speed", True, "needs a number"),
        ("speed", float("nan"), "not finite"),
    ],
)
def test_write_refused(tag: str, value: object, reason: str) -> None:
    t = TagMap.from_yaml(GOOD)
    with pytest.raises(WriteRefused, match=reason) as ei:
        t.plan_write(tag, value)
    assert ei.value.tag == tag


def test_read_only_tag_in_allow_list_refused() -> None:
    text = GOOD.replace("write_allow: [speed]", "write_allow: [speed, temp]")
    t = TagMap.from_yaml(text)
    with pytest.raises(WriteRefused, match="read-only"):
        t.plan_write("temp", 1.0)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (
            lambda s: s.replace(
                "type: uint16, direction: read_write, scale", "type: uint17, direction: read_write, scale"
            ),
            "signals.0.type",
        ),
        (lambda s: s.replace("write_allow: [speed]", "write_allow: [sped]"), "sped"),
        (lambda s: s.replace("offset: 2}}", "offset: 1}}"), "overlaps"),
        (lambda s: s.replace("min: 0, max: 100", "min: 10, max: 5"), "min (10.0) is greater than max"),
        (
            lambda s: s.replace(
                "type: bool, direction: read, modbus: {kind: coil", "type: int16, direction: read, modbus: {kind: coil"
            ),
            "coil can only hold type bool",
        ),
        (
            lambda s: s.replace("direction: read, modbus: {kind: input", "direction: read_write, modbus: {kind: input"),
            "read-only on the wire",
        ),
        (lambda s: s.replace("scale: 0.1", "scael: 0.1"), "signals.0.scael"),
        (lambda s: s.replace("line: l1\n", ""), "line"),
        (lambda s: "- just\n- a list\n", "top level must be a mapping"),
        (lambda s: "line: [unclosed\n", "not valid YAML"),
    ],
)
def test_invalid_yaml_names_field(mutate, field: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TagMapError) as ei:
        TagMap.from_yaml(mutate(GOOD), "test.yaml")
    assert field in str(ei.value)
    assert "test.yaml" in str(ei.value)
