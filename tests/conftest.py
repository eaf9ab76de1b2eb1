"""Shared fixtures: test media made on the spot, and a running stack (redis-server + API + worker)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lipsync.testing.media import make_video, make_wav
from lipsync.testing.stack import API_KEYS, Stack, make_stack

ALICE = f"alice:{API_KEYS['alice']}"
BOB = f"bob:{API_KEYS['bob']}"


@pytest.fixture(scope="session", autouse=True)
def _fal_client_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Never let fal-client read a developer's real credentials or call auth.fal.ai.
    os.environ["FAL_HOME_DIR"] = str(tmp_path_factory.mktemp("fal-home"))
    os.environ["FAL_KEY"] = ALICE


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    return {
        "video": make_video(d / "face.mp4", frames=12),
        "long_video": make_video(d / "long.mp4", frames=60),
        "audio": make_wav(d / "speech.wav", seconds=1.0),
    }


def _stack(tmp_path_factory: pytest.TempPathFactory, name: str, **settings: str) -> Iterator[Stack]:
    stack = make_stack(tmp_path_factory.mktemp(name), **settings)
    try:
        stack.start_api()
        stack.start_worker(f"{name}-w1")
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The default stack: private URLs refused, as in production."""
    yield from _stack(tmp_path_factory, "stack")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Stack):
                report.sections.append(("process logs", value.logs()))
