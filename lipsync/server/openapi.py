"""/openapi.json with each configured app's real input and output schema.

The submit and run routes read their body themselves (bounded size, validation context, fal's error shape),
so FastAPI cannot infer their schemas; this adds one documented path per app, with the pydantic models'
JSON schemas, and leaves the generic catch-all routes out of the document.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from lipsync.contract.settings import Settings
from lipsync.server.protocol import SubmitResponse

REF = "#/components/schemas/{model}"


def _schema_ref(model: type[BaseModel], components: dict[str, Any]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template=REF)
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _header(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": description}


# The fal headers a submit honours (README, "Behaviour worth knowing").
SUBMIT_HEADERS = [
    _header("x-fal-queue-priority", {"type": "string", "enum": ["normal", "low"]}, "low waits behind every normal request"),
    _header("x-fal-request-timeout", {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
            "seconds (> 1) the request may wait to start; then it ends request_timeout (type user)"),
    _header("x-fal-no-retry", {"type": "string", "enum": ["1", "true"]}, "fail at once if the worker dies (no retry)"),
    _header("x-fal-object-lifecycle-preference", {"type": "string"},
            'JSON {"expiration_duration_seconds": N}: result files and URLs live N s (bounded by the server)'),
]


def install_openapi(app: FastAPI, settings: Settings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = spec.setdefault("components", {}).setdefault("schemas", {})
        _schema_ref(SubmitResponse, components)
        errors = {
            "401": {"$ref": "#/components/responses/Unauthorized"},
            "422": _json({"$ref": REF.format(model="ValidationErrorBody")}, "Invalid input, naming the field"),
        }
        spec["components"]["responses"] = {
            "Unauthorized": _json({"$ref": REF.format(model="RequestErrorBody")}, "Missing or invalid API key")
        }
        for app_id, config in settings.apps.items():
            body = {"required": True, "content": {"application/json": {"schema": _schema_ref(config.load_input_model(), components)}}}
            output = _schema_ref(config.load_output_model(), components)
            webhook = {"name": "fal_webhook", "in": "query", "required": False, "schema": {"type": "string"},
                       "description": "URL to POST the result to when the request finishes"}
            spec["paths"][f"/{app_id}"] = {"post": {
                "summary": f"Submit a request to {app_id}", "operationId": f"submit_{app_id}", "tags": [app_id],
                "parameters": [webhook, *SUBMIT_HEADERS], "requestBody": body,
                "responses": {"200": _json({"$ref": REF.format(model="SubmitResponse")}, "Queued"), **errors},
            }}
            spec["paths"][f"/run/{app_id}"] = {"post": {
                "summary": f"Run {app_id} synchronously", "operationId": f"run_{app_id}", "tags": [app_id],
                "requestBody": body, "responses": {"200": _json(output, "The result"), **errors},
            }}
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
