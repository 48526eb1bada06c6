"""What ``GET /api/v1/instances`` answers: the Model Managers sharing one queue.

Times are seconds since the epoch (the database's clock for heartbeats and leases).
With SQLite the list holds this instance alone, with null heartbeat and lease.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InstanceNode(_Answer):
    name: str
    url: str
    healthy: bool | None
    loaded_models: list[str] | None
    vram: dict[str, Any] | None


class Instance(_Answer):
    id: str
    name: str
    url: str
    self: bool
    started_at: float
    heartbeat_at: float | None
    lease_expires_at: float | None
    claimed_jobs: int | None
    runners: list[str]
    nodes: list[InstanceNode]


class Instances(_Answer):
    database: Literal["sqlite", "postgresql"]
    instances: list[Instance]
