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
from ..waiting import MAX_WAIT_SECONDS
from . import dashboard, disk, frontdoors, instances, nodes, ollama, openai, requests, responses
from .fields import Schema
from .responses import ERROR_CODES, MORE_ERROR_CODES

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
    nodes.NodeRegistration,
    nodes.Nodes,
    nodes.NodeDraining,
    nodes.GpuDevices,
    nodes.GpuDriver,
    instances.Instances,
    disk.ModelRequest,
    disk.DeleteRequest,
    disk.ModelStatus,
    disk.DownloadStarted,
    disk.ModelDeleted,
    disk.ModelList,
    disk.DiskSpace,
    dashboard.Dashboard,
    *ollama.MODELS,  # the front doors: Ollama's API and the OpenAI-compatible API
    *openai.MODELS,
]
_ERROR_TEXT = {
    400: "Invalid request: bad JSON, a bad query parameter, or a field that fails "
    "validation (`details.field` names it; `details.index` gives the job in a batch).",
    401: "An API key is configured and the request lacks `Authorization: Bearer <key>`.",
    404: "No job (or node, or model on the node) with this id (or name).",
    405: "The method is not allowed on this path (the `Allow` header lists those that are).",
    409: "The job is not in a state that allows this change; or a node of this name exists "
    "already, or comes from the settings and cannot be removed through the API; or the "
    "model is downloading already, or jobs for a model being deleted wait or run.",
    413: f"The request body is larger than {MAX_BODY_BYTES} bytes (sized or chunked).",
    429: "The queue is full, or MAX_DOWNLOADS downloads run on the node; retry after "
    "`Retry-After` seconds.",
    501: "The node's Ollama lacks the endpoint this needs (an older version).",
    503: "The service is shutting down, or the node's Ollama cannot be reached "
    "(`BACKEND_UNAVAILABLE`), or the PostgreSQL of `DATABASE_URL` does not answer "
    "(`DATABASE_UNAVAILABLE`); retry after `Retry-After` seconds.",
    504: "The node's Ollama did not answer within `startup_timeout_s`; it was not added.",
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
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):  # 3.0: a flag on the bound
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
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
    # a job's null option is read as absent, as Ollama reads it (requests.without_nulls)
    for option in schemas["Options"]["properties"].values():
        option["nullable"] = True
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
        codes = [code, *MORE_ERROR_CODES.get(status, ())]
        only_code = {"properties": {"error": {"properties": {"code": {"enum": codes}}}}}
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


_WAIT: Schema = {
    "name": "wait",
    "in": "query",
    "required": False,
    "schema": {
        "type": "number",
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": MAX_WAIT_SECONDS,
    },
    "description": "Answer once the job is finished (complete, failed or cancelled), or "
    "after this many seconds with its current state. At most MAX_WAITERS requests wait at "
    "once; beyond them the answer comes at once. The `X-Wait` header says which.",
}
_X_WAIT: dict[str, Schema] = {
    "X-Wait": {
        "description": "With `wait`: `finished`, `timeout`, `busy` (MAX_WAITERS requests "
        "were waiting: answered at once) or `stopping` (the service is shutting down).",
        "schema": {"type": "string", "enum": ["finished", "timeout", "busy", "stopping"]},
        "required": False,
    }
}
_TEXT: Schema = {"schema": {"type": "string"}}


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
                "summary": "One job: status, result or error, timings, metadata; with "
                "`wait`, once it is finished.",
                "parameters": [_JOB_ID, _WAIT],
                "responses": {
                    "200": {**_ok("Job", "The job."), "headers": _X_WAIT},
                    **_errors(400, 404),
                },
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
        "/api/dashboard": {
            "get": {
                "operationId": "dashboard",
                "summary": "What the dashboard page shows: GPUs, models, queue, events, jobs.",
                "responses": {"200": _ok("Dashboard", "The dashboard's data."), **_errors()},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text format; OpenMetrics when `Accept` asks).",
                "responses": {
                    "200": {
                        "description": "The metrics.",
                        "content": {"text/plain": _TEXT, "application/openmetrics-text": _TEXT},
                    },
                    **_errors(),
                },
            }
        },
        "/": {
            "get": {
                "operationId": "root",
                "summary": "`Ollama is running` as Ollama answers it; the dashboard page when "
                "`Accept` prefers text/html (a browser). Never needs the API key.",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The text, or the page.",
                        "content": {"text/plain": _TEXT, "text/html": _TEXT},
                    }
                },
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
    paths["/api/v1/nodes"] = {
        "get": {
            "operationId": "listNodes",
            "summary": "The Ollama servers driven: health, GPUs, loaded models, hardware.",
            "responses": {"200": _ok("Nodes", "Every node."), **_errors()},
        },
        "post": {
            "operationId": "addNode",
            "summary": "Add an Ollama server while the service runs; answers once it is "
            "healthy. Registrations survive a restart.",
            "requestBody": _body("NodeRegistration"),
            "responses": {
                "201": _ok("Node", "Added; the scheduler uses it from now on."),
                **_errors(400, 409, 413, 504),
            },
        },
    }
    paths["/api/v1/nodes/{name}"] = {
        "delete": {
            "operationId": "removeNode",
            "summary": "Drain a node added through the API: no new work; it goes once its "
            "running jobs end and its models are unloaded.",
            "parameters": [
                {
                    "name": "name",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1},
                    "description": "The node's name.",
                }
            ],
            "responses": {
                "202": _ok("NodeDraining", "Draining."),
                **_errors(404, 409),
            },
        }
    }
    paths["/api/v1/instances"] = {
        "get": {
            "operationId": "listInstances",
            "summary": "The live Model Managers sharing this queue (DATABASE_URL), with "
            "their nodes, the models they hold and their leases; with SQLite, this one.",
            "responses": {"200": _ok("Instances", "Every live instance."), **_errors()},
        }
    }
    paths["/api/v1/gpu/devices"] = {
        "get": {
            "operationId": "gpuDevices",
            "summary": "This host's GPUs through NVML (empty with no GPU or no NVML); "
            "memory in MB. Another Model Manager reads a remote node's GPUs here.",
            "responses": {"200": _ok("GpuDevices", "The devices."), **_errors()},
        }
    }
    paths["/api/v1/gpu/driver"] = {
        "get": {
            "operationId": "gpuDriver",
            "summary": "Driver, CUDA driver and NVML versions (null where NVML cannot tell).",
            "responses": {"200": _ok("GpuDriver", "The versions."), **_errors()},
        }
    }
    paths.update(_model_paths())
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


_NODE_QUERY: Schema = {
    "name": "node",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "pattern": "^[a-z0-9_.-]{1,64}$"},
    "description": "Only this node (default: every node).",
}


def _model_paths() -> dict[str, Schema]:
    """The models on the nodes' disks (``/api/v1/models/*``)."""
    return {
        "/api/v1/models/status": {
            "post": {
                "operationId": "modelStatus",
                "summary": "Whether the model is on the node's disk: DOWNLOADED, DOWNLOADING "
                "(with progress), PARTIAL (a download stopped part way) or NOT_FOUND.",
                "requestBody": _body("ModelRequest"),
                "responses": {
                    "200": _ok("ModelStatus", "Where the model stands."),
                    **_errors(400, 404, 413, 503),
                },
            }
        },
        "/api/v1/models/download": {
            "post": {
                "operationId": "modelDownload",
                "summary": "Start downloading the model onto the node (Ollama's pull); "
                "answers at once. At most MAX_DOWNLOADS at once per node; a failed pull is "
                "retried with backoff and ends PARTIAL with the node's message.",
                "requestBody": _body("ModelRequest"),
                "responses": {
                    "202": _ok("DownloadStarted", "Started; follow it with the status."),
                    **_errors(400, 404, 409, 413, 429, 501),
                },
            }
        },
        "/api/v1/models": {
            "delete": {
                "operationId": "modelDelete",
                "summary": "Cancel the model's download on the node, or delete the model "
                "(a tag, every tag, or the tags of one digest). Refused while jobs for it "
                "wait or run, unless `force`.",
                "requestBody": _body("DeleteRequest"),
                "responses": {
                    "200": _ok("ModelDeleted", "Deleted or cancelled."),
                    **_errors(400, 404, 409, 413, 501, 503),
                },
            }
        },
        "/api/v1/models/list": {
            "get": {
                "operationId": "modelList",
                "summary": "Every model on each node's disk, with downloads under way and "
                "stopped ones.",
                "parameters": [_NODE_QUERY],
                "responses": {
                    "200": _ok("ModelList", "The models."),
                    **_errors(400, 404, 503),
                },
            }
        },
        "/api/v1/models/space": {
            "get": {
                "operationId": "modelSpace",
                "summary": "Per node: the size of its models, the free space of their disk "
                "and the models directory (where it can be read from here).",
                "parameters": [_NODE_QUERY],
                "responses": {"200": _ok("DiskSpace", "The figures."), **_errors(400, 404)},
            }
        },
    }


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
