"""The package's layers import one way only (pyproject's ``[tool.importlinter]`` contracts), and the scripts
import no test code.

The contracts run on the real tree; a copy of the package with one backwards import must break them, so the
check is known to bite (a contract that cannot fail would pass here too).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT


def lint_imports(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_layer_contracts_hold_on_the_tree():
    done = lint_imports(ROOT, ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "backwards", "contract"),
    [
        ("contract/errors.py", "import lipsync.queue.jobs", "Layers import only downwards"),
        ("media/probe.py", "import lipsync.storage", "Engines and media know nothing of the queue"),
        ("server/app.py", "import lipsync.model.devices", "The API never imports torch"),
        ("worker/job.py", "import lipsync.cli", "Layers import only downwards"),
    ],
)
def test_a_backwards_import_breaks_a_contract(tmp_path, module, backwards, contract):
    shutil.copytree(ROOT / "lipsync", tmp_path / "lipsync", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "lipsync" / module
    target.write_text(target.read_text() + f"\n{backwards}  # deliberately backwards\n")
    done = lint_imports(tmp_path, tmp_path)
    assert done.returncode != 0
    broken = done.stdout[done.stdout.index("Broken contracts"):]
    assert contract in broken and backwards.split()[-1] in broken, done.stdout


def test_scripts_import_no_test_code():
    offenders = []
    for script in sorted((ROOT / "scripts").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text(), str(script))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{script.name}: {n}" for n in names if n == "tests" or n.startswith("tests.")]
    assert not offenders, offenders

