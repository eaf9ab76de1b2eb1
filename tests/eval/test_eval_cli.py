"""``lipsync eval`` end to end: over files (CSV, no weights: metrics skipped with one line each) and
Acceptance 3: ``--server`` against ``lipsync serve`` through the official client, with table, JSON and plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lipsync.evaluation.cases import Case, CaseError, ServerCase, cases_from_csv, cases_from_folder, server_cases

from lipsync.media.audio import load_audio
from lipsync.media.probe import probe_video, resolve_output_spec
from lipsync.media.video import read_video
from lipsync.media.writer import write_mp4
from tests.eval.weights_files import write_stable_syncnet, write_syncnet_v2
from lipsync.testing.serve import Serve
from lipsync.testing.media import make_wav
from tests.support import ROOT

PNG = b"\x89PNG\r\n\x1a\n"


def _eval(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lipsync", "eval", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)


def test_folder_without_weights_skips_sync_and_reports_every_case(tmp_path, eval_media):
    good, bad = tmp_path / "cases" / "same", tmp_path / "cases" / "not_a_video"
    good.mkdir(parents=True)
    bad.mkdir()
    # the output: the source's frames with the speech, re-encoded (a paste-back that changed nothing)
    spec = resolve_output_spec(probe_video(eval_media["face"]), num_frames=30)
    write_mp4(good / "output.mp4", read_video(eval_media["face"], spec), spec.fps, load_audio(eval_media["speech"]))
    (good / "source.mp4").symlink_to(eval_media["face"])
    (bad / "output.mp4").write_bytes(b"garbage")
    done = _eval("--inputs", str(tmp_path / "cases"), "--out", str(tmp_path / "report"))
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert sum("LSE-C / LSE-D skipped: no SyncNet weights" in line for line in lines) == 1
    assert sum("StableSyncNet score skipped: no weights" in line for line in lines) == 1
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    by_name = {c["name"]: c for c in report["cases"]}
    case = by_name["same"]
    assert case["sync"] is None and case["plot"] is None and case["errors"] == {}
    assert case["identity"]["embedder"] == "dlib-resnet-128" and case["identity"]["csim"] > 0.97
    assert case["unchanged"]["psnr_db"] > 35 and case["unchanged"]["ssim"] > 0.95
    assert 0.5 < case["unchanged"]["outside_fraction"] < 1 and case["unchanged"]["frames"] == 30
    assert by_name["not_a_video"]["errors"] == {"identity": "no source video given", "unchanged": "no source video given"}
    table = (tmp_path / "report" / "report.md").read_text()
    assert "| same | – | – | – | – | " in table and "dlib-resnet-128" in table
    assert "- not_a_video: identity: no source video given" in table


def test_case_lists(tmp_path):
    (tmp_path / "o.mp4").write_bytes(b"x")
    (tmp_path / "cases.csv").write_text("output,audio\no.mp4,\n")
    assert cases_from_csv(tmp_path / "cases.csv") == [Case("o", tmp_path / "o.mp4", None, None)]
    (tmp_path / "bad.csv").write_text("output\nmissing.mp4\n")
    with pytest.raises(CaseError, match=r"bad.csv:2: output file .*missing.mp4 does not exist"):
        cases_from_csv(tmp_path / "bad.csv")
    (tmp_path / "cases.json").write_text(json.dumps([{"name": "a b", "video": "v.mp4", "audio": "https://x/a.wav", "seed": 3}]))
    assert server_cases(tmp_path / "cases.json") == [ServerCase("a_b", str(tmp_path / "v.mp4"), "https://x/a.wav", {"seed": 3})]
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(CaseError, match="non-empty list"):
        server_cases(tmp_path / "empty.json")
    with pytest.raises(CaseError, match="no subfolder holds an output"):
        cases_from_folder(tmp_path)


@pytest.mark.slow
def test_server_mode_against_lipsync_serve(tmp_path, eval_media):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIPSYNC_")}
    serve = Serve(tmp_path / "data")  # the test pipeline: this test is about scoring, not the model
    base = serve.base
    tone = make_wav(tmp_path / "tone.wav", seconds=1.5)
    cases = [
        {"name": "speech", "video": str(eval_media["face"]), "audio": str(eval_media["speech"])},
        {"name": "tone", "video": str(eval_media["face"]), "audio": "tone.wav", "num_frames": 28},
        {"name": "missing", "video": "nope.mp4", "audio": "tone.wav"},
    ]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    syncnet = write_syncnet_v2(tmp_path / "syncnet_v2.model")
    stable, stable_cfg = write_stable_syncnet(tmp_path / "stable_syncnet.pt", tmp_path / "syncnet.yaml")
    try:
        serve.ready()
        done = _eval("--server", base, "--cases", str(tmp_path / "cases.json"), "--out", str(tmp_path / "report"),
                     "--syncnet", str(syncnet), "--stable-syncnet", str(stable), "--stable-syncnet-config", str(stable_cfg),
                     env={**env, "FAL_KEY": "local"})
    finally:
        serve.stop()
    assert done.returncode == 0, done.stderr
    assert "requests: 100%" in done.stderr and "scoring: 100%" in done.stderr  # the progress bars
    out = tmp_path / "report"
    report = json.loads((out / "report.json").read_text())
    assert report["skipped"] == [] and report["metrics"]["identity_embedder"] == "dlib-resnet-128"
    by_name = {c["name"]: c for c in report["cases"]}
    assert set(by_name) == {"speech", "tone", "missing"}
    assert "no such file" in by_name["missing"]["errors"]["request"]
    for name, frames in (("speech", 30), ("tone", 28)):
        case = by_name[name]
        assert case["errors"] == {}, case["errors"]
        assert probe_video(case["output"]).frame_count == frames  # what the server made, downloaded
        sync = case["sync"]
        assert sync["audio_from"] == "output" and sync["num_windows"] == frames - 5
        assert len(sync["mean_dist"]) == 31 and len(sync["frame_conf"]) == frames - 5
        assert min(sync["mean_dist"]) == pytest.approx(sync["lse_d"])
        assert sync["offsets"][sync["mean_dist"].index(min(sync["mean_dist"]))] == sync["offset"]
        assert -1 <= case["stable_sync"]["sim_at_zero"] <= 1 and len(case["stable_sync"]["mean_sim"]) == 31
        # the test pipeline re-encodes the video: same face, untouched background
        assert case["identity"]["csim"] > 0.97 and case["unchanged"]["psnr_db"] > 30 and case["unchanged"]["ssim"] > 0.9
        png = out / case["plot"]
        assert png.read_bytes().startswith(PNG) and png.stat().st_size > 10_000
    table = (out / "report.md").read_text().splitlines()
    header = next(line for line in table if line.startswith("| case |"))
    assert "LSE-C ↑" in header and "LSE-D ↓" in header and "CSIM ↑" in header and "unchanged PSNR dB ↑" in header
    speech_row = next(line for line in table if line.startswith("| speech |"))
    assert f"{by_name['speech']['sync']['lse_c']:.3f}" in speech_row
    assert any(line.startswith("| **mean** |") for line in table)
    assert any("missing: request:" in line for line in table)


