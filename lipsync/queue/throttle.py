"""Warnings for failures that repeat every tick (Redis down for minutes): one line per ``every_s``, with how
many were held back, instead of one every half second."""

from __future__ import annotations

import logging
import time


class Throttled:
    def __init__(self, logger: logging.Logger, every_s: float = 60.0):
        self.logger, self.every_s = logger, every_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        """Log ``message`` under ``key`` at most once every ``every_s``."""
        now = time.monotonic()
        if now - self._last.get(key, -self.every_s) < self.every_s:
            self._held[key] = self._held.get(key, 0) + 1
            return
        held = self._held.pop(key, 0)
        self._last[key] = now
        suffix = f" ({held} more like it in the last {self.every_s:.0f} s)" if held else ""
        self.logger.warning(message + suffix, *args)
