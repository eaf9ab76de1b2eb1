"""Fixtures for the engine tests: a MuseTalk 1.5 folder with random weights in the published layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from lipsync.model.musetalk.random_weights import write_random_weights


@pytest.fixture(scope="session")
def musetalk_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_weights(tmp_path_factory.mktemp("weights") / "musetalk", seed=0)
