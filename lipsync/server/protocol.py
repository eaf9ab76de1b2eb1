"""Response bodies of fal's queue protocol (reference/queue-protocol.md §2–§5, §9), as pydantic models.

They document the API in /openapi.json and build every body the routers send, so the shapes live here once.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from lipsync.queue.records import RequestRecord, RequestStatus


class RequestUrls(BaseModel):
    request_id: str
    response_url: str
    status_url: str
    cancel_url: str

    @classmethod
    def build(cls, base_url: str, app_id: str, request_id: str) -> "RequestUrls":
        response_url = f"{base_url.rstrip('/')}/{app_id}/requests/{request_id}"
        return cls(
            request_id=request_id,
            response_url=response_url,
            status_url=f"{response_url}/status",
            cancel_url=f"{response_url}/cancel",
        )


class SubmitResponse(RequestUrls):
    status: Literal["IN_QUEUE"] = "IN_QUEUE"
    queue_position: int
    gateway_request_id: str


class LogEntry(BaseModel):
    message: str
    level: Literal["STDERR", "STDOUT", "ERROR", "INFO", "WARN", "DEBUG"]
    source: Literal["USER"] = "USER"
    timestamp: str


class StatusResponse(RequestUrls):
    status: RequestStatus
    queue_position: int | None = None
    logs: list[LogEntry] | None = None
    metrics: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None

    @classmethod
    def build(
        cls,
        record: RequestRecord,
        base_url: str,
        *,
        logs: list[dict[str, str]] | None,
        queue_position: int | None = None,
    ) -> "StatusResponse":
        urls = RequestUrls.build(base_url, record.app_id, record.request_id)
        body = cls(**urls.model_dump(), status=record.status, logs=logs)
        if record.status is RequestStatus.IN_QUEUE:
            body.queue_position = queue_position or 0
        if record.status is RequestStatus.COMPLETED:
            body.metrics = record.metrics
            if record.error:
                body.error = record.error["message"]
                body.error_type = record.error["error_type"]
        return body

    def to_json(self) -> dict[str, Any]:
        # IN_QUEUE needs queue_position; IN_PROGRESS/COMPLETED need a `logs` key (null allowed).
        return self.model_dump(mode="json", exclude_none=True) | {"logs": self.model_dump(mode="json")["logs"]}


class CancelResponse(BaseModel):
    status: Literal["CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND"]


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    detail: list[ErrorItem]


class RequestErrorBody(BaseModel):
    detail: str
    error_type: str | None = None


class UploadInitiateRequest(BaseModel):
    content_type: str = "application/octet-stream"
    file_name: str | None = None


class UploadInitiateResponse(BaseModel):
    upload_url: str
    file_url: str


class MultipartPart(BaseModel):
    partNumber: int
    etag: str


class MultipartComplete(BaseModel):
    parts: list[MultipartPart]


class UploadTokenResponse(BaseModel):
    token: str
    token_type: str
    base_url: str
    expires_at: str


class UploadedFile(BaseModel):
    access_url: str


STORAGE_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: {"model": RequestErrorBody, "description": "Signature missing, invalid or expired"},
    413: {"model": RequestErrorBody, "description": "File larger than the configured limit"},
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": RequestErrorBody, "description": "Missing or invalid API key"},
    400: {"model": RequestErrorBody, "description": "Bad request"},
    404: {"model": RequestErrorBody, "description": "Unknown application or request"},
    422: {"model": ValidationErrorBody, "description": "Invalid input, naming the field"},
}
