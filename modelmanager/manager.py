"""Wires the components together and runs them: the composition root of the service.

The :class:`Manager` builds the store, the backends (each an Ollama client and its memory
source), the registry, the downloads and the models on disk, the warm pool, the
pending-job index, the residency and job-runner workers, the scheduler and the internal
API; ``start`` recovers jobs a crash left running, starts the scheduler thread, resumes
interrupted downloads and starts the warm pool (with PRELOAD_MODELS); ``stop`` drains and
closes everything.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from config import Config

from .api import Api
from .backend import Backend
from .cluster import Cluster, instance_name, single_instance
from .downloads import DiskStatus, Download, Downloads
from .errors import DataDirLocked
from .events import PullEnded
from .fleet import Fleet
from .job_runner import JobRunner
from .logger import get_logger
from .model_disk import ModelDisk
from .model_registry import ModelRegistry
from .ollama_client import OllamaClient
from .pending import PendingIndex
from .residency import Residency
from .resource_monitor import NvmlGpuSource
from .scheduler import Scheduler, pinned_runners
from .store import Store
from .store_pg import PgStore
from .streams import StreamHub
from .warm_pool import WarmPool

log = get_logger("SCHEDULER")
syslog = get_logger("SYSTEM")


class Manager:
    def __init__(
        self,
        config: Config,
        *,
        client: OllamaClient | None = None,
        gpu: NvmlGpuSource | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        data = Path(config.DATA_DIR)
        data.mkdir(parents=True, exist_ok=True)
        self._lockfile = _lock_data_dir(data)
        self.store = open_store(config, data)
        self.gpu = gpu
        self.fleet = Fleet(config, self.store, gpu=gpu, clock=clock)
        try:
            backends = self.fleet.build(client)
        except BaseException:
            self.store.close()
            self._lockfile.close()
            raise
        self.backend = backends[0]  # the first configured one (compatibility)
        self.client = self.backend.client
        self.registry = ModelRegistry(
            self.store,
            multiplier=config.VRAM_ESTIMATION_MULTIPLIER,
            tags=None,
            show=self.fleet.show,
            clock=clock,
        )
        for backend in backends:
            self.registry.add_source(backend.name, backend.client.tags)
        self.downloads = Downloads(
            self.store,
            self.registry,
            self.fleet.backends,
            max_per_node=config.MAX_DOWNLOADS,
            max_attempts=config.MAX_ATTEMPTS,
            retry_base=config.RETRY_BASE_SECONDS,
            retry_max=config.RETRY_MAX_SECONDS,
            clock=clock,
        )
        self.downloads.on_end(self._download_ended)
        self.disk = ModelDisk(
            config, self.store, self.registry, self.downloads, self.fleet.backends, clock=clock
        )
        self.warm_pool = WarmPool(
            config.preload_models,
            self.downloads,
            self.fleet.backends,
            interval=config.PRELOAD_INTERVAL,
        )
        self.fleet.on_added.append(self._node_added)
        self.fleet.on_removing.append(self.downloads.cancel_node)
        self.pending = PendingIndex(config.AGING_SECONDS)
        # Ollama keeps our models longer than we do, so the manager always unloads first,
        # while models of a manager that died still expire eventually.
        ollama_keep_alive = config.MODEL_KEEP_ALIVE * 2 + 60
        self.residency = Residency(self.registry, self._post, keep_alive=ollama_keep_alive)
        self.streams = StreamHub()  # answers in progress, for front doors that stream
        self.jobs = JobRunner(
            self.store,
            self.registry,
            config,
            self._post,
            keep_alive=ollama_keep_alive,
            clock=clock,
            streams=self.streams,
            pinned=frozenset(pinned_runners(config.pinned_models)),
        )
        self.scheduler = Scheduler(
            config,
            store=self.store,
            pending=self.pending,
            registry=self.registry,
            backends=backends,
            residency=self.residency,
            jobs=self.jobs,
            clock=clock,
            downloads=self.downloads,
        )
        self.scheduler.hooks.append(self.housekeeping)
        self.scheduler.on_removed.append(self.fleet.removed)
        self.fleet.attach(self._post, self.scheduler.snapshot)
        self.api = Api(
            config,
            self.store,
            self.pending,
            self.registry,
            self.scheduler,
            self.jobs,
            clock=clock,
            fleet=self.fleet,
            gpu=gpu,
            disk=self.disk,
        )
        self.cluster: Cluster | None = None
        self._http_port: int | None = None
        if isinstance(self.store, PgStore):
            self.cluster = cluster = Cluster(
                config,
                self.store,
                self.pending,
                self.scheduler,
                self.jobs,
                self.registry,
                self._instance_nodes,
                clock=clock,
            )
            self.api.instances = cluster.describe
            self.scheduler.may_load = cluster.may_load
            self.scheduler.served_elsewhere = cluster.served_elsewhere
            self.fleet.elsewhere = cluster.nodes_elsewhere
            self.jobs.claims_hold = cluster.claims_hold
            # the other instances learn of a new node at once, not at the next heartbeat
            self.fleet.on_added.append(lambda backend: cluster.publish())
            self.api.unfinished_elsewhere = lambda: cluster.elsewhere
        else:
            self.api.instances = lambda: single_instance(
                config, self._instance_nodes(), self.api.started_at, self._http_port
            )
        self._stopped = False

    def _instance_nodes(self) -> list[dict[str, Any]]:
        keep = ("name", "url", "healthy", "loaded_models", "vram")
        return [{k: n.get(k) for k in keep} for n in self.fleet.describe()["nodes"]]

    def _post(self, event: object) -> None:
        self.scheduler.post(event)  # type: ignore[arg-type]

    def _node_added(self, backend: Backend) -> None:
        """A node registered at run time: read its models now (the planner places a
        model only where Ollama lists it), let downloads start there, wake the warm pool."""
        self.registry.add_source(backend.name, backend.client.tags)
        self.registry.refresh_tags(force=True)
        self.downloads.node_added(backend.name)
        self.warm_pool.wake()

    def _download_ended(self, download: Download) -> None:
        error = download.error if download.status is not DiskStatus.DOWNLOADED else None
        self.scheduler.post(PullEnded(download.model, download.node, error))

    # ------------------------------------------------------------------ lifecycle

    def start(self, http_port: int | None = None) -> Manager:
        """``http_port``: the port the HTTP API is bound to (names this instance in
        ``GET /api/v1/instances`` when ``HTTP_PORT`` is 0)."""
        self._http_port = http_port
        if http_port is not None and self.cluster is not None:
            self.cluster.bound(http_port)
        now = self.clock()
        requeued, failed = self.store.recover(self.config.MAX_ATTEMPTS, now)
        if requeued or failed:
            syslog.info(
                "recovered after restart: %d job(s) back in the queue, %d failed "
                "after MAX_ATTEMPTS",
                requeued,
                failed,
            )
        n = self.pending.add_many(self.store.waiting_jobs(), now)
        nodes = ", ".join(f"{b.name} at {b.url}" for b in self.scheduler.backends.values())
        syslog.info(
            "Model Manager started: Ollama %s, %d job(s) waiting, store %s",
            nodes,
            n,
            self.store.path,
        )
        if self.cluster is not None:  # joins before planning: others see what it holds
            self.cluster.start()
        self.scheduler.start()
        self.downloads.resume()
        if self.warm_pool.models:
            self.warm_pool.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, let running jobs finish up to ``timeout``, close. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.api.accepting = False
        self.warm_pool.stop()
        self.scheduler.stop()
        self.downloads.close()  # those under way start again at the next start
        drained = self.jobs.close(timeout)
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster.leave()
        syslog.info(
            "stopped%s", "" if drained else f"; jobs still running after {timeout}s will rerun"
        )
        self.residency.close()
        self.fleet.close()
        self.store.close()
        self._lockfile.close()

    def wake(self) -> None:
        self.scheduler.wake()

    # ------------------------------------------------------------------ housekeeping

    def housekeeping(self, now: float) -> None:
        """Fail jobs past JOB_TIMEOUT (aborting their requests); delete results older
        than RESULT_TTL. Runs on the scheduler thread about once a second."""
        timeout = self.config.JOB_TIMEOUT
        if timeout:
            expired = self.store.expire(now - timeout, now, timeout)
            for job_id in expired:
                self.pending.remove(job_id)
            self.jobs.abort(expired)  # Ollama stops the expired ones that were running
            if expired:
                log.warning(
                    "%d job(s) failed: not finished within JOB_TIMEOUT (%gs)", len(expired), timeout
                )
        if self.config.RESULT_TTL:
            purged = self.store.purge(now - self.config.RESULT_TTL)
            if purged:
                syslog.info("purged %d finished job(s) older than RESULT_TTL", purged)


def open_store(config: Config, data: Path) -> Store:
    """The job store: PostgreSQL at DATABASE_URL (shared with other instances), else
    SQLite in ``data``. Raises :class:`~modelmanager.errors.DatabaseUnavailable`."""
    if config.DATABASE_URL:
        return PgStore(
            config.DATABASE_URL,
            lease_seconds=config.LEASE_SECONDS,
            owner=instance_name(config),
        )
    return Store(data / "jobs.db", synchronous=config.SQLITE_SYNCHRONOUS)


def _lock_data_dir(data: Path) -> IO[str]:
    """Hold an exclusive lock on ``data/manager.lock`` for the life of the process."""
    path = data / "manager.lock"
    handle = open(path, "a+")  # noqa: SIM115 - held open until stop()
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DataDirLocked(
            f"another Model Manager is already running with data directory {data} "
            f"(lock {path} is held); stop it or use another --data-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
