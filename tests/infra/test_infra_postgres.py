"""infra/postgres tuning files: loaded by a real PostgreSQL server binary (`postgres -C`), which
rejects unknown parameters and invalid values, through the same include_dir the container uses."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from infra_common import INFRA

from line_agent.services import ServiceError, postgres_bin_dir

PG = INFRA / "postgres"


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Path, Path, dict[str, int]]]:
    """A fresh initdb'd data directory; postgres refuses to run as root, so use `nobody` then."""
    try:
        bins = postgres_bin_dir()
    except ServiceError as exc:
        pytest.skip(str(exc))
    run_as: dict[str, int] = {}
    # Not under pytest's tmp_path: its 0700 parents are not traversable by another user.
    base = Path(tempfile.mkdtemp(prefix="lg-infra-pg-"))
    try:
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            run_as = {"user": nobody.pw_uid, "group": nobody.pw_gid}
            os.chown(base, nobody.pw_uid, nobody.pw_gid)
        subprocess.run(
            [str(bins / "initdb"), "-D", str(base / "data"), "-A", "trust", "-U", "lineguard"],
            check=True,
            capture_output=True,
            timeout=120,
            **run_as,
        )  # type: ignore[call-overload]
        yield bins, base / "data", run_as
    finally:
        shutil.rmtree(base, ignore_errors=True)


def show(cluster: tuple[Path, Path, dict[str, int]], include: Path, param: str) -> subprocess.CompletedProcess[str]:
    bins, data, run_as = cluster
    conf = data / "postgresql.conf"
    base = conf.read_text().split("\n# lineguard test include\n")[0]
    conf.write_text(base + f"\n# lineguard test include\ninclude_dir = '{include}'\n")
    return subprocess.run(
        [str(bins / "postgres"), "-D", str(data), "-C", param], capture_output=True, text=True, timeout=60, **run_as
    )  # type: ignore[call-overload]


def include_dir(tmp: Path, files: dict[str, str]) -> Path:
    d = tmp / "lineguard.d"
    d.mkdir(exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)
    os.chmod(tmp, 0o755)
    return d


@pytest.fixture
def tmp_public() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="lg-infra-pgconf-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


EDGE_SET = {
    "10-timescaledb.conf": (PG / "timescaledb.conf").read_text(),
    "20-edge.conf": (PG / "edge.conf").read_text(),
}


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        ("shared_buffers", "32768"),  # 256MB in 8kB pages: edge.conf wins over timescaledb-tune
        ("synchronous_commit", "on"),  # ingest acks after commit: commits must be durable
        ("max_worker_processes", "10"),
        ("shared_preload_libraries", "timescaledb"),
        ("max_locks_per_transaction", "256"),
        ("timescaledb.telemetry_level", "off"),
    ],
)
def test_edge_settings_load(
    cluster: tuple[Path, Path, dict[str, int]], tmp_public: Path, param: str, expected: str
) -> None:
    res = show(cluster, include_dir(tmp_public, EDGE_SET), param)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == expected


def test_timescaledb_file_alone_loads(cluster: tuple[Path, Path, dict[str, int]], tmp_public: Path) -> None:
    res = show(
        cluster,
        include_dir(tmp_public, {"10-timescaledb.conf": EDGE_SET["10-timescaledb.conf"]}),
        "max_worker_processes",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "16"


def test_server_rejects_a_bad_value(cluster: tuple[Path, Path, dict[str, int]], tmp_public: Path) -> None:
    """The check is real: an invalid value in an included file stops the server."""
    files = {**EDGE_SET, "30-bad.conf": "work_mem = lots\n"}
    res = show(cluster, include_dir(tmp_public, files), "work_mem")
    assert res.returncode != 0
    assert "work_mem" in res.stderr


def test_initdb_hook_appends_include_once(tmp_public: Path) -> None:
    conf = tmp_public / "postgresql.conf"
    conf.write_text("# initdb output\n")
    env = {**os.environ, "PGDATA": str(tmp_public)}
    for _ in range(2):
        subprocess.run(["sh", str(PG / "include-lineguard.sh")], check=True, env=env, timeout=30)
    text = conf.read_text()
    assert text.count("include_dir = '/etc/postgresql/lineguard.d'") == 1


def test_compose_mounts_match_hook() -> None:
    for name in ("line.yaml", "plant.yaml"):
        text = (INFRA / "compose" / name).read_text()
        assert "include-lineguard.sh:/docker-entrypoint-initdb.d/" in text
        assert ":/etc/postgresql/lineguard.d/10-timescaledb.conf:ro" in text


def test_pg_hba_template_is_the_embedded_servers() -> None:
    """infra/postgres/pg_hba.conf: SCRAM only, the same rules lineguard's embedded server runs with."""
    from line_agent.services import PG_HBA

    def rules(text: str) -> list[list[str]]:
        return [ln.split() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]

    shipped = rules((PG / "pg_hba.conf").read_text())
    assert shipped == rules(PG_HBA)
    assert shipped and {r[-1] for r in shipped} == {"scram-sha-256"}
