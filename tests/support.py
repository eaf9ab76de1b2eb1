"""What only the test suite needs; the processes and media helpers shared with the benchmarks live in
``lipsync.testing``."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The repository root (Dockerfile, compose.yaml, scripts/)."""
