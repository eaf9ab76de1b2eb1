"""Writes deploy/requirements.txt: the image's dependencies pinned to what this checkout's .venv runs.

The image installs that file before it copies the source (Dockerfile), so a source change reuses those
layers. Run it after changing pyproject.toml's dependencies: `.venv/bin/python deploy/lock.py`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALSO = ["setuptools", "async-timeout"]  # see HEADER
HEADER = """\
# The image's Python dependencies, pinned: what `pip install ".[model]"` needs on Linux x86_64, Python 3.11,
# except torch (the Dockerfile installs it first, from TORCH_INDEX_URL); setuptools builds the project's wheel;
# async-timeout is redis' below Python 3.11.3 (Debian bookworm's python3.11 is 3.11.2).
# Written by deploy/lock.py from the versions the tests ran with; do not edit by hand.
"""


def main() -> None:
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                            check=True, capture_output=True, text=True).stdout
    constraints = ROOT / "deploy" / ".freeze.txt"
    constraints.write_text("".join(line + "\n" for line in freeze.splitlines() if "==" in line))
    try:
        report = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", "-",
             "-c", str(constraints), f"{ROOT}[model]", *ALSO],
            check=True, capture_output=True, text=True, cwd=ROOT).stdout
    finally:
        constraints.unlink()
    pins = sorted((p["metadata"]["name"].lower(), p["metadata"]["version"]) for p in json.loads(report)["install"])
    lines = [f"{name}=={version}" for name, version in pins if name not in {"torch", "lipsync-server"}]
    (ROOT / "deploy" / "requirements.txt").write_text(HEADER + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
