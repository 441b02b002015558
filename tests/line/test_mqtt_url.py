"""The one MQTT URL parser (line_agent.mqtt.parse_mqtt_url), used by the runtime, ingest and the PLC drivers."""

from __future__ import annotations

import pytest

from hardware import mqtt_cmd, sim_mqtt
from line_agent.mqtt import MqttUrl, parse_mqtt_url


@pytest.mark.parametrize(("url", "want"), [
    ("mqtt://127.0.0.1:1884", MqttUrl("127.0.0.1", 1884, None, None, False)),
    ("mqtt://broker", MqttUrl("broker", 1883, None, None, False)),
    ("mqtts://broker", MqttUrl("broker", 8883, None, None, True)),
    ("tcp://h:1", MqttUrl("h", 1, None, None, False)),
    ("mqtt://runtime:p%40ss%3Aw@h:2/G/N/plc", MqttUrl("h", 2, "runtime", "p@ss:w", False)),  # decoded, path ignored
    ("mqtt://dev@h:3", MqttUrl("h", 3, "dev", None, False)),
])
def test_parse(url: str, want: MqttUrl) -> None:
    got = parse_mqtt_url(url)
    assert got == want
    host, port, user, password, tls = got  # still unpacks as the tuple callers use
    assert (got.host, got.port, got.user, got.password, got.tls) == (host, port, user, password, tls)


@pytest.mark.parametrize("url", ["http://h:1", "mqtt://", "h:1883", "mqtt://h:notaport", "mqtt://h:99999", ""])
def test_bad_urls_are_refused_with_the_expected_form(url: str) -> None:
    with pytest.raises(ValueError, match=r"not an MQTT URL.*expected mqtt://host:port"):
        parse_mqtt_url(url)


def test_the_plc_side_has_no_parser_of_its_own() -> None:
    assert not hasattr(mqtt_cmd, "mqtt_credentials")
    assert mqtt_cmd.parse_mqtt_url is parse_mqtt_url and sim_mqtt.parse_mqtt_url is parse_mqtt_url


def test_ack_retention_follows_the_brokers_autosave(monkeypatch: pytest.MonkeyPatch) -> None:
    """The post-acknowledgement window covers the broker's save period: a save at the next loop pass needs
    only the save's own time, a save every 5 s needs those 5 s on top; an explicit value wins; 0 turns it off."""
    import pydantic

    from line_agent.settings import BROKER_SAVE_MARGIN_S, TIMED_AUTOSAVE_S, Settings, ack_retention_for

    for var in ("LINEGUARD_MQTT_ACK_RETENTION_S", "LINEGUARD_MQTT_AUTOSAVE_CHANGES"):
        monkeypatch.delenv(var, raising=False)
    assert Settings(_env_file=None).ack_retention_s == BROKER_SAVE_MARGIN_S  # type: ignore[call-arg]
    timed = Settings(_env_file=None, mqtt_autosave_changes=0)  # type: ignore[call-arg]
    assert timed.ack_retention_s == TIMED_AUTOSAVE_S + BROKER_SAVE_MARGIN_S
    assert ack_retention_for(0, 30) == 30 + BROKER_SAVE_MARGIN_S
    monkeypatch.setenv("LINEGUARD_MQTT_ACK_RETENTION_S", "12.5")
    assert Settings(_env_file=None).ack_retention_s == 12.5  # type: ignore[call-arg]
    monkeypatch.setenv("LINEGUARD_MQTT_ACK_RETENTION_S", "0")
    assert Settings(_env_file=None).ack_retention_s == 0.0  # type: ignore[call-arg]
    monkeypatch.setenv("LINEGUARD_MQTT_ACK_RETENTION_S", "-1")
    with pytest.raises(pydantic.ValidationError, match="mqtt_ack_retention_s"):
        Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize(("var", "value", "says"), [
    ("LINEGUARD_MQTT_URL", "mqtt://dev:s3cret-pw@broker:notaport", "LINEGUARD_MQTT_URL: Value error, not an MQTT URL"),
    ("LINEGUARD_INGEST_MQTT_URL", "mqtt://ingest:s3cret-pw@broker:99999", "LINEGUARD_INGEST_MQTT_URL: Value error"),
    ("LINEGUARD_MQTT_ACK_RETENTION_S", "-1", "LINEGUARD_MQTT_ACK_RETENTION_S: Input should be greater than"),
])
def test_a_bad_setting_is_one_clear_line_without_its_secret(var: str, value: str, says: str) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEGUARD_")} | {var: value}
    p = subprocess.run([sys.executable, "-m", "line_agent.cli", "replay", "csv", "/etc/hostname", "--line", "x",
                        "-m", "a"], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert says in p.stderr and "Traceback" not in p.stderr and "s3cret-pw" not in p.stderr + p.stdout
