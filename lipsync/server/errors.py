"""Errors only the API raises. Each is a ``LipsyncError``, so the one handler in ``app.py`` answers them all."""

from __future__ import annotations

from lipsync.contract.errors import LipsyncError


class Unauthorized(LipsyncError):
    error_type = "unauthorized"
    status_code = 401

    def __init__(self, message: str = "Unauthorized: missing or invalid API key"):
        super().__init__(message)


class Forbidden(LipsyncError):
    error_type = "forbidden"
    status_code = 403

    def __init__(self, message: str = "Signature is missing, invalid or expired"):
        super().__init__(message)


class NotFound(LipsyncError):
    error_type = "not_found"
    status_code = 404


class StillRunning(LipsyncError):
    error_type = "request_in_progress"
    status_code = 400


class TooManyRequests(LipsyncError):
    """Over the key's rate limit or in-flight cap; ``retry_after_s`` becomes the Retry-After header."""

    error_type = "rate_limited"
    status_code = 429

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PayloadTooLarge(LipsyncError):
    error_type = "payload_too_large"
    status_code = 413


class BodyTimeout(LipsyncError):
    """The client stopped sending its request body (a stalled upload holds no server slot for long)."""

    error_type = "body_timeout"
    status_code = 408
