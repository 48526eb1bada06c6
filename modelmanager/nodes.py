"""Nodes: the Ollama servers the manager drives, as configured or registered.

A *node* (a backend) is one Ollama server: a name (``[a-z0-9_.-]+``), its URL, and where
its memory figures come from:

* NVML on this host, for a server on this host: the GPUs it uses are all of this host's,
  unless ``OLLAMA_BACKEND_GPUS`` maps it to some (``gpu0=0,gpu1=1``, ``big=0+1``: one
  Ollama per GPU pinned with ``CUDA_VISIBLE_DEVICES``). Several servers on this host
  without a mapping get one GPU each, in the order listed, when there are as many GPUs
  as servers; otherwise the manager cannot tell which GPU is whose and refuses to start.
  A node registered on this host uses the GPUs its ``gpus`` names, else those no other
  node uses; never another node's.
* a Model Manager's GPU endpoint on the node's host (``GET <url>/api/v1/gpu/devices``):
  ``BACKEND_GPU_URLS`` (``box2=http://10.0.0.7:5001``), else the node's host at port
  5001, for a server elsewhere;
* a budget (``vram_budget_mb`` of a registered node, else ``VRAM_BUDGET_MB``) minus the
  node's own ``/api/ps``, where neither answers.

Devices are named ``<node>:gpu<N>``. Pure parsing and checks here; no I/O.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import ConfigError

NAME_RE = re.compile(r"^[a-z0-9_.-]{1,64}$")
DEFAULT_NODE = "local"
GPU_ENDPOINT_PORT = 5001  # where a Model Manager listens by default


@dataclass(frozen=True)
class NodeSpec:
    """One Ollama server the manager drives."""

    name: str
    url: str
    gpus: tuple[int, ...] | None = None  # this host's NVML indices it uses (None: unmapped)
    gpu_url: str | None = None  # a Model Manager reporting the node's GPUs
    vram_budget_mb: int | None = None  # plan with this budget minus its /api/ps
    registered: bool = False  # added through the API (persisted), not by configuration

    def device(self, index: int) -> str:
        return f"{self.name}:gpu{index}"


def check_name(name: object, what: str = "node name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"{what} must be 1 to 64 of a-z 0-9 _ . -, got {name!r}")
    return name


def check_url(url: object, what: str = "URL") -> str:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be http(s)://host[:port], got {url!r}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"{what} has a bad port: {url!r}") from None
    assert isinstance(url, str)
    return url.rstrip("/")


def _pairs(text: str, setting: str) -> list[tuple[str, str]]:
    pairs = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep or not value.strip():
            raise ConfigError(f"{setting} entries are name=value, got {item!r}")
        try:
            pairs.append((check_name(name.strip()), value.strip()))
        except ValueError as exc:
            raise ConfigError(f"{setting}: {exc}") from None
    return pairs


def is_local(url: str) -> bool:
    """Whether ``url`` points at this host (loopback, or one of its own addresses)."""
    host = urlsplit(url).hostname or ""
    if host in ("localhost", "0.0.0.0", "::"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        mine = {socket.gethostname(), socket.getfqdn()}
    except OSError:
        mine = set()
    return host in mine


def same_server(url: str) -> tuple[str, str, int]:
    """What tells one server from another in ``url``: scheme, host and port, with the
    host's case, a trailing dot and the spellings of this host's loopback
    (``localhost``, ``127.0.0.1``, ``::1``, ``0.0.0.0``) made one, and the scheme's
    default port filled in. Two URLs with the same key reach the same server."""
    parts = urlsplit(url)
    scheme = (parts.scheme or "http").lower()
    host = (parts.hostname or "").lower().rstrip(".")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = 443 if scheme == "https" else 80
    loopback = host in ("localhost", "0.0.0.0", "::")
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host.endswith(".localhost")
    return scheme, "loopback" if loopback else host, port


def default_gpu_url(url: str) -> str:
    """Where a Model Manager on the node's host would answer: its host, port 5001."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{GPU_ENDPOINT_PORT}"


def configured_nodes(
    backends: str, base_url: str, backend_gpus: str, gpu_urls: str, gpu_count: int | None
) -> list[NodeSpec]:
    """The nodes the settings describe (``OLLAMA_BACKENDS`` or one at ``OLLAMA_BASE_URL``,
    with ``OLLAMA_BACKEND_GPUS`` and ``BACKEND_GPU_URLS``). ``gpu_count`` is how many GPUs
    NVML shows on this host (None: no NVML).

    Raises :class:`ConfigError` with a sentence naming the bad setting and value.
    """
    pairs = _pairs(backends, "OLLAMA_BACKENDS")
    source = "OLLAMA_BACKENDS URL of {}"
    if not pairs:
        pairs, source = [(DEFAULT_NODE, base_url)], "OLLAMA_BASE_URL"
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise ConfigError(f"OLLAMA_BACKENDS names a node twice: {backends!r}")
    urls: dict[str, str] = {}
    for name, url in pairs:
        try:
            urls[name] = check_url(url, source.format(name))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    servers: dict[tuple[str, str, int], str] = {}
    for name, url in urls.items():
        other = servers.setdefault(same_server(url), name)
        if other != name:
            raise ConfigError(
                f"OLLAMA_BACKENDS gives one Ollama server two names: {other} at "
                f"{urls[other]} and {name} at {url} (list each server once)"
            )
    gpus: dict[str, tuple[int, ...]] = {}
    for name, value in _pairs(backend_gpus, "OLLAMA_BACKEND_GPUS"):
        if name not in urls:
            raise ConfigError(f"OLLAMA_BACKEND_GPUS names {name!r}, which is no backend")
        try:
            indices = tuple(int(i) for i in value.split("+"))
        except ValueError:
            raise ConfigError(
                f"OLLAMA_BACKEND_GPUS: {name} must list GPU indices like 0 or 0+1, got {value!r}"
            ) from None
        if any(i < 0 for i in indices):
            raise ConfigError(f"OLLAMA_BACKEND_GPUS: negative GPU index for {name}")
        missing = [i for i in indices if gpu_count is not None and i >= gpu_count]
        if missing:
            raise ConfigError(
                f"OLLAMA_BACKEND_GPUS: {name}={value} names GPU {missing[0]}, but NVML shows "
                f"{gpu_count} GPU(s) on this host (indices 0 to {gpu_count - 1})"
                if gpu_count
                else f"OLLAMA_BACKEND_GPUS: {name}={value} names GPU {missing[0]}, but NVML "
                f"shows no GPU on this host"
            )
        gpus[name] = indices
    used = [i for indices in gpus.values() for i in indices]
    if len(set(used)) != len(used):
        raise ConfigError(f"OLLAMA_BACKEND_GPUS gives one GPU to two backends: {backend_gpus!r}")
    gpu_url: dict[str, str] = {}
    for name, value in _pairs(gpu_urls, "BACKEND_GPU_URLS"):
        if name not in urls:
            raise ConfigError(f"BACKEND_GPU_URLS names {name!r}, which is no backend")
        try:
            gpu_url[name] = check_url(value, f"BACKEND_GPU_URLS URL of {name}")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    local = [n for n in names if is_local(urls[n]) and n not in gpu_url]
    unmapped = [n for n in local if n not in gpus]
    if len(local) > 1 and unmapped and gpu_count:
        if gpus or len(local) != gpu_count:
            raise ConfigError(
                f"several Ollama servers on this host ({', '.join(local)}) and {gpu_count} "
                f"GPU(s): set OLLAMA_BACKEND_GPUS (e.g. {local[0]}=0,{local[1]}=1) to say "
                f"which GPUs each one uses"
            )
        gpus = {n: (i,) for i, n in enumerate(local)}  # one GPU each, in the order listed
    return [
        NodeSpec(
            name,
            urls[name],
            gpus=gpus.get(name),
            gpu_url=gpu_url.get(name) or (None if name in local else default_gpu_url(urls[name])),
        )
        for name in names
    ]


def nvml_gpus(spec: NodeSpec, gpu_count: int) -> tuple[int, ...]:
    """The NVML indices of this host's GPUs whose memory ``spec`` plans with: its mapped
    ones, or all ``gpu_count`` of them when unmapped; none for a node whose figures come
    from a budget, a GPU endpoint, or that is on another host."""
    if spec.vram_budget_mb or spec.gpu_url or not is_local(spec.url):
        return ()
    return spec.gpus if spec.gpus is not None else tuple(range(gpu_count))


def gpu_owners(specs: list[NodeSpec], gpu_count: int) -> dict[int, str]:
    """Which node uses each of this host's GPUs (NVML index to node name)."""
    owners: dict[int, str] = {}
    for spec in specs:
        for index in nvml_gpus(spec, gpu_count):
            owners.setdefault(index, spec.name)
    return owners


def hardware_summary(devices: list[dict[str, object]]) -> list[dict[str, object]]:
    """GPUs grouped as ``{"type": "<name> | <total MB // 1024>GB", "count": n}``, sorted by
    type; devices unavailable, in error, or without a total are left out."""
    counts: dict[str, int] = {}
    for d in devices:
        total = d.get("total_mb")
        if not d.get("available") or d.get("error") or not isinstance(total, int):
            continue
        key = f"{d.get('name')} | {total // 1024}GB"
        counts[key] = counts.get(key, 0) + 1
    return [{"type": k, "count": counts[k]} for k in sorted(counts)]
