"""``scripts/gpu_check.py --emulate`` keeps working (the script a GPU host runs once; its table goes into
docs/performance.md): here one engine's paths on the emulated CUDA device, every path ok."""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT


def test_gpu_check_emulated_runs_every_path(tmp_path):
    out = tmp_path / "table.md"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--emulate", "--engines", "musetalk",
                           "--no-serve", "--frames", "8", "--weights", str(tmp_path / "weights"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| musetalk")]
    # per dtype: alone, end to end with NVENC and with x264, the capped card ("ok; <the caps that bound>")
    status = [line.rsplit("|", 2)[1].strip() for line in rows]
    assert len(rows) == 8 and all(s == "ok" or s.startswith("ok; ") for s in status), rows


def test_gpu_check_on_a_gpu_host_never_writes_infinitetalk_published_weights(tmp_path, monkeypatch):
    """``scripts/gpu_check.py`` with no arguments on a GPU host (CUDA faked here, every run stubbed): the other
    engines' published random files are written, InfiniteTalk's 14B files are not (built on the GPU, its folder
    None; only its small files for the serve row), and its loader is ``random_engine``."""
    import importlib.util

    import torch

    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, gpu_check)  # dataclasses look their module up
    spec.loader.exec_module(gpu_check)
    written, checked, served = [], [], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "a stubbed GPU")
    monkeypatch.setattr(gpu_check, "write_random_weights", 
                        lambda engine, folder, size: written.append((engine, size)) or folder.mkdir(parents=True))
    monkeypatch.setattr(gpu_check, "_clip", lambda workdir, frames: (workdir / "v.mp4", workdir / "a.wav"))

    def check_engine(engine, folder, dtype, args, *rest):
        checked.append((engine, dtype, folder, gpu_check.built_on_device(engine, args)))
        return [gpu_check.Row(engine, dtype, "stub")]

    monkeypatch.setattr(gpu_check, "check_engine", check_engine)
    monkeypatch.setattr(gpu_check, "check_serve", lambda engine, folder, *a: served.append((engine, folder)) or
                        gpu_check.Row(engine, "auto", "serve"))
    assert gpu_check.main(["--weights", str(tmp_path)]) == 0
    assert ("infinitetalk", "published") not in written and ("infinitetalk", "small") in written
    assert {e for e, s in written if s == "published"} == set(gpu_check.ENGINES) - {"infinitetalk"}
    it = [c for c in checked if c[0] == "infinitetalk"]
    assert [(d, f, on) for _, d, f, on in it] == [("bf16", None, True), ("fp16", None, True)]
    assert dict(served)["infinitetalk"] == tmp_path / "infinitetalk-small"

    from lipsync.model import weights
    from lipsync.model.infinitetalk import random_weights

    calls = []
    monkeypatch.setattr(random_weights, "random_engine", lambda options: calls.append(options) or "engine")
    with gpu_check.random_infinitetalk_loader():
        assert weights.load_engine(None, "options") == "engine" and calls == ["options"]
