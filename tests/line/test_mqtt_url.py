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
