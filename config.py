"""Configuration: one dataclass. Defaults <- environment (``MM_<NAME>``) <- CLI flags.

Every setting has a default and a help string; ``settings_table()`` renders them for the
README and a test checks that the README documents each one. A bad value stops startup
with a sentence naming the setting and the value (:class:`ConfigError`). An ``MM_*``
environment name that is no setting (a typo) is found by ``unknown_environment()``, with
the closest setting, so that main.py can warn instead of silently ignoring it.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelmanager.errors import ConfigError
from modelmanager.names import InvalidModelName, model_key
from modelmanager.nodes import configured_nodes

STRATEGIES = ("demand_based",)
SYNC_MODES = ("FULL", "NORMAL")
PRIORITIES = ("high", "normal", "low")
MIN_API_KEY = 16


def _setting(
    default: Any, help: str, *, minimum: float | None = None, maximum: float | None = None
) -> Any:
    return field(default=default, metadata={"help": help, "minimum": minimum, "maximum": maximum})


@dataclass
class Config:
    # --- scheduling
    OLLAMA_BASE_URL: str = _setting("http://localhost:11434", "Ollama's base URL.")
    VRAM_SAFETY_MARGIN_MB: int = _setting(
        1024, "VRAM kept free on top of every plan (MB).", minimum=0
    )
    VRAM_ESTIMATION_MULTIPLIER: float = _setting(
        1.3, "On-disk size x this = first VRAM estimate of an unknown model.", minimum=1.0
    )
    SCHEDULER_LOOP_INTERVAL: float = _setting(
        0.1, "Seconds between scheduler passes (it also wakes on every submit).", minimum=0.001
    )
    SCHEDULER_STRATEGY: str = _setting("demand_based", "Scheduling policy (demand_based).")
    MODEL_KEEP_ALIVE: float = _setting(
        300.0, "Seconds an idle model stays loaded before the manager unloads it.", minimum=0
    )
    MAX_CONCURRENT_PER_MODEL: int = _setting(
        20,
        "Most jobs in flight to Ollama at once for one model (also capped by OLLAMA_NUM_PARALLEL).",
        minimum=1,
    )
    QUEUE_MAX_SIZE: int = _setting(
        1000, "Unfinished jobs accepted at once; beyond it submit answers 429.", minimum=1
    )
    # --- service, backend, reliability
    OLLAMA_BACKENDS: str = _setting(
        "",
        "Ollama servers to drive, as name=url pairs separated by commas (names of a-z 0-9 "
        "_ . -), e.g. gpu0=http://127.0.0.1:11434,box2=http://10.0.0.7:11434; empty: one "
        "server named local at OLLAMA_BASE_URL.",
    )
    OLLAMA_BACKEND_GPUS: str = _setting(
        "",
        "Which of this host's GPUs each server on this host uses, as name=index[+index] "
        "pairs (gpu0=0,gpu1=1); empty: one server here uses them all, several get one each "
        "in order.",
    )
    BACKEND_GPU_URLS: str = _setting(
        "",
        "Model Managers that report the GPUs of servers on other hosts, as name=url pairs; "
        "a server elsewhere defaults to its host at port 5001, then to VRAM_BUDGET_MB.",
    )
    NODE_STARTUP_TIMEOUT: float = _setting(
        120.0,
        "Seconds POST /api/v1/nodes waits for a new server to answer (504 after that).",
        minimum=0.1,
    )
    HOST: str = _setting("127.0.0.1", "Address the HTTP API binds to.")
    HTTP_PORT: int = _setting(5001, "Port of the HTTP API.", minimum=0, maximum=65535)
    HTTP_THREADS: int = _setting(
        16,
        "Threads answering HTTP requests (concurrent submits share one disk sync).",
        minimum=1,
    )
    MAX_WAITERS: int = _setting(
        8,
        "Requests that may wait at once in GET /api/job/<id>?wait=S (each holds an HTTP "
        "thread, so it must be below HTTP_THREADS); beyond it, wait answers at once.",
        minimum=0,
    )
    DATA_DIR: str = _setting("data", "Folder of the SQLite job store and its lock file.")
    LOG_FILE: str = _setting("model_manager.log", "Log file ('' for stderr only).")
    VRAM_BUDGET_MB: int = _setting(
        0, "VRAM to plan with when NVML is unavailable (0: none; loads then wait).", minimum=0
    )
    OLLAMA_MAX_LOADED_MODELS: int = _setting(
        3, "Models Ollama keeps loaded at once (its OLLAMA_MAX_LOADED_MODELS).", minimum=1
    )
    OLLAMA_NUM_PARALLEL: int = _setting(
        1,
        "Requests Ollama runs at once per model (its OLLAMA_NUM_PARALLEL; embedding "
        "models 1); the manager sends no more than these plus DISPATCH_AHEAD, so waiting "
        "jobs stay in its priority queue.",
        minimum=1,
    )
    DISPATCH_AHEAD: int = _setting(
        1,
        "Jobs sent to a model beyond the ones Ollama runs at once, so that a slot never "
        "idles between two jobs (they wait in Ollama's runner, first come first served).",
        minimum=0,
    )
    AGING_SECONDS: float = _setting(
        60.0, "A waiting job gains one priority level per this many seconds.", minimum=0.001
    )
    MIN_RESIDENCY: float = _setting(
        10.0,
        "Seconds a loaded model with waiting jobs is kept before a higher-priority group "
        "may evict it, unless it already finished a job.",
        minimum=0,
    )
    MAX_ATTEMPTS: int = _setting(3, "Tries per job before it fails (crashes count).", minimum=1)
    RETRY_BASE_SECONDS: float = _setting(
        1.0, "First retry backoff; doubles per attempt, with full jitter.", minimum=0
    )
    RETRY_MAX_SECONDS: float = _setting(60.0, "Cap of the retry backoff.", minimum=0)
    REQUEST_TIMEOUT: float = _setting(
        300.0,
        "Seconds Ollama may send nothing while answering a job (answers are streamed: "
        "a long answer that keeps producing tokens never times out).",
        minimum=0.1,
    )
    LOAD_TIMEOUT: float = _setting(900.0, "Seconds to wait for a model load.", minimum=0.1)
    MONITOR_INTERVAL: float = _setting(
        0.5, "Seconds a GPU/ps snapshot is reused by the scheduler.", minimum=0.01
    )
    ENGINE_THREADS: int = _setting(64, "Threads carrying jobs to Ollama.", minimum=1)
    SQLITE_SYNCHRONOUS: str = _setting(
        "FULL", "SQLite synchronous mode for the job store (FULL or NORMAL)."
    )
    API_KEY: str = _setting(
        "",
        "If set, every endpoint but /api/health and / needs 'Authorization: Bearer <key>'.",
    )
    API_KEYS: str = _setting(
        "",
        "More accepted keys, comma-separated, each optionally with the priority of its "
        "Ollama/OpenAI API requests: 'key1:high,key2:low,key3'.",
    )
    DEFAULT_PRIORITY: str = _setting(
        "normal",
        "Priority of Ollama/OpenAI API requests without an X-Priority header or a key "
        "default (high, normal or low).",
    )
    MAX_OPEN_REQUESTS: int = _setting(
        128,
        "Ollama/OpenAI API inference requests served at once (each holds an HTTP thread "
        "while it waits or streams); beyond it they answer 503 as Ollama does.",
        minimum=1,
    )
    JOB_TIMEOUT: float = _setting(
        0.0, "Seconds from submit after which an unfinished job fails (0: never).", minimum=0
    )
    RESULT_TTL: float = _setting(
        604800.0, "Seconds finished jobs and their results are kept (0: forever).", minimum=0
    )
    AUTO_PULL: bool = _setting(False, "Pull a model Ollama lacks instead of failing its jobs.")
    # --- models on disk, warm pool
    MAX_DOWNLOADS: int = _setting(
        3,
        "Downloads (Ollama pulls) at once per node; beyond it POST /api/v1/models/download "
        "answers 429.",
        minimum=1,
    )
    PRELOAD_MODELS: str = _setting(
        "",
        "Models every node should have on disk, separated by commas; a background task "
        "downloads the ones missing (or partly downloaded) at start and every "
        "PRELOAD_INTERVAL.",
    )
    PRELOAD_INTERVAL: float = _setting(
        1800.0, "Seconds between two checks of PRELOAD_MODELS on every node.", minimum=1.0
    )
    PINNED_MODELS: str = _setting(
        "",
        "Models kept loaded (one copy each) whenever VRAM allows, separated by commas; only "
        "high-priority work (or work aged to it) evicts one.",
    )
    OLLAMA_MODELS_DIR: str = _setting(
        "",
        "Ollama's models directory (its OLLAMA_MODELS) for servers on this host, read by "
        "GET /api/v1/models/space: one path, or name=path pairs separated by commas; "
        "empty: ~/.ollama/models.",
    )
    # --- several instances sharing one queue (PostgreSQL)
    DATABASE_URL: str = _setting(
        "",
        "PostgreSQL database shared by several Model Managers (postgresql://user:pass@host/db);"
        " empty: SQLite in DATA_DIR, for one manager.",
    )
    LEASE_SECONDS: float = _setting(
        30.0,
        "With DATABASE_URL: seconds an instance's claims and heartbeat hold unrenewed; the jobs"
        " of an instance silent this long go back to the queue.",
        minimum=1.0,
    )
    HEARTBEAT_SECONDS: float = _setting(
        2.0,
        "With DATABASE_URL: seconds between two heartbeats (lease renewals, a look at the"
        " shared queue); at most a third of LEASE_SECONDS.",
        minimum=0.05,
    )
    INSTANCE_NAME: str = _setting(
        "", "With DATABASE_URL: this instance's name in GET /api/v1/instances (default host:port)."
    )
    INSTANCE_URL: str = _setting(
        "",
        "With DATABASE_URL: the URL other hosts reach this instance at, shown in"
        " GET /api/v1/instances (default http://HOST:HTTP_PORT, with this host's name"
        " when HOST is 0.0.0.0 or ::).",
    )
    SHUTDOWN_TIMEOUT: float = _setting(
        30.0, "Seconds SIGTERM waits for running jobs before exiting.", minimum=0
    )

    @property
    def safety_margin_bytes(self) -> int:
        return self.VRAM_SAFETY_MARGIN_MB * 1024 * 1024

    @property
    def budget_bytes(self) -> int | None:
        return self.VRAM_BUDGET_MB * 1024 * 1024 if self.VRAM_BUDGET_MB else None

    @property
    def preload_models(self) -> list[str]:
        """PRELOAD_MODELS as a list of names, as written (duplicates dropped)."""
        return _names(self.PRELOAD_MODELS)

    @property
    def pinned_models(self) -> list[str]:
        """PINNED_MODELS as a list of names, as written (duplicates dropped)."""
        return _names(self.PINNED_MODELS)

    def models_dir(self, node: str) -> str:
        """The models directory of Ollama server ``node`` on this host (OLLAMA_MODELS_DIR,
        else Ollama's default ``~/.ollama/models``, as ``envconfig.Models`` has it)."""
        default = os.path.join(os.path.expanduser("~"), ".ollama", "models")
        text = self.OLLAMA_MODELS_DIR.strip()
        if not text:
            return default
        if "=" not in text:
            return text
        pairs = dict(_pair(part) for part in text.split(",") if part.strip())
        return pairs.get(node, default)

    @property
    def api_keys(self) -> dict[str, str | None]:
        """Every accepted API key (API_KEY and those of API_KEYS) with the default priority
        of its Ollama/OpenAI API requests (None: DEFAULT_PRIORITY). Empty: no key needed."""
        keys: dict[str, str | None] = {self.API_KEY: None} if self.API_KEY else {}
        for entry in self.API_KEYS.split(","):
            entry = entry.strip()
            if not entry:
                continue
            key, sep, priority = entry.rpartition(":")
            if not sep:
                key, priority = entry, ""
            priority = priority.strip().lower()
            if priority and priority not in PRIORITIES:
                # (the text is not echoed: it may be part of a key)
                raise ConfigError(
                    "API_KEYS: what follows a key's last ':' must be high, normal or low"
                )
            if len(key.strip()) < MIN_API_KEY:
                raise ConfigError(f"API_KEYS: every key must be at least {MIN_API_KEY} characters")
            keys[key.strip()] = priority or None
        return keys

    def validate(self) -> Config:
        """Check ranges and choices; raise :class:`ConfigError` naming the bad setting."""
        for f in dataclasses.fields(self):
            minimum = f.metadata.get("minimum")
            value = getattr(self, f.name)
            # "not >=" rather than "<": NaN compares False both ways and must not pass
            if minimum is not None and not value >= minimum:
                raise ConfigError(f"{f.name} must be at least {minimum}, got {value!r}")
            maximum = f.metadata.get("maximum")
            if maximum is not None and not value <= maximum:
                raise ConfigError(f"{f.name} must be at most {maximum}, got {value!r}")
        if self.MAX_WAITERS >= self.HTTP_THREADS:
            raise ConfigError(
                f"MAX_WAITERS must be less than HTTP_THREADS ({self.HTTP_THREADS}), so that "
                f"waiting requests always leave threads for the others; got {self.MAX_WAITERS}"
            )
        if self.SCHEDULER_STRATEGY not in STRATEGIES:
            raise ConfigError(
                f"SCHEDULER_STRATEGY must be one of {', '.join(STRATEGIES)}, "
                f"got {self.SCHEDULER_STRATEGY!r}"
            )
        if self.SQLITE_SYNCHRONOUS.upper() not in SYNC_MODES:
            raise ConfigError(
                f"SQLITE_SYNCHRONOUS must be FULL or NORMAL, got {self.SQLITE_SYNCHRONOUS!r}"
            )
        self.SQLITE_SYNCHRONOUS = self.SQLITE_SYNCHRONOUS.upper()
        if self.HEARTBEAT_SECONDS * 3 > self.LEASE_SECONDS:
            raise ConfigError(
                f"HEARTBEAT_SECONDS ({self.HEARTBEAT_SECONDS:g}) must be at most a third of "
                f"LEASE_SECONDS ({self.LEASE_SECONDS:g}), so that a live instance's leases "
                "never expire between two heartbeats"
            )
        if self.DATABASE_URL and not self.DATABASE_URL.startswith(("postgresql://", "postgres://")):
            raise ConfigError("DATABASE_URL must be a postgresql:// URL")
        if self.API_KEY and len(self.API_KEY) < MIN_API_KEY:
            raise ConfigError(f"API_KEY must be at least {MIN_API_KEY} characters long")
        self.DEFAULT_PRIORITY = self.DEFAULT_PRIORITY.lower()
        if self.DEFAULT_PRIORITY not in PRIORITIES:
            raise ConfigError(
                f"DEFAULT_PRIORITY must be high, normal or low, got {self.DEFAULT_PRIORITY!r}"
            )
        self.api_keys  # noqa: B018 - parses API_KEYS, raising ConfigError for a bad entry
        if not self.OLLAMA_BASE_URL.startswith(("http://", "https://")):
            raise ConfigError(
                f"OLLAMA_BASE_URL must start with http:// or https://, got {self.OLLAMA_BASE_URL!r}"
            )
        for setting in ("PRELOAD_MODELS", "PINNED_MODELS"):
            for name in _names(getattr(self, setting)):
                try:
                    model_key(name)
                except InvalidModelName:
                    raise ConfigError(
                        f"{setting} holds {name!r}, which is not an Ollama model name"
                    ) from None
        if "=" in self.OLLAMA_MODELS_DIR:
            for part in self.OLLAMA_MODELS_DIR.split(","):
                if part.strip() and not all(_pair(part)):
                    raise ConfigError(
                        f"OLLAMA_MODELS_DIR must be one path or name=path pairs, got {part!r}"
                    )
        configured_nodes(  # checks the syntax; GPU counts are checked at start
            self.OLLAMA_BACKENDS,
            self.OLLAMA_BASE_URL,
            self.OLLAMA_BACKEND_GPUS,
            self.BACKEND_GPU_URLS,
            None,
        )
        return self

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Config:
        """Defaults, then ``MM_<NAME>`` from ``environ``, then ``overrides`` (CLI), validated."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f"MM_{f.name}")
            if raw is not None:
                values[f.name] = _convert(f.name, f"MM_{f.name}", raw, type(f.default))
        for name, value in (overrides or {}).items():
            if value is not None:
                values[name] = value
        return cls(**values).validate()


def _names(text: str) -> list[str]:
    """Names separated by commas, blanks dropped, each once (the first spelling kept)."""
    seen: dict[str, str] = {}
    for part in text.split(","):
        name = part.strip()
        if name:
            try:
                key = model_key(name)
            except InvalidModelName:
                key = name
            seen.setdefault(key, name)
    return list(seen.values())


def _pair(part: str) -> tuple[str, str]:
    name, _, path = part.partition("=")
    return name.strip(), path.strip()


def _convert(name: str, source: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError:
        raise ConfigError(
            f"{source} must be {_KINDS[kind]} (setting {name}), got {raw!r}"
        ) from None


_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "text"}


def unknown_environment(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """``(name, closest)`` for each ``MM_*`` name in ``environ`` that is no setting, sorted;
    ``closest`` is the most similar setting's environment name, or None if none is close."""
    environ = os.environ if environ is None else environ
    known = [f"MM_{f.name}" for f in dataclasses.fields(Config)]
    unknown = sorted(name for name in environ if name.startswith("MM_") and name not in known)
    return [
        (name, next(iter(difflib.get_close_matches(name.upper(), known, 1)), None))
        for name in unknown
    ]


def settings_table() -> list[tuple[str, Any, str]]:
    """(name, default, help) for every setting, in declaration order."""
    return [(f.name, f.default, f.metadata["help"]) for f in dataclasses.fields(Config)]
