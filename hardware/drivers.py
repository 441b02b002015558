"""The PLC drivers by config key, and the check of each driver's URL.

`DRIVERS` is the one table from the key a line YAML gives as ``plc.driver`` to how that driver's URL is
checked and how the driver is built. Config validation (`validate_plc_url`) and the runtime
(`make_driver`) both go through it, so a URL that passes validation is exactly one the driver can use.

URL formats (port always required: a PLC on a default port nobody wrote down is a commissioning trap):

- ``modbus``:    ``modbus://HOST:PORT`` or ``modbus://HOST:PORT?unit=N`` (Modbus unit/device id 0-255, default 1)
- ``opcua``:     ``opc.tcp://[USER:PASS@]HOST:PORT[/PATH]`` (the server's endpoint URL, path kept as written)
- ``sparkplug``: ``mqtt://[USER:PASS@]HOST:PORT/GROUP/EDGE_NODE[/DEVICE]`` (the broker, then the Sparkplug B
  address of the PLC; without DEVICE the commands are node-level NCMD/NDATA)

Cheap to import: pymodbus, asyncua and paho/pysparkplug are imported only when a driver is built.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlsplit

from hardware.tags import TagMap

if TYPE_CHECKING:
    from hardware.driver import PlcDriver

_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?)*$")
# Sparkplug B forbids these in group, edge node and device ids (they are MQTT topic separators/wildcards).
_SPARKPLUG_FORBIDDEN = ("/", "+", "#")


@dataclass(frozen=True, slots=True)
class SparkplugUrl:
    """A checked ``mqtt://…/GROUP/NODE[/DEVICE]`` URL, split into the broker and the Sparkplug address."""

    host: str
    port: int
    username: str | None
    password: str | None
    group_id: str
    edge_node_id: str
    device_id: str | None

    @property
    def broker(self) -> str:
        """The broker as ``mqtt://[USER:PASS@]HOST:PORT`` (what the MQTT client connects to)."""
        return f"mqtt://{_userinfo(self.username, self.password)}{_fmt_host(self.host)}:{self.port}"

    @property
    def address(self) -> str:
        """``GROUP/NODE[/DEVICE]`` (each part percent-encoded where needed)."""
        ids = [self.group_id, self.edge_node_id] + ([self.device_id] if self.device_id is not None else [])
        return "/".join(quote(i, safe="") for i in ids)

    @property
    def url(self) -> str:
        return f"{self.broker}/{self.address}"


@dataclass(frozen=True, slots=True)
class DriverSpec:
    """One row of `DRIVERS`: the URL form, its check (returns the normalised URL) and the constructor."""

    key: str
    url_format: str
    validate: Callable[[str], str]
    build: Callable[[str, TagMap, dict[str, Any]], PlcDriver]


# ----- URL checks


def _fmt_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _userinfo(username: str | None, password: str | None) -> str:
    if username is None:
        return ""
    user = quote(username, safe="")
    return f"{user}:{quote(password, safe='')}@" if password is not None else f"{user}@"


def _split(driver: str, url: str, scheme: str, fmt: str) -> tuple[SplitResult, str, int]:
    """Common part of every check: scheme, host and port. Returns the split URL, host and port."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"plc driver {driver!r}: url is empty; expected {fmt}")
    url = url.strip()
    parts = urlsplit(url)
    got = parts.scheme.lower()
    if got != scheme:
        owner = next((k for k, s in _SCHEMES.items() if s == got), None)
        hint = f" (that is a {owner!r} url)" if owner else ""
        shown = f"{got}://" if got else "no scheme"
        raise ValueError(f"plc driver {driver!r} needs a {scheme}:// url like {fmt}; got {shown} in {url!r}{hint}")
    netloc = parts.netloc.rpartition("@")[2]
    if not netloc:
        raise ValueError(f"plc driver {driver!r}: no host in {url!r}; expected {fmt}")
    try:
        port = parts.port
    except ValueError:
        # e.g. "h:4840x" or "h:99999"; urlsplit's own message does not say which URL.
        raw = netloc.rsplit("]", 1)[-1].rpartition(":")[2]
        raise ValueError(
            f"plc driver {driver!r}: port {raw!r} in {url!r} is not a number in 1-65535; expected {fmt}"
        ) from None
    host = parts.hostname or ""
    if not host:
        raise ValueError(f"plc driver {driver!r}: no host in {url!r}; expected {fmt}")
    if not _valid_host(host, bracketed=netloc.startswith("[")):
        raise ValueError(f"plc driver {driver!r}: {host!r} in {url!r} is not a host name or IP address")
    if port is None:
        raise ValueError(f"plc driver {driver!r}: no port in {url!r}; write it out, e.g. {fmt}")
    if not 1 <= port <= 65535:
        raise ValueError(f"plc driver {driver!r}: port {port} in {url!r} is not in 1-65535")
    if parts.fragment:
        raise ValueError(f"plc driver {driver!r}: unexpected '#{parts.fragment}' in {url!r}")
    return parts, host, port


def _valid_host(host: str, *, bracketed: bool) -> bool:
    if bracketed:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    return bool(_HOSTNAME.match(host))


def parse_modbus_url(url: str) -> tuple[str, int, int]:
    """Check a modbus driver URL; returns (host, port, unit id). ValueError naming what is wrong."""
    fmt = "modbus://HOST:PORT[?unit=N]"
    parts, host, port = _split("modbus", url, "modbus", fmt)
    if "@" in parts.netloc:
        raise ValueError(f"plc driver 'modbus': Modbus TCP has no login; remove the user part of {url!r}")
    if parts.path not in ("", "/"):
        raise ValueError(f"plc driver 'modbus': unexpected path {parts.path!r} in {url!r}; expected {fmt}")
    unit = 1
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key != "unit":
            raise ValueError(f"plc driver 'modbus': unknown query parameter {key!r} in {url!r}; only 'unit'")
        if not value.isdigit() or not 0 <= int(value) <= 255:
            raise ValueError(f"plc driver 'modbus': unit {value!r} in {url!r} is not a number in 0-255")
        unit = int(value)
    return host, port, unit


def _validate_modbus(url: str) -> str:
    host, port, unit = parse_modbus_url(url)
    return f"modbus://{_fmt_host(host)}:{port}" + (f"?unit={unit}" if unit != 1 else "")


def _validate_opcua(url: str) -> str:
    fmt = "opc.tcp://HOST:PORT[/PATH]"
    parts, host, port = _split("opcua", url, "opc.tcp", fmt)
    if parts.query:
        raise ValueError(f"plc driver 'opcua': unexpected query '?{parts.query}' in {url!r}; expected {fmt}")
    # Credentials and path are kept as written: asyncua reads the user from the URL, and the path is part of
    # the endpoint the server advertises.
    user = parts.netloc.rpartition("@")[0]
    return f"opc.tcp://{user + '@' if user else ''}{_fmt_host(host)}:{port}{parts.path}"


def parse_sparkplug_url(url: str) -> SparkplugUrl:
    """Check a sparkplug driver URL and split it; raises ValueError naming what is wrong."""
    fmt = "mqtt://[USER:PASS@]HOST:PORT/GROUP/EDGE_NODE[/DEVICE]"
    if isinstance(url, str) and url.strip().lower().startswith("mqtts://"):
        raise ValueError(f"plc driver 'sparkplug': TLS (mqtts://) is not supported yet; got {url!r}")
    parts, host, port = _split("sparkplug", url, "mqtt", fmt)
    if parts.query:
        raise ValueError(f"plc driver 'sparkplug': unexpected query '?{parts.query}' in {url!r}; expected {fmt}")
    path = parts.path.removeprefix("/")
    path = path.removesuffix("/")
    raw_ids = path.split("/") if path else []
    if len(raw_ids) not in (2, 3):
        raise ValueError(
            f"plc driver 'sparkplug': {url!r} must name the PLC's Sparkplug address after the broker, "
            f"as /GROUP/EDGE_NODE or /GROUP/EDGE_NODE/DEVICE (got {len(raw_ids)} path part(s)); expected {fmt}"
        )
    ids = [unquote(i) for i in raw_ids]
    for what, value in zip(("group id", "edge node id", "device id"), ids, strict=False):
        if not value.strip():
            raise ValueError(f"plc driver 'sparkplug': empty {what} in {url!r}; expected {fmt}")
        bad = [c for c in _SPARKPLUG_FORBIDDEN if c in value]
        if bad:
            raise ValueError(f"plc driver 'sparkplug': {what} {value!r} in {url!r} contains {bad[0]!r}")
    return SparkplugUrl(
        host=host,
        port=port,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        group_id=ids[0],
        edge_node_id=ids[1],
        device_id=ids[2] if len(ids) == 3 else None,
    )


def _validate_sparkplug(url: str) -> str:
    return parse_sparkplug_url(url).url


# ----- constructors (heavy imports here, not at module level)


def _build_modbus(url: str, tags: TagMap, opts: dict[str, Any]) -> PlcDriver:
    from hardware.modbus import ModbusDriver

    host, port, unit = parse_modbus_url(url)
    opts.setdefault("device_id", unit)
    return ModbusDriver(tags, host, port, **opts)


def _build_opcua(url: str, tags: TagMap, opts: dict[str, Any]) -> PlcDriver:
    from hardware.opcua import OpcUaDriver

    return OpcUaDriver(tags, _validate_opcua(url), **opts)


def _build_sparkplug(url: str, tags: TagMap, opts: dict[str, Any]) -> PlcDriver:
    from hardware.mqtt_cmd import SparkplugDriver, SparkplugTarget

    sp = parse_sparkplug_url(url)
    target = SparkplugTarget(sp.group_id, sp.edge_node_id, sp.device_id)
    return SparkplugDriver(tags, sp.broker, target, **opts)


DRIVERS: dict[str, DriverSpec] = {
    "modbus": DriverSpec("modbus", "modbus://HOST:PORT[?unit=N]", _validate_modbus, _build_modbus),
    "opcua": DriverSpec("opcua", "opc.tcp://[USER:PASS@]HOST:PORT[/PATH]", _validate_opcua, _build_opcua),
    "sparkplug": DriverSpec(
        "sparkplug", "mqtt://[USER:PASS@]HOST:PORT/GROUP/EDGE_NODE[/DEVICE]", _validate_sparkplug, _build_sparkplug
    ),
}
_SCHEMES = {"modbus": "modbus", "opcua": "opc.tcp", "sparkplug": "mqtt"}


def _spec(driver: str) -> DriverSpec:
    spec = DRIVERS.get(driver)
    if spec is None:
        known = ", ".join(sorted(DRIVERS))
        raise ValueError(f"unknown plc driver {driver!r}; known drivers: {known}")
    return spec


def validate_plc_url(driver: str, url: str) -> str:
    """Check `url` for `driver` and return it normalised; ValueError saying what is wrong otherwise."""
    return _spec(driver).validate(url)


def make_driver(driver: str, url: str, tags: TagMap, **opts: Any) -> PlcDriver:
    """Build the driver for `driver` (a `DRIVERS` key) talking to `url`; `opts` go to its constructor
    (e.g. io_timeout_s, backoff_initial_s, backoff_max_s). Not connected yet: call ``connect()`` or hand it
    to `hardware.safety.LineController`."""
    spec = _spec(driver)
    spec.validate(url)
    return spec.build(url, tags, dict(opts))
