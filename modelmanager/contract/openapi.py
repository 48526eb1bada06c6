"""The OpenAPI 3.0 document of the HTTP API, generated from the contract's models.

Component schemas come from pydantic (``TypeAdapter.json_schemas``) over the request and
response models, turned from JSON Schema 2020-12 into OpenAPI 3.0's dialect (``X | None``
becomes ``nullable``, ``const`` an ``enum``, titles go). What is written here by hand is
what pydantic has no model for: paths, the error responses and their headers.
``tests/test_fuzz.py`` runs schemathesis against this document.

OpenAPI 3.0 rather than 3.1 on purpose: 3.0's ``integer`` is a number written without a
fraction, as the validator wants (``"num_ctx": 4096.0`` is refused), while the JSON Schema
of 3.1 counts ``4096.0`` as an integer.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from .. import __version__
from . import frontdoors, ollama, openai, requests, responses
from .fields import Schema
from .responses import ERROR_CODES

MAX_BODY_BYTES = 32 * 1024 * 1024  # http_api.MAX_BODY_BYTES; a test checks they agree

_REF = "#/components/schemas/{model}"
_MODELS: list[Any] = [
    requests.GenerateJob,
    requests.ChatJob,
    requests.EmbedJob,
    requests.BatchSubmission,
    requests.JobsQuery,
    responses.Error,
    responses.Submitted,
    responses.BatchSubmitted,
    responses.Job,
    responses.JobList,
    responses.Cancelled,
    responses.Retried,
    responses.Health,
    responses.Models,
    responses.Stats,
    *ollama.MODELS,  # the front doors: Ollama's API and the OpenAI-compatible API
    *openai.MODELS,
]
_ERROR_TEXT = {
    400: "Invalid request: bad JSON, a bad query parameter, or a field that fails "
    "validation (`details.field` names it; `details.index` gives the job in a batch).",
    401: "An API key is configured and the request lacks `Authorization: Bearer <key>`.",
    404: "No job with this id.",
    405: "The method is not allowed on this path (the `Allow` header lists those that are).",
    409: "The job is not in a state that allows this change.",
    413: f"The request body is larger than {MAX_BODY_BYTES} bytes (sized or chunked).",
    429: "The queue is full; retry after `Retry-After` seconds.",
    503: "The service is shutting down; retry after `Retry-After` seconds.",
}
_RETRY_AFTER = {"schema": {"type": "string", "pattern": "^[0-9]+$"}, "required": True}
_ERROR_HEADERS: dict[int, dict[str, Schema]] = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}},
    429: {"Retry-After": _RETRY_AFTER},
    503: {"Retry-After": _RETRY_AFTER},
}


def _openapi30(schema: Any) -> Any:
    """A pydantic JSON schema (2020-12) in OpenAPI 3.0's dialect."""
    if not isinstance(schema, dict):
        return schema
    out: Schema = {}
    for key, value in schema.items():
        if key == "title" or (key == "default" and value is None):
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out[key] = {name: _openapi30(s) for name, s in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = _openapi30(value)
        elif key in ("anyOf", "oneOf", "allOf"):
            out[key] = [_openapi30(s) for s in value]
        else:
            out[key] = value
    null = {"type": "null"}
    if null in out.get("anyOf", ()):
        rest = [s for s in out.pop("anyOf") if s != null]
        base = rest[0] if len(rest) == 1 else {"anyOf": rest}
        out = {**base, **out, "nullable": True}
    if "$ref" in out and len(out) > 1:  # 3.0 ignores whatever stands beside a $ref
        out = {"allOf": [{"$ref": out.pop("$ref")}], **out}
    return out


def _schemas() -> dict[str, Schema]:
    mode: JsonSchemaMode = "validation"
    inputs = [(m, mode, TypeAdapter(m)) for m in _MODELS]
    _, top = TypeAdapter.json_schemas(inputs, ref_template=_REF)
    schemas: dict[str, Schema] = {k: _openapi30(v) for k, v in top["$defs"].items()}
    jobs = [_ref(m.__name__) for m in (requests.GenerateJob, requests.ChatJob, requests.EmbedJob)]
    schemas["Submission"] = {
        "description": "One job. Without `kind`, `messages` makes a chat job, `input` an "
        "embed job, `prompt` a generate job. Unknown fields are refused, and so are fields "
        "of another kind.",
        "oneOf": jobs,
    }
    return schemas


def _ref(name: str) -> Schema:
    return {"$ref": _REF.format(model=name)}


def _error_responses() -> dict[str, Schema]:
    out: dict[str, Schema] = {}
    for status, code in ERROR_CODES.items():
        only_code = {"properties": {"error": {"properties": {"code": {"enum": [code]}}}}}
        response: Schema = {
            "description": _ERROR_TEXT[status],
            "content": {"application/json": {"schema": {"allOf": [_ref("Error"), only_code]}}},
        }
        if status in _ERROR_HEADERS:
            response["headers"] = _ERROR_HEADERS[status]
        out[code] = response
    return out


# --------------------------------------------------------------------------------- paths


def _ok(schema: str, description: str, links: dict[str, Schema] | None = None) -> Schema:
    response: Schema = {
        "description": description,
        "content": {"application/json": {"schema": _ref(schema)}},
    }
    if links:
        response["links"] = links
    return response


def _errors(*statuses: int) -> dict[str, Schema]:
    return {str(s): {"$ref": f"#/components/responses/{ERROR_CODES[s]}"} for s in (*statuses, 401)}


def _body(schema: str) -> Schema:
    return {"required": True, "content": {"application/json": {"schema": _ref(schema)}}}


_JOB_ID: Schema = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1},
    "description": "The id `submit` returned.",
}


def _job_links(source: str) -> dict[str, Schema]:
    param = {"job_id": f"$response.body#/{source}"}
    return {
        "GetJob": {"operationId": "getJob", "parameters": param},
        "CancelJob": {"operationId": "cancelJob", "parameters": param},
        "RetryJob": {"operationId": "retryJob", "parameters": param},
    }


def _query(model: Schema) -> list[Schema]:
    """The query parameters of an object schema, one per property, none required."""
    params = []
    for name, schema in model["properties"].items():
        schema = dict(schema)
        param: Schema = {"name": name, "in": "query", "required": False}
        if "description" in schema:
            param["description"] = schema.pop("description")
        if list(schema) == ["allOf"] and len(schema["allOf"]) == 1:
            schema = schema["allOf"][0]  # a bare $ref, its description moved out
        params.append({**param, "schema": schema})
    return params


def _paths(jobs_query: Schema) -> dict[str, Schema]:
    paths: dict[str, Schema] = {
        "/api/submit": {
            "post": {
                "operationId": "submit",
                "summary": "Submit one job; it is stored before the answer.",
                "requestBody": _body("Submission"),
                "responses": {
                    "200": _ok("Submitted", "Accepted and stored.", _job_links("job_id")),
                    **_errors(400, 413, 429, 503),
                },
            }
        },
        "/api/submit_batch": {
            "post": {
                "operationId": "submitBatch",
                "summary": "Submit many jobs at once, all or none.",
                "requestBody": _body("BatchSubmission"),
                "responses": {
                    "200": _ok("BatchSubmitted", "All accepted and stored, in order."),
                    **_errors(400, 413, 429, 503),
                },
            }
        },
        "/api/job/{job_id}": {
            "get": {
                "operationId": "getJob",
                "summary": "One job: status, result or error, timings, metadata.",
                "parameters": [_JOB_ID],
                "responses": {"200": _ok("Job", "The job."), **_errors(404)},
            }
        },
        "/api/jobs": {
            "get": {
                "operationId": "listJobs",
                "summary": "Jobs, newest first, a page at a time. Unknown or repeated "
                "parameters are refused.",
                "parameters": _query(jobs_query),
                "responses": {"200": _ok("JobList", "A page of matching jobs."), **_errors(400)},
            }
        },
        "/api/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness and backend reachability; never needs the API key.",
                "security": [],
                "responses": {"200": _ok("Health", "Service health.")},
            }
        },
        "/api/models": {
            "get": {
                "operationId": "models",
                "summary": "Known models: estimates, learned sizes, residency, queue depth.",
                "responses": {"200": _ok("Models", "Model catalog."), **_errors()},
            }
        },
        "/api/stats": {
            "get": {
                "operationId": "stats",
                "summary": "Queue, VRAM, GPUs and counters.",
                "responses": {"200": _ok("Stats", "Service statistics."), **_errors()},
            }
        },
        "/api/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {
                    "200": {
                        "description": "The OpenAPI document.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **_errors(),
                },
            }
        },
    }
    for action, summary, schema in (
        ("cancel", "Cancel a job that has not finished.", "Cancelled"),
        ("retry", "Put a failed job back in the queue.", "Retried"),
    ):
        paths[f"/api/job/{{job_id}}/{action}"] = {
            "post": {
                "operationId": f"{action}Job",
                "summary": summary,
                "parameters": [_JOB_ID],
                "responses": {
                    "200": _ok(schema, "Done.", {"GetJob": _job_links("job_id")["GetJob"]}),
                    **_errors(404, 409),
                },
            }
        }
    return paths


@functools.cache
def _document() -> dict[str, Any]:
    schemas = _schemas()
    jobs_query = schemas.pop("JobsQuery")
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Model Manager",
            "version": __version__,
            "description": "A VRAM-aware scheduler in front of Ollama. Every error answers "
            '`{"error": {"code", "message", "details"}}` with the status listed per '
            "operation; a wrong method answers 405 and an unknown path 404 in the same shape. "
            "Ollama's API and the OpenAI-compatible API (tags `Ollama`, `OpenAI`) answer "
            "errors in their own shapes.",
        },
        "paths": {**_paths(jobs_query), **frontdoors.paths()},
        "components": {
            "schemas": schemas,
            "responses": {**_error_responses(), **frontdoors.responses()},
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Needed only when the service runs with API_KEY set.",
                }
            },
        },
        "security": [{}, {"bearer": []}],
    }


def openapi_document() -> dict[str, Any]:
    """The whole OpenAPI 3.0 document as a JSON-ready dict (a fresh copy per call)."""
    return copy.deepcopy(_document())
