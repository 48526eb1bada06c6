"""The fleet's routes as pydantic models: the body of ``POST /api/v1/nodes`` and what
``/api/v1/nodes`` and ``/api/v1/gpu/*`` answer. Memory is in MB (MiB, as NVML counts).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema

from ..nodes import NAME_RE, check_url
from .fields import fail
from .requests import invalid_request

MAX_STARTUP_TIMEOUT = 3600.0  # seconds
MAX_URL = 2048
MAX_GPUS = 16  # the most GPU indices one registration may list (NVML's device limit)
_PORT = "(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
URL_RE = re.compile(
    rf"^https?://([A-Za-z0-9_~-][A-Za-z0-9._~-]*|\[[0-9A-Fa-f:.]+\])(:{_PORT})?(/[A-Za-z0-9._~/-]*)?$"
)


def _name(value: str) -> str:
    if not NAME_RE.match(value):
        fail("must be 1 to 64 of a-z 0-9 _ . -")
    return value


def _url(value: str) -> str:
    if len(value) > MAX_URL:
        fail(f"must be at most {MAX_URL} characters")
    if not URL_RE.match(value):
        fail("must be http(s)://host[:port][/path]")
    try:
        return check_url(value, "it")
    except ValueError:
        fail("must be http(s)://host[:port][/path]")


NodeName = Annotated[
    str,
    AfterValidator(_name),
    WithJsonSchema({"type": "string", "pattern": NAME_RE.pattern}),
]
Url = Annotated[
    str,
    AfterValidator(_url),
    WithJsonSchema({"type": "string", "pattern": URL_RE.pattern, "maxLength": MAX_URL}),
]


class NodeRegistration(BaseModel):
    """The body of ``POST /api/v1/nodes``: an Ollama server to add while the service runs."""

    model_config = ConfigDict(
        strict=True, extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True
    )

    name: NodeName
    """The node's name: 1 to 64 of a-z 0-9 _ . - (used in device names `name:gpu0`)."""
    url: Url
    """Its Ollama's base URL, http(s)://host[:port]."""
    gpu_url: Url | None = None
    """A Model Manager on the node's host whose `/api/v1/gpu/devices` reports its GPUs.
    Default: the same host at port 5001, for a remote node without `vram_budget_mb`."""
    vram_budget_mb: Annotated[int, Field(ge=1)] | None = None
    """Plan with this much memory (MB) instead of reading the node's GPUs."""
    gpus: (
        Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=MAX_GPUS)]
        | None
    ) = None
    """For a node on this host: the NVML indices of this host's GPUs it uses, as
    OLLAMA_BACKEND_GPUS takes them (e.g. [2] or [0, 1]); none may belong to another node.
    Default: the GPUs of this host no other node uses. Refused for a node on another host
    and with `gpu_url` or `vram_budget_mb`, which say where its memory figures come from."""
    startup_timeout_s: Annotated[float, Field(gt=0, le=MAX_STARTUP_TIMEOUT)] | None = None
    """How long to wait for the node's Ollama to answer (seconds; default
    NODE_STARTUP_TIMEOUT); past it the node is not added (504)."""


def parse_registration(body: Any) -> NodeRegistration:
    """Check a registration body. Raises :class:`~modelmanager.errors.InvalidRequest`
    (400) naming the first bad field."""
    try:
        return NodeRegistration.model_validate(body)
    except ValidationError as exc:
        raise invalid_request(exc) from None


class _Answer(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)


class NodeDevice(_Answer):
    name: str
    """`<node>:gpu<index>`, the name jobs and stats use."""
    gpu: str
    """The GPU's product name."""
    total_mb: int | None
    free_mb: int | None
    used_mb: int | None
    available: bool
    error: str | None


class HardwareGroup(_Answer):
    type: str
    """`<GPU name> | <GB>GB`."""
    count: int


class NodeMemory(_Answer):
    total_mb: int
    free_mb: int


class Node(_Answer):
    name: str
    url: str
    healthy: bool
    state: Literal["starting", "ready", "unhealthy", "draining"]
    memory_source: str | None
    """`nvml`, `gpu_endpoint` (a Model Manager on its host) or `budget`; null before
    the first reading."""
    registered: bool
    """True for a node added through the API (persisted); false for one from settings."""
    devices: list[NodeDevice]
    loaded_models: list[str]
    hardware: list[HardwareGroup]
    vram: NodeMemory | None


class Nodes(_Answer):
    nodes: list[Node]


class NodeDraining(_Answer):
    name: str
    status: Literal["draining"]


class GpuDevice(_Answer):
    index: int
    name: str
    uuid: str
    total_mb: int | None
    free_mb: int | None
    used_mb: int | None
    utilization_pct: int | None
    temperature_c: int | None
    available: bool
    error: str | None


class GpuDevices(_Answer):
    devices: list[GpuDevice]


class GpuDriver(_Answer):
    driver_version: str | None
    cuda_driver_version: int | None
    """CUDA driver version as NVML gives it: 13000 means 13.0."""
    nvml_version: str | None
