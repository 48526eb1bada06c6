""":class:`FakeOllama`: the simulator as one object on a real HTTP port.

It composes the scheduler (:mod:`.scheduler`), the installed models (:mod:`.registry`),
the HTTP server (:mod:`.http`), the disconnect watcher (:mod:`.watch`) and the controls
(:mod:`.faults`), and owns their threads: ``start()`` starts them, ``stop()`` joins them.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from .disk import ModelsDir
from .faults import Fault, make_fault
from .gpu import parse_sizes
from .http import Server
from .nvml import MAX_DEVICES
from .pulls import Pulls
from .registry import InstalledModels
from .residency import POLL_S
from .runners import GONE
from .scheduler import Scheduler
from .watch import DisconnectWatcher, Watch

DEFAULT_REQUEST_LOG_SIZE = 2000


class FakeOllama(Pulls, Scheduler):
    """An in-process Ollama simulator on a real HTTP port.

    Thread-safe: one condition variable guards all scheduling state; the HTTP handlers,
    the scheduler thread, the housekeeper thread (idle expiry, VRAM release, re-listening
    after ``refuse_connections``) and the disconnect watcher all take it. ``stop()`` joins
    every thread it started.
    """

    def __init__(
        self,
        vram_mb: int | Sequence[int] = 24576,
        time_scale: float = 1.0,
        nvml_state: str | os.PathLike[str] | None = None,
        num_parallel: int = 1,
        max_loaded_models: int = 0,
        max_queue: int = 512,
        host: str = "127.0.0.1",
        port: int = 0,
        default_keep_alive: float = 300.0,
        *,
        gpus: int | None = None,
        nvml_index: int = 0,
        vram_release_lag: float = 0.5,
        scale_keep_alive: bool = True,
        gpu_name: str = "NVIDIA GeForce RTX 4090",
        request_log_size: int = DEFAULT_REQUEST_LOG_SIZE,
        models_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        """Configure; nothing starts until :meth:`start`.

        ``vram_mb``: the size of each GPU in MiB, or a list of sizes, one per GPU.
        ``gpus``: how many GPUs (None: one, or as many as ``vram_mb`` lists).
        ``time_scale``: factor on every simulated duration.
        ``nvml_state``: fake-NVML state file to keep up to date (None: none); other
        simulators may share it. ``nvml_index``: the NVML device number of this
        simulator's first GPU (an Ollama pinned with ``CUDA_VISIBLE_DEVICES``); its GPUs
        are devices ``nvml_index``, ``nvml_index + 1``, ...
        ``max_loaded_models`` 0 means Ollama's default, 3 per GPU. ``default_keep_alive``:
        seconds (negative: forever), applied at load time to requests that set none.
        ``vram_release_lag``: seconds (scaled) between a runner leaving /api/ps and its
        memory showing as free. ``scale_keep_alive=False`` keeps keep_alive in real seconds.
        ``request_log_size``: how many of the latest requests the request log keeps.
        ``models_dir``: a folder to keep as Ollama's models directory (manifests and
        sparse blob files, :mod:`.disk`), written at start and on every pull, copy and
        delete (None: none).
        """
        sizes = parse_sizes(vram_mb, gpus)
        if nvml_index < 0 or nvml_index + len(sizes) > MAX_DEVICES:
            raise ValueError(
                f"nvml_index must leave its {len(sizes)} GPU(s) within NVML's "
                f"{MAX_DEVICES} devices, got {nvml_index}"
            )
        if time_scale <= 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        if num_parallel < 1:
            raise ValueError(f"num_parallel must be >= 1, got {num_parallel}")
        if max_loaded_models < 0 or max_queue < 0:
            raise ValueError("max_loaded_models and max_queue must be >= 0")
        if request_log_size < 1:
            raise ValueError(f"request_log_size must be >= 1, got {request_log_size}")
        super().__init__(
            gpu_vram_mb=sizes,
            nvml_index=int(nvml_index),
            time_scale=float(time_scale),
            nvml_state=Path(nvml_state) if nvml_state is not None else None,
            num_parallel=int(num_parallel),
            max_loaded_models=int(max_loaded_models) or 3 * len(sizes),
            max_queue=int(max_queue),
            default_keep_alive=math.inf if default_keep_alive < 0 else float(default_keep_alive),
            vram_release_lag=float(vram_release_lag),
            scale_keep_alive=scale_keep_alive,
            gpu_name=gpu_name,
            request_log_size=int(request_log_size),
        )
        self.host = host
        self._port = int(port)
        self.models = InstalledModels()
        self.models_dir = ModelsDir(models_dir) if models_dir is not None else None
        self._init_pulls()
        self._started = self._stopped = False
        self._faults: list[Fault] = []
        self._latency = 0.0
        self._disabled: set[str] = set()
        self._reopen_at: float | None = None
        self._watcher: DisconnectWatcher | None = None
        self._server: Server | None = None
        self._servers: list[Server] = []
        self._workers: list[threading.Thread] = []
        self._serve_threads: list[threading.Thread] = []
        self._handler_threads: list[threading.Thread] = []
        self._conns: dict[socket.socket, bool] = {}

    # ----- lifecycle -----------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port (the real one once started, even when constructed with 0)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:11434``."""
        return f"http://{self.host}:{self._port}"

    def start(self) -> FakeOllama:
        """Bind, start the HTTP server, the scheduler, the housekeeper and the disconnect
        watcher; return self."""
        with self._cv:
            if self._started:
                raise RuntimeError("FakeOllama already started")
            self._started = True
        self._watcher = DisconnectWatcher(self._notify_all)
        self._watcher.start()
        try:
            self._open_listener()
        except BaseException:
            self._watcher.stop()
            with self._cv:
                self._started = False
            raise
        for target, name in (
            (self._scheduler_loop, "fake-ollama-scheduler"),
            (self._housekeeper_loop, "fake-ollama-housekeeper"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            self._workers.append(thread)
            thread.start()
        with self._cv:
            self._write_nvml()
        if self.models_dir is not None:
            for model in self.models.listing():
                self.models_dir.install(model.name, model.spec)
        return self

    def stop(self) -> None:
        """Stop serving, fail whatever is waiting, join all threads. Idempotent."""
        with self._cv:
            if self._stopped or not self._started:
                self._stopped = True
                return
            self._stopped = self._stopping = True
            self._reopen_at = None
        # as Go's http.Server.Shutdown, which Ollama's serve ends with: listeners first,
        # then idle connections, so nothing new arrives while the requests under way end
        self._close_listener()
        self._shutdown_connections(idle_only=True)
        with self._cv:
            self._stop_event.set()
            self._cv.notify_all()
        if self._watcher is not None:
            self._watcher.stop()  # wakes every request sleeping on its watch
        for thread in self._workers:  # the housekeeper may be re-listening: let it finish
            thread.join()
        self._close_listener()
        self._shutdown_connections(idle_only=False)
        for thread in self._serve_threads:
            thread.join()
        for server in self._servers:
            server.server_close()
        with self._cv:
            handlers = list(self._handler_threads)
        for thread in handlers:  # daemon threads: server_close() does not join them
            if thread is not threading.current_thread():
                thread.join()
        with self._cv:
            for runner in list(self._loaded.values()) + self._releasing:
                runner.state = GONE
            self._loaded.clear()
            self._releasing.clear()
            self._write_nvml()

    def __enter__(self) -> FakeOllama:
        if not self._started:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _notify_all(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def watch(self, conn: socket.socket) -> Watch:
        """Watch ``conn`` for the request being served on it (see :mod:`.watch`)."""
        assert self._watcher is not None, "FakeOllama not started"
        return self._watcher.watch(conn)

    def unwatch(self, watch: Watch) -> None:
        """Stop watching a request's connection (its answer is complete)."""
        if self._watcher is not None:
            self._watcher.unwatch(watch)

    # ----- controls (mirrored under /_sim/) -----------------------------------------

    def inject_fault(
        self,
        count: int = 1,
        status: int = 500,
        error: str | None = None,
        endpoint: str | None = None,
        mode: str = "http",
        seconds: float = 30.0,
    ) -> None:
        """Make the next ``count`` matching requests fail.

        ``endpoint``: a path such as ``/api/generate``; None matches any inference endpoint
        (generate, chat, embed, embeddings). ``mode``: ``http`` (``status`` +
        ``{"error": error}``), ``stream`` (200, one chunk, then an ``{"error"}`` line; a
        non-streaming request gets 500), ``hang`` (no answer for ``seconds`` real seconds,
        then the connection closes), ``close`` (connection closed without an answer) or,
        for ``/api/pull``, ``partial`` (half the first layer, kept, then an ``{"error"}``
        line; default text ``max retries exceeded: unexpected EOF``). A pull that names no
        model (a probe) takes no fault.
        """
        fault = make_fault(count, status, error, endpoint, mode, seconds)
        with self._cv:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        """Drop every pending fault."""
        with self._cv:
            self._faults.clear()

    def faults(self) -> list[dict[str, Any]]:
        """The pending faults, as ``/_sim/faults`` lists them."""
        with self._cv:
            return [f.as_dict() for f in self._faults]

    def take_fault(self, path: str) -> Fault | None:
        """The fault a request to ``path`` takes now (counting it), if any."""
        with self._cv:
            for fault in self._faults:
                if fault.matches(path):
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def set_gate(self, closed: bool, after_tokens: int = 0) -> None:
        """Close or open the gate. While closed, generate/chat/embed requests that hold a
        runner slot wait before producing token number ``after_tokens`` (0: before any
        output), so tests can hold requests "running" deterministically."""
        if after_tokens < 0:
            raise ValueError(f"after_tokens must be >= 0, got {after_tokens}")
        with self._cv:
            self._gate_closed = bool(closed)
            self._gate_after = int(after_tokens)
            self._cv.notify_all()

    def set_latency(self, seconds: float) -> None:
        """Real seconds added before every /api answer."""
        if seconds < 0:
            raise ValueError(f"latency must be >= 0, got {seconds}")
        with self._cv:
            self._latency = float(seconds)

    def latency(self) -> float:
        """The latency set by :meth:`set_latency`, in real seconds."""
        with self._cv:
            return self._latency

    def disable_endpoint(self, path: str) -> None:
        """Make ``path`` answer plain-text 404 (an older Ollama without it)."""
        with self._cv:
            self._disabled.add(path)

    def enable_endpoint(self, path: str) -> None:
        """Undo :meth:`disable_endpoint`."""
        with self._cv:
            self._disabled.discard(path)

    def is_disabled(self, path: str) -> bool:
        """Whether :meth:`disable_endpoint` turned ``path`` off."""
        with self._cv:
            return path in self._disabled

    def refuse_connections(self, seconds: float) -> None:
        """Stop listening for ``seconds`` (real): connects are refused and idle keep-alive
        connections are closed; requests already in progress finish. Then listen again on
        the same port."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        with self._cv:
            if self._stopping:
                return
            self._reopen_at = time.monotonic() + seconds
        self._close_listener()
        self._shutdown_connections(idle_only=True)
        with self._cv:
            self._cv.notify_all()

    def refusing(self) -> bool:
        """True while :meth:`refuse_connections` keeps the port closed."""
        with self._cv:
            return self._reopen_at is not None

    def reset(self, everything: bool = False) -> None:
        """Clear counters, logs and faults. ``everything`` also opens the gate and clears
        latency, disabled endpoints and other programs' memory (models stay loaded)."""
        with self._cv:
            self._faults.clear()
            self._reset_counters()
            if everything:
                self._latency = 0.0
                self._disabled.clear()
                self._gate_closed = False
                self._gate_after = 0
                self._pull_gate = False
                self._pull_counts = True
                for g in self._gpus:
                    g.other_mb = 0
                self._write_nvml()
            self._reset_peaks()
            self._cv.notify_all()

    def loaded_models(self) -> list[str]:
        """Names of the models /api/ps lists now (as stored), sorted."""
        with self._cv:
            return sorted(r.name for r in self._loaded.values())

    def stats(self) -> dict[str, Any]:
        """Counters and logs (times are ``time.monotonic()`` seconds). See ``/_sim/stats``;
        ``cancelled`` counts requests whose client went away before their answer ended.
        Memory figures are summed over the GPUs; ``gpus`` has each GPU as :meth:`gpu`."""
        with self._cv:
            gpus = [self._gpu_report(g) for g in self._gpus]
            return {
                "loads": self._loads,
                "unloads": self._unloads,
                "ooms": self._ooms,
                "crashes": self._crashes,
                "cancelled": self._cancelled,
                "requests_by_endpoint": dict(self._by_endpoint),
                "requests_by_status": dict(self._by_status),
                "in_flight": self._in_flight,
                "queued": len(self._queue) + (1 if self._head is not None else 0),
                "queue_depth": len(self._queue),
                "gated": self._gated,
                "generating": self._generating,
                "peak_vram_mb": self._peak_mb,
                "used_vram_mb": sum(g["used_mb"] for g in gpus),
                "other_mb": sum(g.other_mb for g in self._gpus),
                "gpus": gpus,
                "gate_closed": self._gate_closed,
                "pull_gate_closed": self._pull_gate,
                "pulls_held": self._pulls_held,
                "faults_pending": [f.as_dict() for f in self._faults],
                "runners": [self._runner_info(r) for r in self._loaded.values()],
                "load_events": [dict(e) for e in self._load_events],
                "unload_events": [dict(e) for e in self._unload_events],
                "request_log": [dict(e) for e in self._request_log],
                "nvml_error": self._nvml.error if self._nvml is not None else None,
            }

    # ----- listener and connections ------------------------------------------------

    def _open_listener(self) -> None:
        server = Server((self.host, self._port), self)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": POLL_S},
            name="fake-ollama-http",
            daemon=True,
        )
        with self._cv:
            if self._stopping:
                server.server_close()
                return
            self._port = server.server_address[1]
            self._server = server
            self._servers.append(server)
            self._serve_threads.append(thread)
        thread.start()

    def _close_listener(self) -> None:
        with self._cv:
            server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.socket.close()

    def track(self, conn: socket.socket, alive: bool) -> None:
        """Register/forget a connection and the handler thread serving it."""
        with self._cv:
            if alive:
                self._conns[conn] = False
                self._handler_threads = [t for t in self._handler_threads if t.is_alive()]
                self._handler_threads.append(threading.current_thread())
            else:
                self._conns.pop(conn, None)

    def set_busy(self, conn: socket.socket, busy: bool) -> None:
        """Mark a connection busy (serving a request) or idle (between requests)."""
        with self._cv:
            if conn in self._conns:
                self._conns[conn] = busy

    def _shutdown_connections(self, idle_only: bool) -> None:
        with self._cv:
            victims = [c for c, busy in self._conns.items() if not (idle_only and busy)]
        for conn in victims:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    # ----- the housekeeper thread ------------------------------------------------------

    def _housekeeper_loop(self) -> None:
        """Idle expiry, VRAM release after the lag, re-listening after a refusal."""
        while True:
            reopen = False
            with self._cv:
                if self._stopping:
                    return
                now = time.monotonic()
                due = self._housekeep(now)
                if self._reopen_at is not None and now >= self._reopen_at:
                    self._reopen_at = None
                    reopen = True
                else:
                    deadlines = [d for d in (due, self._reopen_at) if d is not None]
                    wait = min(deadlines) - now if deadlines else 1.0
                    self._cv.wait(max(0.001, min(wait, 1.0)))
            if reopen:
                try:
                    self._open_listener()
                except OSError:
                    with self._cv:
                        self._reopen_at = time.monotonic() + POLL_S
