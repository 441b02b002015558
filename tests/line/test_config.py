import os
import subprocess
import sys
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


def _check_config(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("LINEGUARD_")}
    run_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "line_agent.cli", "check-config", "--quiet", *args],
                          capture_output=True, text=True, timeout=120, env=run_env)


def _yaml(path: Path, detector: object, plc: dict[str, object], source: str = "synthetic://?seed=1") -> Path:
    path.write_text(yaml.safe_dump({"line": "l1", "cameras": [{"name": "c1", "source": source,
                                                                "detector": detector}], "plc": plc}))
    return path


def test_check_config_loads_every_model_and_names_the_missing_one(tmp_path: Path) -> None:
    plc = {"driver": "modbus", "url": "modbus://127.0.0.1:5020"}
    ok = _check_config(str(_yaml(tmp_path / "ok.yaml", "hybrid:pcb-synth-hybrid", plc)),
                       env={"LINEGUARD_DATA_DIR": str(tmp_path / "data")})
    assert ok.returncode == 0, ok.stderr
    assert "ok   model c1: hybrid:pcb-synth-hybrid" in ok.stdout
    bad = _check_config(str(_yaml(tmp_path / "bad.yaml", "hybrid:does-not-exist", plc)),
                        env={"LINEGUARD_DATA_DIR": str(tmp_path / "data")})
    assert bad.returncode == 1
    assert "FAIL model c1" in bad.stderr and "does-not-exist" in bad.stderr and "Traceback" not in bad.stderr


def test_check_config_refuses_a_url_of_another_driver(tmp_path: Path) -> None:
    out = _check_config(str(_yaml(tmp_path / "x.yaml", "template",
                                  {"driver": "modbus", "url": "opc.tcp://127.0.0.1:4840/lineguard/"})))
    assert out.returncode == 2 and "plc" in out.stderr and "Traceback" not in out.stderr
    out = _check_config(str(_yaml(tmp_path / "y.yaml", "template",
                                  {"driver": "opcua", "url": "opc.tcp://127.0.0.1:4840/lineguard/"})))
    assert out.returncode == 0, out.stderr


def test_check_config_probe_reaches_camera_plc_and_broker(tmp_path: Path) -> None:
    from hardware.sim_plc import SimPlcProcess
    from line_agent.services import free_port

    dead = free_port()
    cfg = _yaml(tmp_path / "p.yaml", "template", {"driver": "modbus", "url": f"modbus://127.0.0.1:{dead}"},
                source=str(tmp_path / "missing.avi"))
    env = {"LINEGUARD_MQTT_URL": f"mqtt://127.0.0.1:{free_port()}", "LINEGUARD_DATA_DIR": str(tmp_path / "d")}
    out = _check_config("--probe", str(cfg), env=env)
    assert out.returncode == 1
    for what in ("FAIL camera c1", "FAIL plc", "FAIL broker"):
        assert what in out.stderr, out.stderr
    sim = SimPlcProcess(0).start()
    try:
        cfg = _yaml(tmp_path / "q.yaml", "template", {"driver": "modbus", "url": f"modbus://127.0.0.1:{sim.port}"})
        env.pop("LINEGUARD_MQTT_URL")
        env["LINEGUARD_MQTT_LISTEN"] = f"127.0.0.1:{free_port()}"
        out = _check_config("--probe", str(cfg), env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "ok   camera c1" in out.stdout and "ok   plc: modbus" in out.stdout and "ok   broker" in out.stdout
    finally:
        sim.terminate()
