from pathlib import Path

import pytest
import yaml

from line_agent.config import ConfigError, demo_line_config, load_line_config
from line_agent.settings import Settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "line.yaml"


@pytest.mark.parametrize("path", [EXAMPLE, *sorted(REPO.glob("infra/**/line*.example.yaml"))], ids=str)
def test_every_shipped_line_yaml_is_valid(path: Path) -> None:
    assert load_line_config(path).cameras


def test_example_config_is_valid() -> None:
    cfg = load_line_config(EXAMPLE)
    assert cfg.cameras[0].name == "aoi-top"
    assert cfg.control.stop is not None and cfg.control.stop.count == 8


def _write(tmp_path: Path, data: object) -> Path:
    p = tmp_path / "line.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["cameras"][0].update(detector="magic"), "cameras.0.detector"),
        (lambda d: d["cameras"][0].update(source="ftp://x"), "cameras.0.source"),
        (lambda d: d.update(cameras=[]), "cameras"),
        (lambda d: d["plc"].update(url="opc.tcp://x:4840"), "plc"),
        (lambda d: d["control"]["stop"].update(count=50), "control.stop"),
        (lambda d: d.update(line="bad line/name"), "line"),
        (lambda d: d.update(colour="blue"), "colour"),
    ],
)
def test_invalid_config_names_the_field(tmp_path: Path, mutate, field: str) -> None:  # type: ignore[no-untyped-def]
    data = yaml.safe_load(EXAMPLE.read_text())
    mutate(data)
    with pytest.raises(ConfigError) as err:
        load_line_config(_write(tmp_path, data))
    assert field in str(err.value)


def test_unreadable_and_non_mapping_configs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_line_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_line_config(_write(tmp_path, [1, 2]))
    bad = tmp_path / "bad.yaml"
    bad.write_text("cameras: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_line_config(bad)


def test_demo_config_rejects_defects() -> None:
    cfg = demo_line_config(2)
    assert cfg.line == "line2" and cfg.cameras[0].source.startswith("synthetic://")
    assert cfg.cameras[0].qa.rules


def test_settings_from_env_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINEGUARD_API_PORT", "9001")
    monkeypatch.setenv("LINEGUARD_MQTT_URL", "mqtt://127.0.0.1:1883")
    s = Settings()
    assert s.api_port == 9001 and s.mqtt_url == "mqtt://127.0.0.1:1883"
    monkeypatch.setenv("LINEGUARD_MQTT_URL", "http://nope")
    with pytest.raises(ValueError, match="mqtt_url"):
        Settings()


def test_detector_specs_load_or_fail_clearly(tmp_path: Path) -> None:
    from line_agent.runtime import load_detector
    from vision.detectors.hybrid import HybridDetector

    assert load_detector("template").name == "template-diff"
    assert load_detector("onnx:pcb-synth").name.startswith("onnx:pcb-synth")  # the shipped model
    with pytest.raises(FileNotFoundError, match="no hybrid ONNX model"):
        load_detector(f"hybrid:{tmp_path}")
    with pytest.raises(LookupError, match="'no-such-model' is neither a path nor a registry entry"):
        load_detector("hybrid:no-such-model", registry=tmp_path)
    assert load_detector("hybrid:pcb-synth-hybrid").name.startswith("hybrid:pcb-synth-hybrid")  # shipped
    fast = load_detector("hybrid:pcb-synth-hybrid?tta=1")
    assert isinstance(fast, HybridDetector) and fast.tta == 1 and load_detector("hybrid:pcb-synth-hybrid").tta == 4
    adaptive = load_detector("hybrid:pcb-synth-hybrid?settled=0.95")
    assert isinstance(adaptive, HybridDetector) and adaptive.tta == 4 and adaptive.tta_settled == 0.95
    with pytest.raises(ValueError, match="unknown detector spec"):
        load_detector("magic")
