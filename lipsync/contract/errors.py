"""Typed errors shared by the API, the workers, the media library and the model.

Every failure a user can see is one of these. Each carries the fal ``error_type`` string, the HTTP status the
result endpoint answers with, and (for input problems) the input field it concerns. Pure Python: importing
this module pulls in neither Redis, HTTP nor torch, so ``media`` and ``model`` may raise these too.

Two body shapes exist in fal's protocol (reference/queue-protocol.md §3) and ``to_body`` picks the right one:
- model/validation errors (422): ``{"detail": [{"loc": ["body", field], "msg": …, "type": …}]}``
- request/infrastructure errors: ``{"detail": "<text>", "error_type": "<code>"}``
"""

from __future__ import annotations

import errno
import os
from typing import Any


class LipsyncError(Exception):
    """Base class: a failure with a fal ``error_type`` and an HTTP status."""

    error_type: str = "internal_error"
    status_code: int = 500

    def __init__(self, message: str, *, field: str | None = None, error_type: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if error_type is not None:
            self.error_type = error_type

    @property
    def is_validation(self) -> bool:
        return self.status_code == 422

    def to_body(self) -> dict[str, Any]:
        if self.is_validation:
            loc = ["body", self.field] if self.field else ["body"]
            return {"detail": [{"loc": loc, "msg": self.message, "type": self.error_type}]}
        return {"detail": self.message, "error_type": self.error_type}

    timeout_type: str | None = None  # set on timeouts only (see RequestTimeout)

    def to_record(self) -> dict[str, Any]:
        """What a finished request stores, enough to rebuild the error on the API side."""
        record = {
            "error_type": self.error_type,
            "status_code": self.status_code,
            "message": self.message,
            "field": self.field,
        }
        if self.timeout_type:
            record["timeout_type"] = self.timeout_type
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "LipsyncError":
        err = cls(record["message"], field=record.get("field"), error_type=record["error_type"])
        err.status_code = int(record["status_code"])
        # Records written before timeout types existed: a 504 then was always a user timeout.
        err.timeout_type = record.get("timeout_type") or ("user" if err.status_code == 504 else None)
        return err

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.error_type!r}, {self.message!r}, field={self.field!r})"


# --- input and media problems: 422, named after the field -------------------------------------------------


class InvalidInput(LipsyncError):
    """A request field is wrong in a way only visible after looking at the data (e.g. an edit out of range)."""

    error_type = "invalid_input"
    status_code = 422


class FileDownloadError(LipsyncError):
    """A file input could not be fetched: refused address, HTTP error, too large, timed out."""

    error_type = "file_download_error"
    status_code = 422


class InvalidMedia(LipsyncError):
    """The file is not usable media of the expected kind (not a video, truncated, no audio stream, …)."""

    error_type = "invalid_media"
    status_code = 422


class NoFaceDetected(LipsyncError):
    error_type = "no_face_detected"
    status_code = 422


# --- request lifecycle: fal's request-error codes ---------------------------------------------------------


class RequestCancelled(LipsyncError):
    """The user cancelled the request (fal's ``client_cancelled``, HTTP 499)."""

    error_type = "client_cancelled"
    status_code = 499

    def __init__(self, message: str = "Request was cancelled", **kwargs: Any):
        super().__init__(message, **kwargs)


class RequestTimeout(LipsyncError):
    """``timeout_type`` (the X-Fal-Request-Timeout-Type header): ``user`` when the caller's own deadline
    ran out (both clients then never retry), ``server`` for the server's limits (clients may retry)."""

    error_type = "request_timeout"
    status_code = 504

    def __init__(self, message: str, *, timeout_type: str = "server", **kwargs: Any):
        super().__init__(message, **kwargs)
        self.timeout_type = timeout_type


class RunnerDisconnected(LipsyncError):
    """The worker running the request died (killed, OOM, host lost)."""

    error_type = "runner_disconnected"
    status_code = 503


class PoisonRequest(LipsyncError):
    """The request's workers died running it (killed, OOM) more than once: it is not tried on a third."""

    error_type = "poison_request"
    status_code = 500


class DeviceOutOfMemory(LipsyncError):
    """The accelerator ran out of memory for this request even at half the batch: the request ends, the worker
    frees what it held and serves the next one. Smaller knobs (``vae_chunk_size``, ``frame_block_width``) or
    another worker may do."""

    error_type = "device_out_of_memory"
    status_code = 503
    retry_after_s = 30


class StorageError(LipsyncError):
    """Storage could not take a file (an upload, a data URI, a result): unavailable for now, so 503 with
    ``Retry-After`` where the API answers it live. The message never names a server path."""

    error_type = "storage_error"
    status_code = 503
    retry_after_s = 30


class StorageFull(StorageError):
    """Storage is out of space (or quota): 507 Insufficient Storage; writes work again once space returns."""

    error_type = "storage_full"
    status_code = 507


FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def storage_error(exc: OSError, what: str) -> StorageError:
    """An OSError from storage as a typed error that says what failed and why, without the path."""
    if exc.errno in FULL_ERRNOS:
        return StorageFull(f"{what}: the server's storage is full; retry later")
    reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
    return StorageError(f"{what}: storage is unavailable ({reason}); retry later")


class InternalError(LipsyncError):
    error_type = "internal_error"
    status_code = 500
