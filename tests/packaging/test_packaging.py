"""Production packaging (issue 17): the Dockerfile, the compose file, the systemd units.

The static checks always run: the files parse, every config they write or override is
accepted by the real config loader, every command they run is accepted by the real CLI
parser. Building the image needs a Docker daemon and takes minutes, so it runs only when
asked (STARLING_TEST_DOCKER=1, not in CI's default run) and a daemon answers; otherwise it
is skipped with the reason.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from starling.cli import build_parser
from starling.config import load_config, load_config_dict
from starling.generate_config import generate

ROOT = Path(__file__).resolve().parents[2]
CONTRIB = ROOT / "contrib"


def _generated(tmp_path: Path, database: str = "sqlite") -> Path:
    return generate(tmp_path, "example.org", database=database)


def test_the_dockerfile_installs_what_pyproject_packages() -> None:
    """The image is `pip install .` of what the Dockerfile copies: that must be every
    package pyproject finds, its readme, every data file (package-data patterns cover
    each tracked non-Python file), on a Python that pyproject allows."""
    import fnmatch
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dockerfile = (ROOT / "Dockerfile").read_text()
    python = re.search(r"^FROM python:(\d+)\.(\d+)", dockerfile, re.M)
    assert python is not None, "the image is not built on an official Python image"
    required = re.fullmatch(r">=(\d+)\.(\d+)", project["project"]["requires-python"])
    assert required is not None
    assert tuple(map(int, python.groups())) >= tuple(map(int, required.groups()))
    copied = {
        part.rstrip("/").removeprefix("./")
        for line in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M)
        for part in line.split()
    }
    assert {"pyproject.toml", project["project"]["readme"]} <= copied
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {
        d.name
        for d in ROOT.iterdir()
        if (d / "__init__.py").exists() and any(fnmatch.fnmatch(d.name, p) for p in include)
    }
    assert packages and packages <= copied, packages - copied
    # Every data file of the packages (a fresh clone or an unpacked source tree alike).
    data_files = [
        f.relative_to(ROOT)
        for pkg in sorted(packages)
        for f in (ROOT / pkg).rglob("*")
        if f.is_file() and f.suffix not in (".py", ".pyc") and "__pycache__" not in f.parts
    ]
    assert data_files  # migrations, protocol data, console assets
    package_data = project["tool"]["setuptools"]["package-data"]
    for path in data_files:
        name = str(path)
        covered = any(
            fnmatch.fnmatch(str(path.relative_to(Path(*pkg.split(".")))), pattern)
            for pkg, patterns in package_data.items()
            if path.is_relative_to(Path(*pkg.split(".")))
            for pattern in patterns
        )
        assert covered, f"{name} would be left out of the image (add it to package-data)"


def test_the_image_listeners_file_is_a_valid_override(tmp_path: Path) -> None:
    config = load_config([_generated(tmp_path), CONTRIB / "docker" / "listeners.yaml"])
    assert {listener.port for listener in config.listeners} == {8008, 8448}
    assert all(listener.bind_addresses == ["0.0.0.0"] for listener in config.listeners)
    assert all(listener.x_forwarded for listener in config.listeners)


def test_the_compose_environment_is_valid_config(tmp_path: Path) -> None:
    compose = yaml.safe_load((CONTRIB / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "starling", "starling-worker1"} <= set(services)
    env = {k: str(v) for k, v in services["starling"]["environment"].items()}
    # The STARLING_<SECTION>__<KEY> overrides turn workers on, over a PostgreSQL config.
    generated = _generated(tmp_path, env["STARLING_DATABASE_URL"])
    data = yaml.safe_load(generated.read_text())
    config = load_config_dict(data, environ=env)
    assert config.redis is not None and config.redis.host == "redis"
    assert not config.database.is_sqlite
    parser = build_parser()
    for name in ("starling", "starling-worker1"):
        command = services[name]["command"]
        assert command[0] == "serve"
        args = parser.parse_args(["serve", "-c", "a.yaml", "-c", "b.yaml", *command[1:]])
        assert args.func.__name__ == "cmd_serve"
    assert parser.parse_args(["serve", "-c", "a", "--worker", "worker1"]).worker == "worker1"


def test_the_entrypoint_is_valid_shell() -> None:
    result = subprocess.run(
        ["sh", "-n", str(CONTRIB / "docker" / "entrypoint.sh")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("unit", ["starling.service", "starling-worker@.service"])
def test_the_systemd_units_run_real_commands(unit: str) -> None:
    text = (CONTRIB / "systemd" / unit).read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart=").replace("%i", "worker1"))
    assert argv[0].endswith("/starling")
    args = build_parser().parse_args(argv[1:])
    assert args.func.__name__ == "cmd_serve"
    if unit.startswith("starling-worker"):
        assert args.worker == "worker1" and len(args.config) == 2
    if shutil.which("systemd-analyze"):
        result = subprocess.run(
            ["systemd-analyze", "verify", str(CONTRIB / "systemd" / unit)],
            capture_output=True,
            text=True,
        )
        # The binary is not installed on the test machine; anything else is a unit error.
        problems = [
            line
            for line in result.stderr.splitlines()
            if line.strip() and "is not executable" not in line and "not-found" not in line
        ]
        assert not problems, problems


def _docker_unavailable() -> str | None:
    if os.environ.get("STARLING_TEST_DOCKER") != "1":
        return "building the Docker image takes minutes: set STARLING_TEST_DOCKER=1 to run it"
    if shutil.which("docker") is None:
        return "the docker command is not installed"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    if info.returncode != 0:
        return f"no Docker daemon answers: {info.stderr.strip().splitlines()[-1:]}"
    return None


def test_the_docker_image_builds_and_serves() -> None:
    reason = _docker_unavailable()
    if reason is not None:
        pytest.skip(f"Docker image build not tested: {reason}")
    tag = f"starling-test:{uuid.uuid4().hex[:8]}"
    build = subprocess.run(
        ["docker", "build", "-t", tag, str(ROOT)], capture_output=True, text=True, timeout=1800
    )
    assert build.returncode == 0, build.stderr[-4000:]
    name = f"starling-test-{uuid.uuid4().hex[:8]}"
    try:
        version = subprocess.run(
            ["docker", "run", "--rm", tag, "version"], capture_output=True, text=True, timeout=120
        )
        assert version.returncode == 0 and version.stdout.startswith("starling "), version
        started = subprocess.run(
            ["docker", "run", "-d", "--name", name, "-e", "SERVER_NAME=example.org", tag],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert started.returncode == 0, started.stderr
        deadline = time.monotonic() + 90
        while True:
            health = subprocess.run(
                [
                    "docker",
                    "exec",
                    name,
                    "python",
                    "-c",
                    "import urllib.request;print(urllib.request.urlopen("
                    "'http://127.0.0.1:8008/health',timeout=4).read().decode())",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if health.returncode == 0 and "OK" in health.stdout:
                break
            assert time.monotonic() < deadline, subprocess.run(
                ["docker", "logs", name], capture_output=True, text=True
            ).stdout[-4000:]
            time.sleep(1)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=120)
