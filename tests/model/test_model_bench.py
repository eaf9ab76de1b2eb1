"""The benchmark script runs (short lengths here; the 50/100/200/400 run is documented in lipsync/model/README.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_reports_speed_and_peak_memory_per_length():
    proc = subprocess.run([sys.executable, "scripts/bench_model.py", "--frames", "9", "17", "--steps", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("frames")]
    assert len(lines) == 2
    for line, frames in zip(lines, (9, 17)):
        match = re.search(r"frames\s+(\d+).*?([\d.]+) s/output-s\s+peak RSS\s+([\d.]+) MiB", line)
        assert match and int(match.group(1)) == frames
        assert float(match.group(2)) > 0 and float(match.group(3)) > 100
