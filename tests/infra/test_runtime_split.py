"""The runtime/extras split: the edge install runs the line with no torch, ultralytics, llama.cpp or NVIDIA.

One real production install per run: lineguard's wheel built from this working tree, installed by
infra/edge/install.sh (staged root, offline, pinned by infra/edge/requirements.lock) into a fresh venv,
then ``lineguard demo --duration 20`` run from that venv, outside the repo. The dependency wheels come
from a wheelhouse built once per lock file, Python and machine under ``var/runtime-wheelhouse/`` (the
only network use, through pip's cache, on the first run after the lock changes); the venv and the
install are new every time. A lock that misses a base dependency fails here: the offline install has
nothing to take it from.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from infra_common import INFRA, REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

LOCK = INFRA / "edge" / "requirements.lock"
SPARKPLUG = "pysparkplug==0.6.1"  # as the Makefile installs it (--no-deps)
HEAVY = ("torch", "torchvision", "ultralytics", "llama-cpp-python")
RUNTIME_BUDGET_MB = 600
SOURCES = ("vision", "hardware", "line_agent", "llm_ops", "pyproject.toml", "README.md")


def lock_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for ln in LOCK.read_text().splitlines():
        ln = ln.split("#", 1)[0].strip()
        if ln:
            name, _, version = ln.partition("==")
            assert version, f"requirements.lock: {ln!r} is not pinned with =="
            pins[canonicalize_name(name)] = version
    return pins


def pip(*args: str, timeout: float = 600) -> None:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    res = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env,
                         timeout=timeout)
    assert res.returncode == 0, f"pip {' '.join(args)}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"


def du_mb(path: Path) -> float:
    seen: set[int] = set()
    total = 0
    for p in path.rglob("*"):
        st = p.lstat()
        if not p.is_symlink() and p.is_file() and st.st_ino not in seen:
            seen.add(st.st_ino)
            total += st.st_blocks * 512
    return total / 2**20


def test_lock_pins_every_base_dependency_and_nothing_heavy() -> None:
    pins = lock_pins()
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in map(Requirement, deps):
        name = canonicalize_name(dep.name)
        assert name in pins, f"{dep.name} is a base dependency but not in {LOCK.name}: run `make lock`"
        assert dep.specifier.contains(pins[name], prereleases=True), (
            f"{LOCK.name} pins {dep.name}=={pins[name]}, outside pyproject's {dep}: run `make lock`")
    heavy = [n for n in pins if n in HEAVY or n.startswith("nvidia")]
    assert not heavy, f"the runtime lock must not carry {heavy}"
    assert canonicalize_name("pysparkplug") not in pins, "pysparkplug goes in with --no-deps, not in the lock"


@pytest.fixture(scope="module")
def dependency_wheels() -> Path:
    """Wheels for the lock, pysparkplug and the build backend, built once per lock/Python/machine."""
    key = hashlib.sha256(
        f"{LOCK.read_text()}|{SPARKPLUG}|{sys.version_info[:2]}|{platform.machine()}".encode()
    ).hexdigest()[:16]
    cache = REPO / "var" / "runtime-wheelhouse" / key
    if (cache / ".complete").exists():
        return cache
    tmp = cache.with_name(f"{key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    pip("wheel", "-q", "-w", str(tmp), "-r", str(LOCK))
    pip("wheel", "-q", "--no-deps", "-w", str(tmp), SPARKPLUG)
    # The build backend, so that lineguard's own wheel builds offline and isolated from this venv.
    pip("download", "-q", "-d", str(tmp), "setuptools>=68", "wheel")
    (tmp / ".complete").touch()
    shutil.rmtree(cache, ignore_errors=True)
    tmp.rename(cache)
    return cache


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, dependency_wheels: Path) -> Path:
    """A staged edge install (infra/edge/install.sh) of this working tree; returns its venv."""
    tmp = tmp_path_factory.mktemp("runtime-split")
    src, wheelhouse, root = tmp / "src", tmp / "wheelhouse", tmp / "root"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    wheelhouse.mkdir()
    for whl in dependency_wheels.iterdir():
        (wheelhouse / whl.name).symlink_to(whl)
    pip("wheel", "-q", "--no-deps", "--no-index", "--find-links", str(dependency_wheels), "-w", str(wheelhouse),
        str(src), timeout=300)
    shutil.copy2(LOCK, wheelhouse / LOCK.name)
    root.mkdir()
    res = subprocess.run(
        ["bash", str(INFRA / "edge" / "install.sh"), "--root", str(root), "--wheelhouse", str(wheelhouse),
         "--python", sys.executable],
        capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "pinning dependencies to" in res.stdout
    return root / "opt" / "lineguard" / "venv"


def clean_env(tmp: Path) -> dict[str, str]:
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("LINEGUARD_")}
    return {**env, "LINEGUARD_DATA_DIR": str(tmp / "data"), "HOME": str(tmp)}


def test_runtime_has_no_training_llm_or_cuda_packages(runtime: Path, tmp_path: Path) -> None:
    py = runtime / "bin" / "python"
    res = subprocess.run([str(py), "-c", "import torch"], capture_output=True, text=True, cwd=tmp_path,
                         env=clean_env(tmp_path), timeout=60)
    assert res.returncode != 0 and "No module named 'torch'" in res.stderr, res.stdout + res.stderr
    listed = subprocess.run([str(py), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True,
                            check=True, timeout=120).stdout
    names = {canonicalize_name(p["name"]) for p in json.loads(listed)}
    bad = sorted(n for n in names if n in HEAVY or n.startswith("nvidia"))
    assert not bad, f"the runtime install carries {bad}"
    assert {"lineguard", "onnxruntime", "opencv-python-headless", "pysparkplug"} <= names
    # Every locked dependency at the locked version (install.sh's constraint).
    versions = {canonicalize_name(p["name"]): p["version"] for p in json.loads(listed)}
    drift = {n: (v, versions.get(n)) for n, v in lock_pins().items() if versions.get(n) != v}
    assert not drift, f"installed versions differ from requirements.lock: {drift}"
    size = du_mb(runtime)
    assert size <= RUNTIME_BUDGET_MB, f"runtime venv is {size:.0f} MB, over the {RUNTIME_BUDGET_MB} MB budget"


@pytest.mark.timeout(240)
def test_runtime_runs_the_demo_for_20_s(runtime: Path, tmp_path: Path) -> None:
    from line_agent.services import free_port

    res = subprocess.run(
        [str(runtime / "bin" / "lineguard"), "demo", "--duration", "20", "--port", str(free_port())],
        capture_output=True, text=True, cwd=tmp_path, env=clean_env(tmp_path), timeout=200,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    m = re.search(r"^REPORT (.*)$", res.stdout, re.M)
    assert m, out[-4000:]
    report = json.loads(m.group(1))
    assert report["errors"] == [], report["errors"]
    (line,) = report["lines"]
    assert line["parts"] > 0 and line["parts"] == line["published"], line
    assert line["precision"] >= 0.9 and line["recall"] >= 0.9, line
