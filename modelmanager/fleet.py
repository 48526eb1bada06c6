"""The fleet: every backend the manager drives, built from the settings and from nodes
registered through the API, added and removed while the service runs.

It builds each :class:`~modelmanager.backend.Backend` with its memory source (see
:mod:`modelmanager.nodes`), registers new ones after waiting for their health, persists
registrations (they survive a restart), drains and removes them, and describes them for
``GET /api/v1/nodes`` from what the scheduler publishes. The scheduler owns the backends'
runtime state; the fleet only hands them over (events) and takes them back.

Thread safety: :meth:`register` and :meth:`unregister` run on HTTP threads; one lock
guards the table of specs.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from config import Config

from .backend import Backend
from .contract.nodes import parse_registration
from .errors import Conflict, GatewayTimeout, InvalidRequest, NotFound, OllamaError
from .events import NodeAdded, NodeDraining
from .features import Features
from .gpu_api import RemoteGpuSource
from .logger import get_logger
from .models import MIB, ResourceSnapshot
from .nodes import (
    NodeSpec,
    configured_nodes,
    default_gpu_url,
    gpu_owners,
    hardware_summary,
    is_local,
    same_server,
)
from .ollama_client import OllamaClient
from .resource_monitor import GpuSource, GpuUnavailable, NvmlGpuSource, ResourceMonitor
from .store import Store

log = get_logger("SYSTEM")

HEALTH_POLL = 0.5  # seconds between health checks of a node being registered
#: The header every answer of a Model Manager carries (its instance id): a node whose
#: answers carry it is a Model Manager, not an Ollama server, and is refused.
INSTANCE_HEADER = "X-Model-Manager"


@dataclass(frozen=True)
class _Read:
    """A node's first read, shaped as the scheduler publishes a backend's state."""

    resources: ResourceSnapshot
    draining: bool = False


class Fleet:
    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        gpu: NvmlGpuSource | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.gpu = gpu
        self.clock = clock
        self._lock = threading.Lock()
        self._specs: dict[str, NodeSpec] = {}
        self._live: dict[str, Backend] = {}
        self._post: Callable[[Any], None] = lambda event: None
        # with a shared queue: (instance name, node name, node URL, on this host) of the
        # nodes other live instances drive (Cluster.nodes_elsewhere)
        self.elsewhere: Callable[[], list[tuple[str, str, str, bool]]] = lambda: []
        self._snapshot: Callable[[], Any] = lambda: None
        # a node was registered: called before the scheduler is told, so that what the
        # hooks learn (the node's models) is known when it first plans with the node
        self.on_added: list[Callable[[Backend], None]] = []
        self.on_removing: list[Callable[[str], object]] = []  # a node is being unregistered
        self.instance_id = uuid.uuid4().hex[:16]  # sent in INSTANCE_HEADER

    # --------------------------------------------------------------------- building

    def build(self, client: OllamaClient | None = None) -> list[Backend]:
        """The configured backends, then the registered ones. ``client``, if given, is
        used for the first configured backend (tests pass a scripted one).

        Raises :class:`~modelmanager.errors.ConfigError` for settings that cannot work
        (several servers on this host and no way to tell their GPUs apart).
        """
        count = self._gpu_count()
        specs = configured_nodes(
            self.config.OLLAMA_BACKENDS,
            self.config.OLLAMA_BASE_URL,
            self.config.OLLAMA_BACKEND_GPUS,
            self.config.BACKEND_GPU_URLS,
            count,
        )
        for name, url, gpu_url, budget, gpus in self.store.load_nodes():
            if any(s.name == name for s in specs):
                log.warning("registered node %s is also configured; the setting wins", name)
                continue
            twin = next((s for s in specs if same_server(s.url) == same_server(url)), None)
            if twin is not None:
                log.warning(
                    "registered node %s (%s) is the Ollama of node %s (%s); it is left out",
                    name,
                    url,
                    twin.name,
                    twin.url,
                )
                continue
            indices = tuple(int(i) for i in gpus.split("+")) if gpus else None
            spec = self._stored_gpus(
                NodeSpec(name, url, indices, gpu_url, budget, registered=True), specs, count
            )
            if spec is not None:
                specs.append(spec)
        backends = []
        for i, spec in enumerate(specs):
            backends.append(self.make(spec, client if i == 0 else None))
        with self._lock:
            self._specs = {s.name: s for s in specs}
            self._live = {b.name: b for b in backends}
        return backends

    @staticmethod
    def _stored_gpus(spec: NodeSpec, specs: list[NodeSpec], count: int | None) -> NodeSpec | None:
        """``spec`` of a stored registration with the GPUs it may use among ``specs`` (the
        nodes before it): None, with a warning, when it reads NVML on this host and a GPU
        it was given is gone or another node's (the settings changed), or when it has none
        stored (registered before ``gpus`` existed) and no GPU is free."""
        if not count or spec.vram_budget_mb or spec.gpu_url or not is_local(spec.url):
            return spec  # no NVML now (kept as stored), or its memory is not this host's
        owners = gpu_owners(specs, count)
        if spec.gpus is None:
            free = tuple(i for i in range(count) if i not in owners)
            if not free:
                log.warning(
                    "registered node %s has no GPU of this host left (others use them all); "
                    "it is left out: register it again with gpus or vram_budget_mb",
                    spec.name,
                )
                return None
            return NodeSpec(spec.name, spec.url, free, None, None, registered=True)
        taken = [i for i in spec.gpus if i >= count or i in owners]
        if taken:
            i = taken[0]
            log.warning(
                "registered node %s uses GPU %d, which %s; it is left out: remove it and "
                "register it again with other gpus",
                spec.name,
                i,
                f"node {owners[i]} uses now" if i in owners else f"NVML lacks ({count} GPU(s))",
            )
            return None
        return spec

    def _gpu_count(self) -> int | None:
        if self.gpu is None:
            return None
        try:
            return len(self.gpu.devices())
        except GpuUnavailable:
            return None

    def make(self, spec: NodeSpec, client: OllamaClient | None = None) -> Backend:
        """A backend for ``spec`` with its Ollama client and memory source."""
        cfg = self.config
        client = client or OllamaClient(
            spec.url, timeout=cfg.REQUEST_TIMEOUT, load_timeout=cfg.LOAD_TIMEOUT
        )
        budget = spec.vram_budget_mb * MIB if spec.vram_budget_mb else cfg.budget_bytes
        source: GpuSource | None
        remote = False
        if spec.vram_budget_mb:
            source = None  # a budget was given: plan with it
        elif spec.gpu_url:
            source, remote = RemoteGpuSource(spec.gpu_url, cfg.API_KEY), True
        elif is_local(spec.url):
            source = self.gpu
        else:
            source = None
        features = Features(client, spec.name)
        monitor = ResourceMonitor(
            client.ps,
            gpu=source,
            budget_bytes=budget,
            clock=self.clock,
            indices=spec.gpus,
            node=spec.name,
            remote=remote,
            alive=client.version,
            features=features,
        )
        return Backend(
            spec.name,
            spec.url,
            client,
            monitor,
            max_loaded=cfg.OLLAMA_MAX_LOADED_MODELS,
            num_parallel=cfg.OLLAMA_NUM_PARALLEL,
            features=features,
        )

    def attach(self, post: Callable[[Any], None], snapshot: Callable[[], Any]) -> None:
        """Hand new backends to the scheduler through ``post``; describe nodes from its
        ``snapshot``."""
        self._post = post
        self._snapshot = snapshot

    # ------------------------------------------------------------------ registration

    def register(self, body: Any) -> dict[str, Any]:
        """``POST /api/v1/nodes``: check the body, wait until the node's Ollama answers
        (up to ``startup_timeout_s``, default NODE_STARTUP_TIMEOUT), persist it and hand it
        to the scheduler. Returns the node as :meth:`describe` shows it.

        Raises :class:`InvalidRequest` (bad name, URL or budget), :class:`Conflict` (the
        name exists), :class:`GatewayTimeout` (it did not become healthy in time).
        """
        spec, timeout = self._spec_of(body)
        self._refuse_taken_elsewhere(spec)
        count = self._gpu_count()
        with self._lock:
            if spec.name in self._specs:
                raise _exists(spec.name)
            key = same_server(spec.url)
            twin = next((s for s in self._specs.values() if same_server(s.url) == key), None)
            if twin is not None:
                raise Conflict(
                    f"node {twin.name!r} already drives the Ollama at {twin.url} ({spec.url} "
                    f"is the same server); one Ollama is one node",
                    details={"node": twin.name, "url": twin.url, "field": "url"},
                )
            spec = self._with_gpus(spec, count)
            self._specs[spec.name] = spec  # reserved while it starts, its GPUs with it
        try:
            self._refuse_model_manager(spec, timeout)
            backend = self.make(spec)
            self._wait_healthy(backend, timeout)
            gpus = "+".join(str(i) for i in spec.gpus) if spec.gpus else None
            saved = self.store.save_node(
                spec.name,
                spec.url,
                gpu_url=spec.gpu_url,
                vram_budget_mb=spec.vram_budget_mb,
                gpus=gpus,
                now=self.clock(),
            )
            if not saved:  # (with a shared queue: another instance registered it meanwhile)
                raise _exists(spec.name)
        except BaseException:
            with self._lock:
                self._specs.pop(spec.name, None)
            raise
        with self._lock:
            self._live[spec.name] = backend
        for hook in self.on_added:
            try:
                hook(backend)
            except Exception:
                log.exception("a listener of node %s's registration failed", spec.name)
        self._post(NodeAdded(backend))
        log.info("node %s registered at %s", spec.name, spec.url)
        # its Ollama answered: describe it as read now (healthy, its memory), not "starting"
        return self._node_json(spec, _Read(backend.snapshot()))

    def _refuse_taken_elsewhere(self, spec: NodeSpec) -> None:
        """:class:`Conflict` when another instance sharing the queue has a node of this
        name (names are unique over the instances: downloads are kept by node name) or
        drives this Ollama (a loopback URL names the same server only for an instance
        on this host)."""
        key = same_server(spec.url)
        for instance, name, url, same_host in self.elsewhere():
            if name == spec.name:
                raise Conflict(
                    f"instance {instance} has a node named {name!r}; node names are unique "
                    "over the instances sharing the database",
                    details={"node": name, "instance": instance},
                )
            if same_server(url) == key and (same_host or key[1] != "loopback"):
                raise Conflict(
                    f"instance {instance} already drives the Ollama at {url} as node "
                    f"{name!r} ({spec.url} is the same server); one Ollama is one node",
                    details={"node": name, "instance": instance, "url": url, "field": "url"},
                )

    def _spec_of(self, body: Any) -> tuple[NodeSpec, float]:
        reg = parse_registration(body)
        timeout = reg.startup_timeout_s or self.config.NODE_STARTUP_TIMEOUT
        url, gpu_url, budget = reg.url.rstrip("/"), reg.gpu_url, reg.vram_budget_mb
        gpus = tuple(reg.gpus) if reg.gpus is not None else None
        if gpus is not None:
            if not is_local(url):
                raise InvalidRequest(
                    f"gpus names GPUs of this host, but {url} is on another host: its memory "
                    f"comes from gpu_url (a Model Manager there) or vram_budget_mb",
                    field="gpus",
                )
            other = "vram_budget_mb" if budget is not None else "gpu_url" if gpu_url else None
            if other is not None:
                raise InvalidRequest(
                    f"gpus cannot go with {other}: give one way to read the node's memory "
                    f"(gpus: this host's GPUs through NVML)",
                    field="gpus",
                )
            twice = next((i for i in gpus if gpus.count(i) > 1), None)
            if twice is not None:
                raise InvalidRequest(f"gpus lists GPU {twice} twice", field="gpus")
        if gpu_url is None and budget is None and not is_local(url):
            gpu_url = default_gpu_url(url)
        spec = NodeSpec(reg.name, url, gpus, gpu_url, budget, registered=True)
        return spec, float(timeout)

    def _with_gpus(self, spec: NodeSpec, count: int | None) -> NodeSpec:
        """``spec`` with the GPUs of this host it uses, checked against the nodes there
        (call with the lock held): those its ``gpus`` names, each one NVML shows and no
        other node uses, else every GPU no other node uses. A node whose memory is not
        read through this host's NVML is returned as it is.

        Raises :class:`InvalidRequest` (field ``gpus``) for a GPU NVML lacks or another
        node uses, or when no GPU is left for it.
        """
        if spec.vram_budget_mb or spec.gpu_url or not is_local(spec.url):
            return spec
        if not count:
            if spec.gpus is not None:
                raise InvalidRequest(
                    f"gpus names GPU {spec.gpus[0]}, but NVML shows no GPU on this host",
                    field="gpus",
                    details={"node": spec.name},
                )
            return spec  # no NVML: planned with VRAM_BUDGET_MB, as a configured node
        owners = gpu_owners(list(self._specs.values()), count)
        free = tuple(i for i in range(count) if i not in owners)
        free_text = "+".join(str(i) for i in free) if free else "none"
        if spec.gpus is None:
            if not free:
                uses = ", ".join(f"{n} uses GPU {i}" for i, n in sorted(owners.items()))
                raise InvalidRequest(
                    f"no GPU of this host is left for node {spec.name} ({uses}): give it "
                    f"vram_budget_mb to plan with a budget instead, or free a GPU (remove "
                    f"its node) and name it in gpus",
                    field="gpus",
                    details={"node": spec.name, "gpus_free": []},
                )
            return NodeSpec(spec.name, spec.url, free, None, None, registered=True)
        for i in spec.gpus:
            if i >= count:
                raise InvalidRequest(
                    f"gpus names GPU {i}, but NVML shows {count} GPU(s) on this host "
                    f"(indices 0 to {count - 1}; free: {free_text})",
                    field="gpus",
                    details={"node": spec.name, "gpus_free": list(free)},
                )
            if i in owners:
                raise InvalidRequest(
                    f"gpus names GPU {i}, which node {owners[i]} uses (free GPUs of this "
                    f"host: {free_text}); one GPU belongs to one node",
                    field="gpus",
                    details={"node": spec.name, "owner": owners[i], "gpus_free": list(free)},
                )
        return spec

    def _refuse_model_manager(self, spec: NodeSpec, timeout: float) -> None:
        """Raise :class:`InvalidRequest` if ``spec.url`` answers as a Model Manager (this
        one or another): its Ollama-compatible API would relay the manager's own requests
        back to itself. A node that does not answer yet is left to the health wait."""
        wait = (min(2.0, timeout), min(5.0, timeout))
        with requests.Session() as session:
            session.trust_env = False  # as the Ollama client: no proxy from the environment
            try:
                with session.get(
                    f"{spec.url}/api/version", timeout=wait, allow_redirects=False
                ) as resp:
                    instance = resp.headers.get(INSTANCE_HEADER)
            except requests.RequestException:
                return
        if instance is None:
            return
        which = "this Model Manager" if instance == self.instance_id else "a Model Manager"
        raise InvalidRequest(
            f"{spec.url} is {which}, not an Ollama server: register the Ollama server it "
            f"drives (its OLLAMA_BASE_URL or OLLAMA_BACKENDS, e.g. http://host:11434) instead",
            field="url",
            details={"node": spec.name, "url": spec.url, "model_manager": instance},
        )

    def _wait_healthy(self, backend: Backend, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            try:
                backend.client.version()
                return
            except OllamaError as exc:
                last = exc.message
            if time.monotonic() + HEALTH_POLL > deadline:
                break
            time.sleep(HEALTH_POLL)  # polling the new node, not waiting in a test
        backend.close()
        raise GatewayTimeout(
            f"node {backend.name} did not answer at {backend.url} within {timeout:g} s "
            f"({last}); it was not added",
            details={"node": backend.name, "url": backend.url},
        )

    def unregister(self, name: str) -> dict[str, Any]:
        """``DELETE /api/v1/nodes/<name>``: stop feeding it; it is removed once its running
        jobs end and its models are unloaded. Raises :class:`NotFound`, or
        :class:`Conflict` for a node the settings define (remove it there)."""
        with self._lock:
            spec = self._specs.get(name)
        if spec is None:
            raise NotFound(f"no node named {name!r}", details={"node": name})
        if not spec.registered:
            raise Conflict(
                f"node {name!r} comes from OLLAMA_BACKENDS; remove it there and restart",
                details={"node": name},
            )
        self.store.delete_node(name)
        for hook in self.on_removing:
            try:
                hook(name)
            except Exception:
                log.exception("a listener of node %s's removal failed", name)
        self._post(NodeDraining(name))
        return {"name": name, "status": "draining"}

    def removed(self, backend: Backend) -> None:
        """The scheduler finished draining ``backend``: forget and close it."""
        with self._lock:
            self._specs.pop(backend.name, None)
            self._live.pop(backend.name, None)
        backend.close()

    # ---------------------------------------------------------------------- reading

    def describe(self) -> dict[str, Any]:
        """``GET /api/v1/nodes``: every node with its health, devices, loaded models and
        hardware summary, from the scheduler's published state."""
        with self._lock:
            specs = list(self._specs.values())
        snap = self._snapshot()
        statuses = {b.name: b for b in snap.backends} if snap is not None else {}
        return {"nodes": [self._node_json(s, statuses.get(s.name)) for s in specs]}

    def _node_json(self, spec: NodeSpec, status: Any) -> dict[str, Any]:
        res = status.resources if status is not None else None
        devices = []
        for d in res.devices if res is not None else ():
            ok = d.error is None
            devices.append(
                {
                    "name": spec.device(d.index),
                    "gpu": d.name,
                    "total_mb": d.total_bytes // MIB if ok else None,
                    "free_mb": d.free_bytes // MIB if ok else None,
                    "used_mb": d.used_bytes // MIB if ok else None,
                    "available": ok,
                    "error": d.error,
                }
            )
        hardware = hardware_summary(
            [
                {k: d[k] for k in ("total_mb", "available", "error")} | {"name": d["gpu"]}
                for d in devices
            ]
        )
        draining = status is not None and getattr(status, "draining", False)
        healthy = res is not None and res.backend_up
        state = "draining" if draining else ("ready" if healthy else "unhealthy")
        if res is None and not draining:
            state = "starting"
        return {
            "name": spec.name,
            "url": spec.url,
            "healthy": healthy,
            "state": state,
            "memory_source": res.source if res is not None else None,
            "registered": spec.registered,
            "devices": devices,
            "loaded_models": sorted(m.name for m in res.loaded) if res is not None else [],
            "hardware": hardware,
            "vram": (
                {"total_mb": res.total_bytes // MIB, "free_mb": res.free_bytes // MIB}
                if res is not None
                else None
            ),
        }

    def show(self, model: str) -> dict[str, Any]:
        """``/api/show`` from a backend (the first that answers)."""
        last: OllamaError | None = None
        for backend in self._backends():
            try:
                return backend.client.show(model)
            except OllamaError as exc:
                last = exc
        raise last or OllamaError("no backend to ask")

    def _backends(self) -> list[Backend]:
        with self._lock:
            return list(self._live.values())

    def backends(self) -> dict[str, Backend]:
        """Every backend in use now, by name (registered ones included, in order)."""
        with self._lock:
            return dict(self._live)

    def close(self) -> None:
        """Close every backend (at shutdown)."""
        for backend in self._backends():
            backend.close()


def _exists(name: str) -> Conflict:
    return Conflict(f"a node named {name!r} exists already", details={"node": name})
