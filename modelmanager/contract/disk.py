"""Models on disk as pydantic models: the bodies of ``POST /api/v1/models/status``,
``POST /api/v1/models/download`` and ``DELETE /api/v1/models``, the query of ``GET
/api/v1/models/list`` and ``GET /api/v1/models/space``, and what they answer.

A model is named as Ollama names it (``[host/][namespace/]model[:tag]``); its ``digest``
is the sha256 of its manifest as ``/api/tags`` lists it (64 hex digits; 12 or more, with
or without ``sha256:``, are accepted). Sizes are bytes, except ``*_gb`` (10**9 bytes, as
``ollama list`` counts); times are ISO 8601 in UTC; durations seconds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema

from ..errors import InvalidRequest
from .fields import ModelName, fail, optional
from .nodes import NodeName
from .requests import invalid_request

DIGEST_RE = re.compile(r"^(sha256:)?[0-9a-f]{12,64}$")


def _digest(value: str) -> str:
    if not DIGEST_RE.match(value):
        fail("must be a model digest as /api/tags lists it: 12 to 64 hex digits (a-f 0-9)")
    return value


Digest = Annotated[
    str,
    AfterValidator(_digest),
    WithJsonSchema({"type": "string", "pattern": DIGEST_RE.pattern}),
]
_STRICT = ConfigDict(
    strict=True, extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True
)


class ModelRequest(BaseModel):
    """The body of `POST /api/v1/models/status` and `POST /api/v1/models/download`."""

    model_config = _STRICT

    model: ModelName
    """The model, as Ollama names it (`qwen2.5:0.5b`); no tag means `latest`."""
    node: NodeName | None = None
    """The node (Ollama server) it is about; needed only when there are several."""


class DeleteRequest(BaseModel):
    """The body of `DELETE /api/v1/models`."""

    model_config = _STRICT

    model: ModelName
    """The model. With a tag (`qwen2.5:0.5b`) that tag; without one (`qwen2.5`) every tag
    of the model on the node."""
    node: NodeName | None = None
    """The node; needed only when there are several."""
    digest: Digest | None = None
    """Only the tag(s) with this digest (as `/api/tags` and the list show it)."""
    force: bool = False
    """Delete (or cancel) even while jobs for the model wait or run."""


class NodeQuery(BaseModel):
    """The query of `GET /api/v1/models/list` and `GET /api/v1/models/space`."""

    model_config = _STRICT

    node: NodeName | None = None
    """Only this node (default: every node)."""


def parse_model_request(body: Any) -> ModelRequest:
    """Check a status or download body; a 400 naming the first bad field."""
    try:
        return ModelRequest.model_validate(body)
    except ValidationError as exc:
        raise invalid_request(exc) from None


def parse_delete_request(body: Any) -> DeleteRequest:
    """Check a delete body; a 400 naming the first bad field."""
    try:
        return DeleteRequest.model_validate(body)
    except ValidationError as exc:
        raise invalid_request(exc) from None


def parse_node_query(query: Mapping[str, list[str]]) -> NodeQuery:
    """The query string (each parameter with its values); unknown or repeated parameters
    are refused with a 400 naming them."""
    for name, values in query.items():
        if len(values) != 1:
            raise InvalidRequest(f"'{name}' may be given once", field=name)
    try:
        return NodeQuery.model_validate({k: v[0] for k, v in query.items()})
    except ValidationError as exc:
        raise invalid_request(exc) from None


# --------------------------------------------------------------------------- answers


class _Answer(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)


Status = Literal["DOWNLOADED", "DOWNLOADING", "NOT_FOUND", "PARTIAL"]
Bytes = Annotated[int, Field(ge=0)]


class Progress(_Answer):
    start_time: str
    """When the download started (ISO 8601, UTC)."""
    elapsed_seconds: Annotated[float, Field(ge=0)]
    completed_bytes: Bytes | None
    """Bytes downloaded so far, summed over the layers Ollama reported; null when the
    node's Ollama reports no byte counts (an older version)."""
    total_bytes: Bytes | None
    """The sizes of the layers Ollama has announced so far (it announces each when it
    reaches it, the weights first); null as `completed_bytes`."""


class ModelStatus(_Answer):
    model: str
    """As the request named it."""
    node: str
    status: Status
    progress: Progress = optional()
    """Only while `DOWNLOADING`."""
    task_id: str = optional()
    """The download under way, or the one that stopped (`PARTIAL`)."""
    digest: str = optional()
    """When `DOWNLOADED`: the digest `/api/tags` lists."""
    size_bytes: Bytes = optional()
    """When `DOWNLOADED`: its size on disk as `/api/tags` lists it."""
    error: str = optional()
    """Why the last download stopped (`PARTIAL`, or `NOT_FOUND` when the registry has no
    such model), in the node's own words."""


class DownloadStarted(_Answer):
    task_id: str
    status: Literal["DOWNLOADING"]
    model: str
    node: str


class ModelDeleted(_Answer):
    model: str
    node: str
    status: Literal["deleted", "cancelled"]
    deleted: list[str] = optional()
    """The tags deleted, as the node stored them."""
    task_id: str = optional()
    """The download cancelled."""


class ModelEntry(_Answer):
    model: str
    """As the node stores it (`DOWNLOADED`) or as the download named it."""
    node: str
    status: Status
    size_bytes: Bytes | None
    digest: str | None
    progress: Progress = optional()
    task_id: str = optional()
    error: str = optional()


class NodeError(_Answer):
    node: str
    error: str


class ModelList(_Answer):
    models: list[ModelEntry]
    unreachable: list[NodeError] = optional()
    """Nodes whose Ollama did not answer (their models are missing from `models`)."""


class NodeSpace(_Answer):
    node: str
    cache_size_gb: Annotated[float, Field(ge=0)] | None
    """The size of its models: the files of its models directory where it can be read,
    else what its `/api/tags` lists (each digest once); in GB (10**9 bytes)."""
    available_gb: Annotated[float, Field(ge=0)] | None
    """Free space on the disk of its models directory (GB); null where it cannot be read
    from here."""
    cache_path: str | None
    """Its models directory (Ollama's OLLAMA_MODELS), where it is on this host."""
    note: str = optional()
    """Why a figure is null, or where it comes from."""


class DiskSpace(_Answer):
    nodes: list[NodeSpace]
