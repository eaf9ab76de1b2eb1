"""``lipsync run``: one request in-process, with the API's validation and typed errors."""

from __future__ import annotations

import os
import subprocess
import sys

from lipsync.testing.media import probe
from tests.support import ROOT


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, LIPSYNC_PIPELINE="lipsync.testing.pipelines:reencode")
    return subprocess.run([sys.executable, "-m", "lipsync", "run", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_run_writes_the_mp4(media, tmp_path):
    out = tmp_path / "out.mp4"
    done = _run("--video", str(media["video"]), "--audio", str(media["audio"]), "--out", str(out),
                "--set", "num_frames=7")
    assert done.returncode == 0, done.stderr
    assert probe(out)["frames"] == 7 and "wrote" in done.stderr


def test_run_reports_typed_errors(media, tmp_path):
    bad = _run("--video", str(media["video"]), "--audio", str(media["audio"]), "--out", str(tmp_path / "o.mp4"),
               "--set", "vae_chunk_size=10")
    assert bad.returncode == 2 and "vae_chunk_size" in bad.stderr
    missing = _run("--video", str(tmp_path / "nope.mp4"), "--audio", str(media["audio"]), "--out", str(tmp_path / "o.mp4"))
    assert missing.returncode == 2 and "file_download_error (video)" in missing.stderr
    not_media = tmp_path / "page.mp4"
    not_media.write_bytes(b"%PDF-1.4 this is no video")
    wrong = _run("--video", str(not_media), "--audio", str(media["audio"]), "--out", str(tmp_path / "o.mp4"))
    assert wrong.returncode == 2 and "invalid_media (video)" in wrong.stderr
    assert not (tmp_path / "o.mp4").exists()
