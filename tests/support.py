"""Real processes for the tests: redis-server, the API under uvicorn, RQ workers; and small real media.

Every process runs on 127.0.0.1 on a free port, logs to a file the failing test prints, and is killed at the
end. Nothing here is a mock: the tests talk HTTP to the real API, which talks to a real Redis, which real
workers serve.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import httpx
import numpy as np
import redis

ROOT = Path(__file__).resolve().parents[1]
API_KEYS = {"alice": "secret-alice", "bob": "secret-bob"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            self.popen.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(10)
        if self.alive():
            self.popen.kill()
            self.popen.wait(10)


def spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Proc:
    log_path = log_dir / f"{name}.log"
    fh = open(log_path, "ab")
    popen = subprocess.Popen(args, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    return Proc(name, popen, log_path)


def start_redis(workdir: Path, *, appendonly: bool = False, port: int | None = None) -> tuple[Proc, str]:
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    args = [
        shutil.which("redis-server") or "redis-server",
        "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
        "--save", "", "--appendonly", "yes" if appendonly else "no",
    ]
    proc = spawn(f"redis-{port}", args, dict(os.environ), workdir)
    client = redis.Redis(port=port)

    def ready() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_until(ready, 10, "redis-server")
    return proc, f"redis://127.0.0.1:{port}/0"


@dataclass
class Stack:
    """Redis + API + workers, sharing one environment (the LIPSYNC_* settings)."""

    workdir: Path
    env: dict[str, str]
    redis_proc: Proc
    redis_url: str
    api: Proc | None = None
    base_url: str = ""
    workers: list[Proc] = field(default_factory=list)

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def start_api(self, *extra: str, scheme: str = "http", port: int | None = None) -> str:
        port = port or free_port()
        self.api = spawn(
            f"api-{port}",
            [sys.executable, "-m", "lipsync", "api", "--host", "127.0.0.1", "--port", str(port), *extra],
            self.env,
            self.workdir,
        )
        self.base_url = f"{scheme}://127.0.0.1:{port}"
        cafile = self.env.get("SSL_CERT_FILE")
        verify = ssl.create_default_context(cafile=cafile) if cafile else True

        def ready() -> bool:
            if not self.api.alive():
                raise RuntimeError(f"API exited:\n{self.api.log()}")
            try:
                return httpx.get(f"{self.base_url}/readyz", verify=verify, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 20, "the API")
        return self.base_url

    def restart_api(self) -> None:
        """Kill the API with SIGKILL and start it again on the same port."""
        port = int(self.base_url.rsplit(":", 1)[1])
        self.api.kill(signal.SIGKILL)
        self.start_api(port=port)

    def restart_redis(self, sig: int = signal.SIGKILL) -> None:
        """Kill redis-server and start it again on the same port and data folder."""
        port = int(self.redis_url.rsplit(":", 1)[1].split("/")[0])
        appendonly = "yes" in " ".join(self.redis_proc.popen.args[self.redis_proc.popen.args.index("--appendonly") :][:2])
        self.redis_proc.kill(sig)
        self.redis_proc, _ = start_redis(self.workdir / "redis", appendonly=appendonly, port=port)

    def start_worker(self, name: str, timeout: float = 60) -> Proc:
        proc = spawn(name, [sys.executable, "-m", "lipsync", "worker", "--name", name], self.env, self.workdir)
        from rq import Worker

        def ready() -> bool:
            if not proc.alive():
                raise RuntimeError(f"worker exited:\n{proc.log()}")
            return any(w.name == name for w in Worker.all(connection=self.redis))

        wait_until(ready, timeout, f"worker {name}")
        self.workers.append(proc)
        return proc

    def logs(self) -> str:
        procs = [self.redis_proc, self.api, *self.workers]
        return "\n".join(f"===== {p.name}\n{p.log()[-4000:]}" for p in procs if p is not None)

    def stop(self) -> None:
        for proc in [*self.workers, self.api, self.redis_proc]:
            if proc is not None:
                proc.kill(signal.SIGTERM if proc is self.api else signal.SIGKILL)


def make_stack(workdir: Path, *, appendonly: bool = False, **settings: str) -> Stack:
    redis_proc, redis_url = start_redis(workdir / "redis", appendonly=appendonly)
    env = dict(os.environ)
    env.update(
        {
            "LIPSYNC_REDIS_URL": redis_url,
            "LIPSYNC_STORAGE_DIR": str(workdir / "storage"),
            "LIPSYNC_PIPELINE": "tests.pipelines:reencode",
            "LIPSYNC_API_KEYS": ",".join(f"{k}:{v}" for k, v in API_KEYS.items()),
            "LIPSYNC_HEARTBEAT_INTERVAL_S": "0.5",
            "LIPSYNC_HEARTBEAT_TTL_S": "2",
            "LIPSYNC_REAPER_INTERVAL_S": "0.5",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({f"LIPSYNC_{k.upper()}": v for k, v in settings.items()})
    return Stack(workdir=workdir, env=env, redis_proc=redis_proc, redis_url=redis_url)


# --- media --------------------------------------------------------------------------------------------------


def make_video(path: Path, *, frames: int = 12, size: tuple[int, int] = (64, 48), fps: int = 25) -> Path:
    """A small H.264 MP4 whose frames differ (a moving gradient), with no audio."""
    width, height = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        x = np.arange(width)[None, :, None]
        for i in range(frames):
            rgb = np.broadcast_to(((x * 4 + i * 9) % 256).astype(np.uint8), (height, width, 3)).copy()
            rgb[..., 1] = (i * 20) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_wav(path: Path, *, seconds: float = 1.0, rate: int = 16000) -> Path:
    """A mono 16-bit WAV: a 440 Hz tone."""
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    return path


def make_face_video(path: Path, *, frames: int = 25, size: tuple[int, int] = (256, 192), fps: int = 25) -> Path:
    """A real face (scikit-image's astronaut photo) slowly panning and zooming, as H.264."""
    import cv2
    import skimage.data

    width, height = size
    photo = skimage.data.astronaut()
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            t = i / max(frames - 1, 1)
            zoom = (0.5 + 0.08 * t) * width / 256
            m = np.float32([[zoom, 0, (-30 + 40 * t) * width / 256], [0, zoom, (4 - 10 * t) * height / 192]])
            rgb = cv2.warpAffine(photo, m, (width, height), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_speech(path: Path, text: str = "Hello, this is a lip sync test.") -> Path:
    """Speech from espeak-ng (a WAV at 22.05 kHz)."""
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    return path


def percentile_ms(values: list[float], q: float) -> float:
    """The q-quantile of durations in seconds, in milliseconds (nan when there are none)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def data_uri_body(video: Path, audio: Path, **extra) -> dict:
    """A request body with both files inlined as data: URIs (no upload, no URL fetch)."""

    def uri(path: Path, mime: str) -> str:
        return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()

    return {"video": uri(video, "video/mp4"), "audio": uri(audio, "audio/wav"), **extra}


def probe(path: Path) -> dict:
    """Frame count, fps, size and audio duration of an MP4, read back with PyAV."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        fps = Fraction(video.average_rate) if video.average_rate else None
        size = (video.width, video.height)
        frames = sum(1 for _ in container.decode(video=0))
    with av.open(str(path)) as container:
        audio = container.streams.audio[0] if container.streams.audio else None
        samples = sum(f.samples for f in container.decode(audio=0)) if audio else 0
        rate = audio.rate if audio else 0
    return {
        "frames": frames,
        "fps": fps,
        "size": size,
        "audio_seconds": samples / rate if rate else 0.0,
    }
