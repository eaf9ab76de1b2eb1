"""Fixtures for the engine tests: random weights in each engine's published layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from lipsync.model import weights
from lipsync.model.musetalk.random_weights import write_random_weights


@pytest.fixture(scope="session")
def musetalk_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_weights(tmp_path_factory.mktemp("weights") / "musetalk", seed=0)


@pytest.fixture(scope="session")
def small_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every engine's small random weights (``lipsync weights random ENGINE DIR``), written once a session."""
    root = tmp_path_factory.mktemp("small-weights")
    return {engine: weights.write_random_weights(engine, root / engine, size="small") for engine in weights.ENGINES}


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: extra threads only contend on a busy CPU (engine and recipe run alike); a module opts in."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
