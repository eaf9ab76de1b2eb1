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
    assert len(rows) == 6 and all(line.endswith("| ok |") for line in rows), rows
