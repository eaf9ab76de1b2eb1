"""What a packager gets: ``pip wheel .`` holds one top-level package, ``lipsync``, with its data files, and that
wheel installed (not editable, outside the checkout) serves a request end to end with ``lipsync serve``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import fal_client
import httpx

from lipsync.client import point_fal_client
from lipsync.testing.media import make_face_video, make_speech, probe
from lipsync.testing.stack import free_port, wait_until
from tests.support import ROOT

DATA_FILES = {"lipsync/model/pipio/configs/tiny.json", "lipsync/model/pipio/configs/base.json",
              "lipsync/model/latentsync/configs/latentsync-1.6.yaml", "lipsync/server/playground/index.html",
              "lipsync/server/playground/app.js", "lipsync/server/playground/style.css"}


def test_the_installed_wheel_is_one_package_and_serves_a_request(tmp_path):
    # Built from a copy of what the build reads, so no stale build/ folder of the checkout can leak into it.
    source, wheels = tmp_path / "source", tmp_path / "wheels"
    shutil.copytree(ROOT / "lipsync", source / "lipsync", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels)], check=True, capture_output=True, timeout=300, cwd=tmp_path)
    (wheel,) = wheels.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"lipsync"}
    assert DATA_FILES <= set(names)

    # Installed into its own folder and put first on the path, it shadows the editable checkout: every process
    # below (serve, redis supervisor, worker, API) runs the wheel's code from outside the repository.
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIPSYNC_")}
    env["PYTHONPATH"] = str(site)
    where = subprocess.run([sys.executable, "-c", "import lipsync.worker.orchestration as m; print(m.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(site)

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lipsync", "serve", "--port", str(port), "--data-dir", "data"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            assert proc.poll() is None, proc.stdout.read()
            try:
                return httpx.get(f"{base}/readyz", timeout=1).json().get("workers") == 1
            except (httpx.HTTPError, ValueError):
                return False

        wait_until(ready, 120, "lipsync serve from the wheel")
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        point_fal_client(base)
        client = fal_client.SyncClient(key="local")
        video = make_face_video(tmp_path / "face.mp4", frames=20, size=(160, 128))
        speech = make_speech(tmp_path / "speech.wav", "One package.")
        result = client.subscribe("pipio/lipsync", arguments={
            "video": client.upload_file(str(video)), "audio": fal_client.encode_file(str(speech))})
        out = tmp_path / "out.mp4"
        out.write_bytes(httpx.get(result["video"]["url"]).content)
        assert probe(out)["frames"] == 20 and probe(out)["size"] == (160, 128)
        assert "RANDOM weights" in (tmp_path / "data" / "worker.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
