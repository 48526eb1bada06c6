"""The OpenAPI 3.0 document of the HTTP API, served at ``GET /api/openapi.json``.

Built from the same constants the code checks (``validation``, ``api``, ``models``), so a
limit changed there changes here. Request schemas say what ``validation.py`` accepts; where
JSON Schema cannot say it exactly (sizes in UTF-8 bytes, serialized metadata size, nesting
depth) the description does. Every error response has the one error shape
``{"error": {"code", "message", "details"}}`` with the code fixed per status.
``tests/test_fuzz.py`` runs schemathesis against this document.

OpenAPI 3.0 rather than 3.1 on purpose: 3.0's ``integer`` is a number written without a
fraction, as the validator wants (``"num_ctx": 4096.0`` is refused), while the JSON Schema
of 3.1 counts ``4096.0`` as an integer.
"""

from __future__ import annotations

from typing import Any

from .api import MAX_BATCH, MAX_LIST
from .models import JobKind, JobStatus, Priority
from .validation import (
    MAX_IDEMPOTENCY_KEY,
    MAX_IMAGE_BYTES,
    MAX_IMAGES,
    MAX_INPUTS,
    MAX_JSON_DEPTH,
    MAX_MESSAGES,
    MAX_METADATA_BYTES,
    MAX_MODEL_NAME,
    MAX_NUM_CTX,
    MAX_TEXT_BYTES,
    OPTIONS,
    ROLES,
)

Schema = dict[str, Any]

MAX_BODY_BYTES = 32 * 1024 * 1024  # http_api.MAX_BODY_BYTES; a test checks they agree

# validation.py's model-name grammar written without look-ahead, so that every JSON Schema
# engine and hypothesis can use it: [host[:port]/][namespace/]model[:tag], parts of
# letters, digits, "_", "." and "-", never starting with "." or "-", no "." in the
# namespace, never "..". A part is a first character, then characters where every "." is
# followed by a non-dot, then at most one trailing ".".
_C = "[A-Za-z0-9_-]"
_DOTTED = f"[A-Za-z0-9_](?:{_C}|\\.{_C})*\\.?"
_HOST = f"(?:{_DOTTED}(?::[0-9]+)?/)?"
_NAMESPACE = f"(?:[A-Za-z0-9_]{_C}*/)?"
MODEL_NAME_PATTERN = f"^{_HOST}{_NAMESPACE}{_DOTTED}(?::{_DOTTED})?$"
# Strict, padded base64 as base64.b64decode(..., validate=True) reads it.
BASE64_PATTERN = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
# The longest base64 string the size check (len * 3 // 4 <= MAX_IMAGE_BYTES) lets through.
MAX_IMAGE_CHARS = (MAX_IMAGE_BYTES * 4 + 3) // 3
# Text holds a character that is not white space (patterns search, they are not anchored)
# and no NUL. Said as a pattern plus "not", which generators handle far faster than one
# anchored pattern over the whole string.
NON_BLANK_PATTERN = "\\S"
NO_NUL: Schema = {"pattern": "\\u0000"}

ERROR_CODES = {
    400: "INVALID_REQUEST",
    401: "UNAUTHORIZED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    429: "QUEUE_FULL",
    503: "BACKEND_UNAVAILABLE",
}
_ERROR_TEXT = {
    400: "Invalid request: bad JSON, or a field that fails validation "
    "(`details.field` names it; `details.index` gives the job in a batch).",
    401: "An API key is configured and the request lacks `Authorization: Bearer <key>`.",
    404: "No job with this id.",
    405: "The method is not allowed on this path (the `Allow` header lists those that are).",
    409: "The job is not in a state that allows this change.",
    413: f"The request body is larger than {MAX_BODY_BYTES} bytes (sized or chunked).",
    429: "The queue is full; retry after `Retry-After` seconds.",
    503: "The service is shutting down; retry after `Retry-After` seconds.",
}
_ERROR_HEADERS: dict[int, dict[str, Schema]] = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}},
    429: {"Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"}, "required": True}},
    503: {"Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"}, "required": True}},
}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


def _text(description: str, *, non_blank: bool = False) -> Schema:
    schema: Schema = {
        "type": "string",
        "maxLength": MAX_TEXT_BYTES,
        "not": NO_NUL,
        "description": f"{description} At most {MAX_TEXT_BYTES} bytes in UTF-8; no NUL "
        "characters; valid Unicode (no lone surrogates).",
    }
    if non_blank:
        schema.update(minLength=1, pattern=NON_BLANK_PATTERN)
    return schema


def _object(properties: dict[str, Schema], required: list[str], **extra: Any) -> Schema:
    return {"type": "object", "properties": properties, "required": required, **extra}


# ------------------------------------------------------------------------ request bodies


def _option_schema(kinds: tuple[type, ...], name: str) -> Schema:
    if kinds == (bool,):
        return {"type": "boolean"}
    if kinds == (list,):
        return {"type": "array", "items": {"type": "string"}}
    if kinds == (int,):
        schema: Schema = {"type": "integer"}
        if name == "num_ctx":
            schema.update(minimum=1, maximum=MAX_NUM_CTX)
        return schema
    return {"type": "number"}


def _submission_schemas() -> dict[str, Schema]:
    common: dict[str, Schema] = {
        "model": _ref("ModelName"),
        "priority": _ref("Priority"),
        "options": _ref("Options"),
        "metadata": _ref("Metadata"),
        "idempotency_key": _ref("IdempotencyKey"),
    }
    fmt: Schema = {
        "description": '"json", or a JSON schema object the answer must follow '
        f"(nested at most {MAX_JSON_DEPTH} levels).",
        "anyOf": [{"type": "string", "enum": ["json"]}, {"type": "object"}],
    }
    generate = _object(
        {
            **common,
            "kind": {"type": "string", "enum": [JobKind.GENERATE.value]},
            "prompt": _text("The prompt.", non_blank=True),
            "images": _ref("Images"),
            "system": _text("System prompt."),
            "format": fmt,
        },
        ["model", "prompt"],
        additionalProperties=False,
        description="A generate job (Ollama /api/generate). `kind` may be left out.",
    )
    chat = _object(
        {
            **common,
            "kind": {"type": "string", "enum": [JobKind.CHAT.value]},
            "messages": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_MESSAGES,
                "items": _ref("Message"),
            },
            "format": fmt,
        },
        ["model", "messages"],
        additionalProperties=False,
        description="A chat job (Ollama /api/chat). `kind` may be left out.",
    )
    embed_text = _text("Text to embed.", non_blank=True)
    embed = _object(
        {
            **common,
            "kind": {"type": "string", "enum": [JobKind.EMBED.value]},
            "input": {
                "anyOf": [
                    embed_text,
                    {"type": "array", "minItems": 1, "maxItems": MAX_INPUTS, "items": embed_text},
                ]
            },
        },
        ["model", "input"],
        additionalProperties=False,
        description="An embed job (Ollama /api/embed). `kind` may be left out.",
    )
    return {
        "GenerateJob": generate,
        "ChatJob": chat,
        "EmbedJob": embed,
        "Submission": {
            "description": "One job. Without `kind`, `messages` makes a chat job, `input` an "
            "embed job, `prompt` a generate job. Unknown fields are refused.",
            "oneOf": [_ref("GenerateJob"), _ref("ChatJob"), _ref("EmbedJob")],
        },
        "BatchSubmission": _object(
            {
                "jobs": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_BATCH,
                    "items": _ref("Submission"),
                }
            },
            ["jobs"],
            additionalProperties=False,
            description="Jobs accepted all together or not at all. Unknown fields are refused.",
        ),
    }


def _field_schemas() -> dict[str, Schema]:
    return {
        "ModelName": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_MODEL_NAME,
            "pattern": MODEL_NAME_PATTERN,
            "description": "An Ollama model name, [host[:port]/][namespace/]model[:tag].",
            "example": "llama3.2:1b",
        },
        "Priority": {
            "type": "string",
            "enum": [p.value for p in Priority],
            "default": Priority.NORMAL.value,
        },
        "IdempotencyKey": _nullable(
            {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_IDEMPOTENCY_KEY,
                "description": "A second submit with the same key returns the first job.",
            }
        ),
        "Image": {
            "type": "string",
            "minLength": 4,
            "maxLength": MAX_IMAGE_CHARS,
            "pattern": BASE64_PATTERN,
            "description": f"Strict padded base64; at most {MAX_IMAGE_BYTES} bytes decoded.",
        },
        "Images": {"type": "array", "maxItems": MAX_IMAGES, "items": _ref("Image")},
        "Message": _object(
            {
                "role": {"type": "string", "enum": sorted(ROLES)},
                "content": _text("Message text (default empty)."),
                "images": _ref("Images"),
            },
            ["role"],
            additionalProperties=False,
        ),
        "Options": {
            "type": "object",
            "description": "Ollama runtime options; only these keys. `keep_alive` is not one: "
            "the manager owns residency.",
            "properties": {k: _option_schema(v, k) for k, v in sorted(OPTIONS.items())},
            "additionalProperties": False,
        },
        "Metadata": {
            "description": "Any JSON, stored and echoed, never interpreted. At most "
            f"{MAX_METADATA_BYTES} bytes serialized, nested at most {MAX_JSON_DEPTH} levels.",
        },
    }


# ----------------------------------------------------------------------------- responses


def _response_schemas() -> dict[str, Schema]:
    statuses = [s.value for s in JobStatus]
    opt_str = _nullable({"type": "string"})
    opt_int = _nullable({"type": "integer"})
    opt_num = _nullable({"type": "number"})
    opt_time = _nullable({"type": "string", "format": "date-time"})
    job_fields: dict[str, Schema] = {
        "job_id": {"type": "string"},
        "status": {"type": "string", "enum": statuses},
        "model": {"type": "string"},
        "kind": {"type": "string", "enum": [k.value for k in JobKind]},
        "priority": _ref("Priority"),
        "result": {"description": "Text (generate, chat) or a list of vectors (embed)."},
        "error": opt_str,
        "error_code": opt_str,
        "submitted_at": opt_time,
        "started_at": opt_time,
        "completed_at": opt_time,
        "attempts": {"type": "integer", "minimum": 0},
        "metadata": {},
        "load_duration": opt_int,
        "total_duration": opt_int,
        "prompt_eval_count": opt_int,
        "eval_count": opt_int,
    }
    integer = {"type": "integer"}
    model_fields: dict[str, Schema] = {
        "name": {"type": "string"},
        "estimated_vram_bytes": opt_int,
        "estimate_source": {"type": "string"},
        "learned_vram_bytes": opt_int,
        "learned_ps_vram_bytes": opt_int,
        "learned_load_seconds": opt_num,
        "loads": integer,
        "installed": _nullable({"type": "boolean"}),
        "loaded": {"type": "boolean"},
        "state": {"type": "string"},
        "in_flight": integer,
        "queue_depth": integer,
    }
    gpu_fields: dict[str, Schema] = {
        "index": integer,
        "name": {"type": "string"},
        "uuid": {"type": "string"},
        "total": integer,
        "used": integer,
        "free": integer,
        "utilization_pct": opt_int,
        "temperature_c": opt_int,
        "error": opt_str,
    }
    vram = _object({k: integer for k in ("total", "used", "free")}, ["total", "used", "free"])
    return {
        "ErrorDetails": {
            "type": "object",
            "description": "Facts about the error: `field` (the request field at fault), "
            "`index` (job in a batch), `job_id`, `status`, `allowed` (methods), ...",
            "properties": {
                "field": {"type": "string"},
                "index": {"type": "integer", "minimum": 0},
                "job_id": {"type": "string"},
                "status": {"type": "string"},
                "allowed": {"type": "array", "items": {"type": "string"}},
            },
        },
        "Error": _object(
            {
                "error": _object(
                    {
                        "code": {"type": "string", "enum": sorted(ERROR_CODES.values())},
                        "message": {"type": "string", "minLength": 1},
                        "details": _ref("ErrorDetails"),
                    },
                    ["code", "message", "details"],
                    additionalProperties=False,
                )
            },
            ["error"],
            additionalProperties=False,
        ),
        "Submitted": _object(
            {"job_id": {"type": "string"}, "status": {"type": "string", "enum": ["submitted"]}},
            ["job_id", "status"],
        ),
        "BatchSubmitted": _object(
            {
                "job_ids": {"type": "array", "items": {"type": "string"}},
                "status": {"type": "string", "enum": ["submitted"]},
                "count": {"type": "integer", "minimum": 1},
            },
            ["job_ids", "status", "count"],
        ),
        "Job": _object(job_fields, list(job_fields)),
        "JobList": _object(
            {"jobs": {"type": "array", "items": _ref("Job")}, "count": integer},
            ["jobs", "count"],
        ),
        "Cancelled": _object(
            {
                "job_id": {"type": "string"},
                "status": {"type": "string", "enum": [JobStatus.CANCELLED.value]},
                "was": {"type": "string", "enum": statuses},
            },
            ["job_id", "status", "was"],
        ),
        "Retried": _object(
            {"job_id": {"type": "string"}, "status": {"type": "string", "enum": statuses}},
            ["job_id", "status"],
        ),
        "Health": _object(
            {
                "status": {"type": "string", "enum": ["ok", "degraded"]},
                "accepting": {"type": "boolean"},
                "backend": _object(
                    {"url": {"type": "string"}, "up": {"type": "boolean"}, "error": opt_str},
                    ["url", "up", "error"],
                ),
                "vram_source": {"type": "string"},
                "uptime_seconds": {"type": "number"},
            },
            ["status", "accepting", "backend", "vram_source", "uptime_seconds"],
        ),
        "Models": _object(
            {"models": {"type": "array", "items": _object(model_fields, list(model_fields))}},
            ["models"],
        ),
        "Stats": _object(
            {
                "running": {"type": "boolean"},
                "queue": _object(
                    {
                        "total_jobs": integer,
                        "by_status": {"type": "object", "additionalProperties": integer},
                        "waiting": integer,
                        "by_model": {"type": "object"},
                    },
                    ["total_jobs", "by_status", "waiting", "by_model"],
                ),
                "resources": _object(
                    {
                        "source": {"type": "string"},
                        "vram": vram,
                        "loaded_models": {"type": "array", "items": {"type": "string"}},
                        "managed_models": {"type": "object"},
                        "gpus": {
                            "type": "array",
                            "items": _object(gpu_fields, list(gpu_fields)),
                        },
                        "backend_up": {"type": "boolean"},
                    },
                    ["source", "vram", "loaded_models", "managed_models", "gpus", "backend_up"],
                ),
                "counters": {"type": "object", "additionalProperties": integer},
            },
            ["running", "queue", "resources", "counters"],
        ),
    }


def _error_responses() -> dict[str, Schema]:
    out: dict[str, Schema] = {}
    for status, code in ERROR_CODES.items():
        response: Schema = {
            "description": _ERROR_TEXT[status],
            "content": {
                "application/json": {
                    "schema": {
                        "allOf": [
                            _ref("Error"),
                            {"properties": {"error": {"properties": {"code": {"enum": [code]}}}}},
                        ]
                    }
                }
            },
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
    refs = {s: {"$ref": f"#/components/responses/{ERROR_CODES[s]}"} for s in (*statuses, 401)}
    return {str(s): ref for s, ref in refs.items()}


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


def _paths() -> dict[str, Schema]:
    job_ops = ("cancel", "Cancel a job that has not finished.", "Cancelled", 409)
    retry_ops = ("retry", "Put a failed job back in the queue.", "Retried", 409)
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
                "summary": "Jobs, newest first.",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {"type": "string", "enum": [s.value for s in JobStatus]},
                    },
                    {
                        "name": "model",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "Model name; `llama3.2` means `llama3.2:latest`.",
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_LIST,
                            "default": 100,
                        },
                    },
                ],
                "responses": {"200": _ok("JobList", "Matching jobs."), **_errors(400)},
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
    for action, summary, schema, conflict in (job_ops, retry_ops):
        paths[f"/api/job/{{job_id}}/{action}"] = {
            "post": {
                "operationId": f"{action}Job",
                "summary": summary,
                "parameters": [_JOB_ID],
                "responses": {
                    "200": _ok(schema, "Done.", {"GetJob": _job_links("job_id")["GetJob"]}),
                    **_errors(404, conflict),
                },
            }
        }
    return paths


def openapi_document() -> dict[str, Any]:
    """The whole OpenAPI 3.0 document as a JSON-ready dict (a fresh copy per call)."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Model Manager",
            "version": "1.0.0",
            "description": "A VRAM-aware scheduler in front of Ollama. Every error answers "
            '`{"error": {"code", "message", "details"}}` with the status listed per '
            "operation; a wrong method answers 405 and an unknown path 404 in the same shape.",
        },
        "paths": _paths(),
        "components": {
            "schemas": {
                **_field_schemas(),
                **_submission_schemas(),
                **_response_schemas(),
            },
            "responses": _error_responses(),
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
