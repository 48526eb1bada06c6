"""Models on the nodes' disks: status, download, delete, list and space.

What ``/api/v1/models/*`` does, over :mod:`modelmanager.downloads` and each node's
Ollama: a model is ``DOWNLOADED`` when the node's ``/api/tags`` lists it (asked on each
request, so a model pulled or removed behind the manager's back shows as it is),
``DOWNLOADING`` while a download runs, ``PARTIAL`` when the last one stopped part way,
else ``NOT_FOUND``. Deleting goes through Ollama's ``DELETE /api/delete``, which removes
the manifest and the blobs no other model uses, and does not unload a running model
(OLLAMA_FACTS §1.5).

``node`` names the Ollama server; with one server it may be left out, with several it is
needed for status, download and delete, while list and space cover every node unless one
is named. Errors are :class:`~modelmanager.errors.ApiError` s: 400 (bad field), 404
(unknown node, no such model), 409 (already downloading; jobs wait or run for a model
being deleted), 429 (MAX_DOWNLOADS), 501 (the node's Ollama lacks the endpoint), 503
(the node's Ollama cannot be reached, with ``Retry-After``).

Thread-safe as :class:`~modelmanager.downloads.Downloads` is; the reads are HTTP
requests to Ollama, made on the calling (HTTP) thread.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from config import Config

from .backend import Backend
from .contract.disk import parse_delete_request, parse_model_request, parse_node_query
from .downloads import DiskStatus, Download, Downloads
from .errors import (
    Conflict,
    EndpointNotAvailable,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    NotImplementedOnNode,
    OllamaError,
    ServiceUnavailable,
)
from .features import Feature
from .logger import get_logger
from .model_registry import ModelRegistry
from .names import model_key, parse
from .nodes import is_local
from .store import Store

log = get_logger("DISK")

GB = 1_000_000_000


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _gb(n: int) -> float:
    return round(n / GB, 3)


def _same_digest(a: str, b: str) -> bool:
    """Digests as Ollama writes them, with or without ``sha256:``; a shorter one (12
    digits at least) matches the start of a longer one."""
    a, b = a.removeprefix("sha256:").lower(), b.removeprefix("sha256:").lower()
    n = min(len(a), len(b))
    return n >= 12 and a[:n] == b[:n]


def _repository(name: str) -> str:
    """``host/namespace/model`` of a name, lower case: every tag of it shares this."""
    host, namespace, model, _ = parse(name)
    return f"{host}/{namespace}/{model}".lower()


def _has_tag(name: str) -> bool:
    last = name.rsplit("/", 1)[-1]
    return ":" in last


class ModelDisk:
    """The models on every node's disk (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        registry: ModelRegistry,
        downloads: Downloads,
        backends: Callable[[], Mapping[str, Backend]],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.registry = registry
        self.downloads = downloads
        self.backends = backends
        self.clock = clock

    # ---------------------------------------------------------------------- helpers

    def _targets(self, node: str | None, *, every: bool) -> list[Backend]:
        backends = self.backends()
        if node is not None:
            if node not in backends:
                raise NotFound(
                    f"no node named {node!r} (nodes: {', '.join(backends) or 'none'})",
                    details={"node": node},
                )
            return [backends[node]]
        if every or len(backends) == 1:
            return list(backends.values())
        raise InvalidRequest(
            f"'node' is required: this service drives {len(backends)} nodes "
            f"({', '.join(backends)})",
            field="node",
        )

    def _tags(self, backend: Backend) -> list[dict[str, Any]]:
        """The node's ``/api/tags``, or a 503 saying why it cannot be read."""
        try:
            return backend.client.tags()
        except OllamaError as exc:
            raise ServiceUnavailable(
                f"node {backend.name}'s Ollama cannot be read: {exc.message}",
                details={"node": backend.name},
                headers={"Retry-After": "5"},
            ) from None

    @staticmethod
    def _listed(tags: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
        for tag in tags:
            name = tag.get("name") or tag.get("model")
            if isinstance(name, str):
                try:
                    if model_key(name) == key:
                        return tag
                except ValueError:
                    continue
        return None

    def _progress(self, d: Download) -> dict[str, Any]:
        progress = d.progress(self.clock())
        progress["start_time"] = iso(progress["start_time"])
        return progress

    # ----------------------------------------------------------------------- status

    def status(self, body: Any) -> dict[str, Any]:
        """``POST /api/v1/models/status``: where the model stands on the node."""
        req = parse_model_request(body)
        backend = self._targets(req.node, every=False)[0]
        return self._status(req.model, backend)

    def _status(self, name: str, backend: Backend) -> dict[str, Any]:
        key = model_key(name)
        out: dict[str, Any] = {"model": name, "node": backend.name}
        running = self.downloads.running(backend.name, key)
        if running is not None:
            out["status"] = DiskStatus.DOWNLOADING.value
            out["progress"] = self._progress(running)
            out["task_id"] = running.task_id
            return out
        tag = self._listed(self._tags(backend), key)
        if tag is not None:
            out["status"] = DiskStatus.DOWNLOADED.value
            if isinstance(tag.get("digest"), str):
                out["digest"] = tag["digest"]
            if isinstance(tag.get("size"), int):
                out["size_bytes"] = tag["size"]
            return out
        ended = self.downloads.outcome(backend.name, key)
        out["status"] = (ended.status if ended else DiskStatus.NOT_FOUND).value
        if ended is not None:
            out["task_id"] = ended.task_id
            if ended.error:
                out["error"] = ended.error
        return out

    # --------------------------------------------------------------------- download

    def download(self, body: Any) -> dict[str, Any]:
        """``POST /api/v1/models/download``: start the pull; answered at once (202).

        Raises 409 (already downloading there), 429 (MAX_DOWNLOADS), 501 (the node's
        Ollama has no ``/api/pull``), 503 (the node's Ollama does not answer)."""
        req = parse_model_request(body)
        backend = self._targets(req.node, every=False)[0]
        try:
            backend.client.version()  # a node that does not answer: 503 now, not PARTIAL later
        except OllamaError as exc:
            raise ServiceUnavailable(
                f"node {backend.name}'s Ollama does not answer: {exc.message}",
                details={"node": backend.name},
                headers={"Retry-After": "5"},
            ) from None
        if not backend.features.supports(Feature.PULL):
            raise NotImplementedOnNode(
                f"node {backend.name}'s Ollama has no /api/pull (an older version); "
                "download the model there with `ollama pull`",
                details={"node": backend.name, "endpoint": "/api/pull"},
            )
        started = self.downloads.start(req.model, backend.name)
        return {
            "task_id": started.task_id,
            "status": DiskStatus.DOWNLOADING.value,
            "model": req.model,
            "node": backend.name,
        }

    # ----------------------------------------------------------------------- delete

    def delete(self, body: Any) -> dict[str, Any]:
        """``DELETE /api/v1/models``: cancel the model's download, or delete its tag(s).

        A name with a tag is that tag; without one, every tag of the model; ``digest``
        keeps only the tags with that digest. Raises 404 when nothing matches, 409 while
        jobs for it wait or run (unless ``force``), 501 (no ``/api/delete``)."""
        req = parse_delete_request(body)
        backend = self._targets(req.node, every=False)[0]
        node = backend.name
        whole = not _has_tag(req.model)
        repository = _repository(req.model)
        key = model_key(req.model)

        running = [
            d
            for d in self.downloads.on(node)
            if (d.model == key or (whole and _repository(d.model) == repository))
        ]
        if running and req.digest is None:
            self._check_jobs([d.model for d in running], req.model, req.force)
            cancelled = [c for d in running if (c := self.downloads.cancel(node, d.model))]
            if cancelled:
                return {
                    "model": req.model,
                    "node": node,
                    "status": "cancelled",
                    "task_id": cancelled[0].task_id,
                }

        tags = self._tags(backend)
        targets = []
        for tag in tags:
            name = tag.get("name") or tag.get("model")
            if not isinstance(name, str):
                continue
            try:
                matches = _repository(name) == repository if whole else model_key(name) == key
            except ValueError:
                continue
            digest = tag.get("digest")
            if matches and req.digest is not None:
                matches = isinstance(digest, str) and _same_digest(digest, req.digest)
            if matches:
                targets.append(name)
        if not targets:
            self._forget_partial(node, key, repository, whole)
            what = f"{req.model} with digest {req.digest}" if req.digest else req.model
            raise NotFound(
                f"{what} is not on node {node}", details={"model": req.model, "node": node}
            )
        self._check_jobs([model_key(t) for t in targets], req.model, req.force)
        if not backend.features.supports(Feature.DELETE):
            raise NotImplementedOnNode(
                f"node {node}'s Ollama has no /api/delete (an older version); remove the "
                "model there with `ollama rm`",
                details={"node": node, "endpoint": "/api/delete"},
            )
        deleted: list[str] = []
        for name in targets:
            try:
                backend.client.delete(name)
            except ModelNotFound:
                continue  # gone meanwhile
            except EndpointNotAvailable:
                backend.features.lacks(Feature.DELETE)
                raise NotImplementedOnNode(
                    f"node {node}'s Ollama has no /api/delete (an older version)",
                    details={"node": node, "endpoint": "/api/delete"},
                ) from None
            except OllamaError as exc:
                raise ServiceUnavailable(
                    f"node {node}'s Ollama did not delete {name}: {exc.message}",
                    details={"node": node, "deleted": deleted},
                    headers={"Retry-After": "5"},
                ) from None
            deleted.append(name)
            self.downloads.forget(node, model_key(name))
            log.info("deleted %s from node %s", name, node)
        self.registry.refresh_tags(force=True)
        return {"model": req.model, "node": node, "status": "deleted", "deleted": deleted}

    def _check_jobs(self, models: list[str], name: str, force: bool) -> None:
        if force:
            return
        waiting = sum(self.store.unfinished_jobs(m) for m in dict.fromkeys(models))
        if waiting:
            raise Conflict(
                f"{waiting} job(s) for {name} are waiting or running; let them finish, "
                'cancel them, or send "force": true',
                details={"model": name, "jobs": waiting},
            )

    def _forget_partial(self, node: str, key: str, repository: str, whole: bool) -> None:
        for ended in self.downloads.outcomes(node):
            if ended.model == key or (whole and _repository(ended.model) == repository):
                self.downloads.forget(node, ended.model)

    # ------------------------------------------------------------------------- list

    def listing(self, query: Mapping[str, list[str]]) -> dict[str, Any]:
        """``GET /api/v1/models/list``: every model on each node (or ``?node=``), with
        downloads under way and stopped ones. A node that does not answer is listed in
        ``unreachable`` (or, asked for alone, a 503)."""
        q = parse_node_query(query)
        backends = self._targets(q.node, every=True)
        models: list[dict[str, Any]] = []
        unreachable = []
        for backend in backends:
            try:
                tags = self._tags(backend)
            except ServiceUnavailable as exc:
                if q.node is not None:
                    raise
                unreachable.append({"node": backend.name, "error": exc.message})
                tags = None
            listed: set[str] = set()
            for tag in tags or []:
                name = tag.get("name") or tag.get("model")
                if not isinstance(name, str):
                    continue
                size, digest = tag.get("size"), tag.get("digest")
                listed.add(model_key(name))
                models.append(
                    {
                        "model": name,
                        "node": backend.name,
                        "status": DiskStatus.DOWNLOADED.value,
                        "size_bytes": size if isinstance(size, int) else None,
                        "digest": digest if isinstance(digest, str) else None,
                    }
                )
            for d in self.downloads.on(backend.name):
                models.append(
                    {
                        "model": d.name,
                        "node": backend.name,
                        "status": DiskStatus.DOWNLOADING.value,
                        "size_bytes": None,
                        "digest": None,
                        "progress": self._progress(d),
                        "task_id": d.task_id,
                    }
                )
            for ended in self.downloads.outcomes(backend.name):
                if ended.status is DiskStatus.PARTIAL and ended.model not in listed:
                    entry = {
                        "model": ended.name,
                        "node": backend.name,
                        "status": ended.status.value,
                        "size_bytes": None,
                        "digest": None,
                        "task_id": ended.task_id,
                    }
                    if ended.error:
                        entry["error"] = ended.error
                    models.append(entry)
        out: dict[str, Any] = {"models": models}
        if unreachable:
            out["unreachable"] = unreachable
        return out

    # ------------------------------------------------------------------------ space

    def space(self, query: Mapping[str, list[str]]) -> dict[str, Any]:
        """``GET /api/v1/models/space``: per node, the size of its models, the free space
        of their disk and the models directory, where the node is on this host and its
        directory exists (OLLAMA_MODELS_DIR); otherwise the size Ollama lists and a
        ``note`` that says why the rest is null."""
        q = parse_node_query(query)
        return {"nodes": [self._space(b) for b in self._targets(q.node, every=True)]}

    def _space(self, backend: Backend) -> dict[str, Any]:
        node = backend.name
        out: dict[str, Any] = {
            "node": node,
            "cache_size_gb": None,
            "available_gb": None,
            "cache_path": None,
        }
        if is_local(backend.url):
            path = Path(self.config.models_dir(node)).expanduser()
            if path.is_dir():
                out["cache_size_gb"] = _gb(_files_size(path))
                out["available_gb"] = _gb(shutil.disk_usage(path).free)
                out["cache_path"] = str(path)
                return out
            where = (
                f"node {node} runs on this host, but its models directory {path} does not "
                "exist here; set OLLAMA_MODELS_DIR to its OLLAMA_MODELS"
            )
        else:
            where = (
                f"node {node} runs on another host ({backend.url}): its disk cannot be read "
                "from here"
            )
        try:
            tags = backend.client.tags()
        except OllamaError as exc:
            out["note"] = f"{where}, and its Ollama did not answer ({exc.message})"
            return out
        sizes = {}
        for tag in tags:
            size = tag.get("size")
            if isinstance(size, int):
                sizes[tag.get("digest") or tag.get("name")] = size
        out["cache_size_gb"] = _gb(sum(sizes.values()))
        out["note"] = f"{where}; cache_size_gb is what its Ollama lists (/api/tags)"
        return out


def _files_size(path: Path) -> int:
    """Bytes of every file under ``path`` (their sizes, as ``ls`` shows them)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue  # removed while walking
    return total
