"""Compose files: interpolated like `docker compose config`, validated against the Compose spec schema.

Docker cannot run here, so the check is the official compose-spec JSON schema (vendored in the
check-jsonschema wheel) plus the cross-references the schema cannot see: depends_on targets, bind
mount sources, required secrets, health checks.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from infra_common import INFRA

COMPOSE_DIR = INFRA / "compose"
COMPOSE_FILES = sorted(COMPOSE_DIR.glob("*.yaml"))
COMPOSE_FILES = [p for p in COMPOSE_FILES if p.name != "line.example.yaml"]

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $VAR; $$ is a literal $.
_VAR = re.compile(
    r"\$(?:\$"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(ValueError):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose-spec interpolation on every string of a parsed YAML document."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        current = env.get(name)
        empty = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-"):
            return arg if empty else str(current)
        if op in (":?", "?"):
            if empty:
                raise MissingVariable(f"{name}: {arg}")
            return str(current)
        return current or ""

    return _VAR.sub(sub, value)


def env_example() -> dict[str, str]:
    """.env.example with every empty secret filled by a dummy value, as an operator would."""
    env: dict[str, str] = {}
    for line in (COMPOSE_DIR / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, val = line.partition("=")
            env[key.strip()] = val.strip() or f"dummy-{key.strip().lower()}"
    return env


def compose_schema() -> dict[str, Any]:
    ref = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    return dict(json.loads(ref.read_text()))


def compose_validator() -> jsonschema.protocols.Validator:
    schema = compose_schema()
    # The schema declares its own draft (2020-12 today); use exactly that one.
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def load(path: Path, env: dict[str, str]) -> dict[str, Any]:
    raw = yaml.safe_load(path.read_text())
    assert isinstance(raw, dict), f"{path.name}: top level must be a mapping"
    return dict(interpolate(raw, env))


def test_interpolation_follows_compose_rules() -> None:
    env = {"A": "1", "E": ""}
    assert interpolate("$$SYS ${A} $A ${B:-d} ${E:-d} ${E-d} ${B-d}", env) == "$SYS 1 1 d d  d"
    with pytest.raises(MissingVariable, match="E: need E"):
        interpolate("${E:?need E}", env)
    assert interpolate(["${A:?x}", {"k": "${A}"}, 3], env) == ["1", {"k": "1"}, 3]


def test_compose_files_exist() -> None:
    assert {p.name for p in COMPOSE_FILES} == {"line.yaml", "plant.yaml"}


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_matches_compose_spec_schema(path: Path) -> None:
    doc = load(path, env_example())
    errors = sorted(compose_validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_schema_rejects_a_broken_compose_file() -> None:
    """Guard against a validator that accepts everything (e.g. a schema that failed to load)."""
    doc = load(COMPOSE_DIR / "line.yaml", env_example())
    doc["services"]["edge"]["healthcheck"]["retries"] = [3]
    doc["services"]["edge"]["restrat"] = "always"
    errors = list(compose_validator().iter_errors(doc))
    assert len(errors) >= 2


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_secrets_are_required_from_env_not_committed(path: Path) -> None:
    env = env_example()
    doc = load(path, env)
    for svc_name, svc in doc["services"].items():
        raw_env = yaml.safe_load(path.read_text())["services"][svc_name].get("environment", {})
        for key, val in raw_env.items():
            if re.search(r"PASSWORD|TOKEN|SECRET|DATABASE_URL|MQTT_URL", key):
                # Every secret comes from .env via ${VAR:?...}: compose refuses to start without it.
                assert re.search(r"\$\{[A-Z_]+:\?", str(val)), f"{path.name} {svc_name}.{key} is not ${{VAR:?}}"
        assert svc  # parsed
    for secret in ("POSTGRES_PASSWORD", "MQTT_LINEGUARD_PASSWORD", "LINEGUARD_ADMIN_TOKEN"):
        with pytest.raises(MissingVariable, match=secret):
            load(path, {**env, secret: ""})


def test_env_example_has_no_values_for_secrets() -> None:
    for line in (COMPOSE_DIR / ".env.example").read_text().splitlines():
        key, _, val = line.partition("=")
        if re.search(r"PASSWORD|TOKEN", key) and not key.startswith("#"):
            assert val == "", f".env.example ships a value for {key}"


def test_every_required_variable_is_documented_in_env_example() -> None:
    documented = set(env_example())
    for path in COMPOSE_FILES:
        used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", path.read_text()))
        assert used <= documented, f"{path.name} uses undocumented variables {sorted(used - documented)}"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_cross_references(path: Path) -> None:
    doc = load(path, env_example())
    services: dict[str, Any] = doc["services"]
    named_volumes = set(doc.get("volumes", {}))
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            if source.startswith((".", "/")):
                host = (COMPOSE_DIR / source).resolve()
                # The certificate folder is generated by gen-dev-certs.sh, never committed.
                if host != (INFRA / "mosquitto" / "certs").resolve():
                    assert host.exists(), f"{name}: bind mount source {source} does not exist"
            else:
                assert source in named_volumes, f"{name}: volume {source} not declared"
        one_shot = svc.get("restart") == "no"
        if not one_shot:
            assert "healthcheck" in svc, f"{name} has no healthcheck"
            assert svc.get("restart") == "unless-stopped", f"{name} does not restart"


def test_line_compose_shape() -> None:
    doc = load(COMPOSE_DIR / "line.yaml", env_example())
    svcs = doc["services"]
    assert svcs["timescaledb"]["image"] == "timescale/timescaledb:latest-pg16"
    assert svcs["edge"]["command"][:1] == ["run"]
    assert "8080" in svcs["edge"]["ports"][0]
    # Console on the edge's 8080; the broker publishes only its TLS listener.
    assert all(":8883" in p for p in svcs["mosquitto"]["ports"])
    assert svcs["edge"]["depends_on"]["mosquitto"]["condition"] == "service_healthy"


def test_plant_compose_shape() -> None:
    doc = load(COMPOSE_DIR / "plant.yaml", env_example())
    svcs = doc["services"]
    # Two ingest workers (slices, each its own session) in one container: never two containers with one index.
    assert svcs["ingest"]["command"] == ["ingest", "--workers", "2"]
    assert int(svcs["ingest"]["deploy"]["replicas"]) == 1
    assert svcs["edge"]["profiles"] == ["edges"]
    assert "ports" not in svcs["edge"], "scaled edges cannot publish a fixed host port"
    assert svcs["ingest"]["environment"]["LINEGUARD_MQTT_URL"].startswith("mqtt://ingest:")


def test_line_example_configs_agree() -> None:
    a = yaml.safe_load((COMPOSE_DIR / "line.example.yaml").read_text())
    b = yaml.safe_load((INFRA / "edge" / "line.example.yaml").read_text())
    assert a == b
