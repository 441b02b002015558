"""Process-wide settings from the environment (``LINEGUARD_*``) and an optional ``.env`` file.

Per-line structure (cameras, PLC tags, topics, rules) lives in the line YAML instead
(see line_agent.config); these are the deployment knobs that differ between boxes.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]

#: The embedded Mosquitto's save period when it does not save on every change (``mqtt_autosave_changes`` 0).
TIMED_AUTOSAVE_S = 5
#: How long after a change a Mosquitto save can still be unwritten beyond its period: the broker rewrites its
#: whole in-memory database (and fsyncs it) per save, some milliseconds to a fraction of a second with a large
#: queue for offline sessions (docs/DEPLOY.md), more on a loaded box. 3 s leaves ample room.
BROKER_SAVE_MARGIN_S = 3.0


def ack_retention_for(autosave_changes: int, autosave_interval_s: float = TIMED_AUTOSAVE_S) -> float:
    """How long a publisher must keep a message after its PUBACK to cover a crash of a Mosquitto with this
    persistence: a broker that saves on changes (``autosave_on_changes``, ``autosave_changes`` >= 1) saves
    at its next loop pass, so only the save's own duration; one that saves every ``autosave_interval_s``
    seconds (``autosave_changes`` 0) may hold an acknowledged message that long before writing it.
    (With ``autosave_changes`` > 1 the save waits for that many changes, which no time bounds: on a quiet
    broker the window covers less; docs/DEPLOY.md.)"""
    return BROKER_SAVE_MARGIN_S + (autosave_interval_s if autosave_changes <= 0 else 0.0)


class Settings(BaseSettings):
    """Typed settings. Every field can be set as ``LINEGUARD_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="LINEGUARD_", env_file=".env", extra="ignore")

    database_url: str | None = Field(
        default=None, description="PostgreSQL URL. Unset: start an embedded server in data_dir."
    )
    mqtt_url: str | None = Field(
        default=None, description="mqtt://[user:pass@]host:port. Unset: start an embedded broker."
    )
    data_dir: Path = Field(default=Path(".lineguard"), description="Database, broker, spool, frames.")
    shared_dir: Path = Field(default=REPO_ROOT.parent / "shared", description="Shared datasets.")
    line_config: Path | None = Field(default=None, description="Per-line YAML file.")
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=0, le=65535)
    model_registry: Path | None = Field(
        default=None, description="Trained model versions. Unset: <data_dir>/models, for train, eval and run alike."
    )
    ingest_mqtt_url: str | None = Field(
        default=None, description="mqtt://user:pass@host:port for the ingest workers `run` starts (their own "
                                  "account, docs/DEPLOY.md). Unset: mqtt_url, or the embedded broker's ingest account.",
    )
    mqtt_autosave_changes: int = Field(
        default=1, ge=0, description="Embedded Mosquitto saves its sessions after this many changes (1: every "
                                     "acknowledged QoS 1 message survives a broker crash); 0: every 5 s instead.",
    )
    mqtt_ack_retention_s: float | None = Field(
        default=None, ge=0,
        description="How long lineguard's publishers keep a message after the broker acknowledged it, to send it "
                    "again if the broker crashed before saving it (Mosquitto acknowledges first, saves at its next "
                    "autosave). Unset: from mqtt_autosave_changes (ack_retention_for); a broker of your own: its "
                    "autosave_interval + a few seconds. 0: off (a broker crash can lose acknowledged messages).",
    )
    mqtt_listen: str = Field(
        default="127.0.0.1:1883",
        description="host:port the embedded broker listens on when no mqtt_url is set (line equipment connects here).",
    )
    outbox_max_bytes: int = Field(
        default=1 << 30, ge=1 << 20,
        description="Disk the edge outbox may hold while the broker is away; past it the oldest messages go.",
    )
    camera_no_frame_s: float = Field(
        default=10.0, gt=0, description="A running line's camera with no frame for this long makes /readyz 503."
    )
    admin_token: str | None = Field(
        default=None, description="Bootstrap admin API token (stored hashed). Unset: one is generated."
    )
    dead_letter_quota_bytes: int = Field(
        default=256 << 20, ge=0,
        description="Bytes the dead_letter table may hold; past it bad messages are counted, not stored, and the "
                    "API raises a dead-letter alarm (0 = no limit).",
    )
    sparkplug_stale_s: float = Field(
        default=300.0, gt=0,
        description="A Sparkplug edge node or device silent this long is stale (API, console, alarms, agent).",
    )
    log_level: str = "INFO"
    api_max_body_bytes: int = Field(default=1 << 20, ge=0, description="Larger request bodies get 413 (0 = none).")
    api_auth_fail_burst: int = Field(default=10, ge=1, description="Failed logins per client address before 429.")
    api_auth_fail_window_s: float = Field(default=60.0, gt=0, description="Window the failed logins refill over.")

    @property
    def registry_dir(self) -> Path:
        """The one model registry: ``model_registry`` if set, else ``<data_dir>/models``."""
        return (self.model_registry or self.data_dir / "models").resolve()

    @property
    def ack_retention_s(self) -> float:
        """The post-acknowledgement retention window of every publisher (line_agent/outbox.py). It is tied to
        the broker's autosave: a message acknowledged but not yet saved is lost in a crash, so it must be
        kept (and sent again after a reconnect) until the broker's next save surely happened."""
        if self.mqtt_ack_retention_s is not None:
            return self.mqtt_ack_retention_s
        return ack_retention_for(self.mqtt_autosave_changes)

    @property
    def listen(self) -> tuple[str, int]:
        host, _, port = self.mqtt_listen.rpartition(":")
        return host, int(port)

    @field_validator("mqtt_listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{v!r}: expected host:port, e.g. 127.0.0.1:1883 or 0.0.0.0:1883")
        return v

    @field_validator("mqtt_url", "ingest_mqtt_url")
    @classmethod
    def _mqtt_scheme(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("mqtt://", "mqtts://")):
            raise ValueError("must start with mqtt:// or mqtts://")
        if v is not None:
            from line_agent.mqtt import parse_mqtt_url

            try:
                parse_mqtt_url(v)
            except ValueError:  # its message repeats the URL, password and all
                raise ValueError("not an MQTT URL (expected mqtt://[user:pass@]host:port or mqtts://...)") from None
        return v

    @field_validator("database_url")
    @classmethod
    def _pg_scheme(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql://")
        return v
