"""What each Ollama server supports, and how the manager makes do on an older one.

Ollama grew its API over time: ``/api/embed`` (batched, normalised vectors) came after
the legacy ``/api/embeddings``, ``/api/ps`` after the first releases, and pull progress
with byte counts after that. An endpoint a server lacks answers Go's plain-text
``404 page not found`` (a model Ollama lacks answers a JSON 404 instead;
:func:`modelmanager.ollama_wire.http_error` tells them apart). So the endpoints
themselves are the probe: the ones used all the time (``/api/embed``, ``/api/ps``) are
learned from their first real answer, at no extra cost; the ones a user's request
depends on (``/api/pull``, ``/api/delete``) are probed once per server before it is
asked, with a request Ollama refuses before doing anything
(:meth:`modelmanager.ollama_client.OllamaClient.probe`). The server's version
(``/api/version``) is asked when a feature is first found missing, for the log line.
Nothing here fails because a server is older: each missing feature is logged once per
server as "Skipping <feature> for node X as endpoints are not available", with what is
done instead.

Thread-safe: one lock per server guards what is known.
"""

from __future__ import annotations

import enum
import math
import threading
from collections.abc import Mapping
from typing import Any

from .abortable import Call
from .errors import BackendTimeout, BackendUnavailable, OllamaError
from .logger import get_logger
from .ollama_client import InferenceResult, OllamaClient

log = get_logger("SYSTEM")


class Feature(enum.StrEnum):
    """A part of Ollama's API the manager can do without; the value names it in logs."""

    EMBED = "/api/embed"
    PS = "/api/ps"
    PULL = "model downloads (/api/pull)"
    PULL_PROGRESS = "download progress"
    DELETE = "model deletion (/api/delete)"


#: How each feature is probed: (method, path); None: only learned from a real answer
#: (the pull stream of an Ollama without progress has no byte counts).
_PROBES: dict[Feature, tuple[str, str] | None] = {
    Feature.EMBED: ("POST", "/api/embed"),
    Feature.PS: ("GET", "/api/ps"),
    Feature.PULL: ("POST", "/api/pull"),
    Feature.PULL_PROGRESS: None,
    Feature.DELETE: ("DELETE", "/api/delete"),
}

#: What the manager does instead, said once with the skip.
_INSTEAD = {
    Feature.EMBED: "embedding through /api/embeddings, one input per request, vectors "
    "normalised by the manager",
    Feature.PS: "planning with NVML (or VRAM_BUDGET_MB minus the models the manager loaded) "
    "and its own record of what is loaded; models loaded by others go unseen",
    Feature.PULL: "its models cannot be downloaded through the manager",
    Feature.PULL_PROGRESS: "download status shows no byte counts",
    Feature.DELETE: "its models cannot be deleted through the manager",
}


class Features:
    """What one Ollama server (node ``node``, reached through ``client``) supports.

    :meth:`supports` answers from what is known, probing the feature the first time it
    is asked; a server that cannot be reached counts as supporting it (nothing is
    learned, it is asked again next time). :meth:`lacks` records that a real request met
    the plain-text 404.
    """

    def __init__(self, client: OllamaClient, node: str) -> None:
        self.client = client
        self.node = node
        self._lock = threading.Lock()
        self._known: dict[Feature, bool] = {}

    def supports(self, feature: Feature) -> bool:
        with self._lock:
            known = self._known.get(feature)
        if known is not None:
            return known
        probe = _PROBES[feature]
        if probe is None:
            return True
        try:
            present = self.client.probe(*probe)
        except (BackendUnavailable, BackendTimeout):
            return True  # unknown: the real request will tell
        if present:
            with self._lock:
                self._known.setdefault(feature, True)
            return True
        self.lacks(feature)
        return False

    def lacks(self, feature: Feature) -> None:
        """Record that this server does not have ``feature``; logged once."""
        with self._lock:
            if self._known.get(feature) is False:
                return
            self._known[feature] = False
        known = self.version()
        version = f" (Ollama {known})" if known else ""
        log.info(
            "Skipping %s for node %s as endpoints are not available%s; %s",
            feature.value,
            self.node,
            version,
            _INSTEAD[feature],
        )

    def has(self, feature: Feature) -> bool | None:
        """What is known without asking: True, False, or None (not probed yet)."""
        with self._lock:
            return self._known.get(feature)

    def version(self) -> str | None:
        """The server's Ollama version (``/api/version``), or None where it cannot tell."""
        try:
            return self.client.version()
        except OllamaError:
            return None


def embed_one_by_one(
    client: OllamaClient,
    model: str,
    fields: Mapping[str, Any],
    *,
    keep_alive: float,
    call: Call | None = None,
) -> InferenceResult:
    """An embed job's answer through the legacy ``/api/embeddings``, for an Ollama without
    ``/api/embed``: one request per input, each vector L2-normalised (and first cut to
    ``dimensions`` when given) as ``/api/embed`` does (``server/routes.go``
    ``EmbedHandler``: ``normalize(embedding[:req.Dimensions])``). ``truncate`` cannot be
    sent (the legacy endpoint has no such field); ``options`` are. Metrics are 0: the
    legacy answer has none."""
    given = fields.get("input")
    inputs = [given] if isinstance(given, str) else list(given or [])
    options = fields.get("options")
    dimensions = fields.get("dimensions")
    vectors = []
    for text in inputs:
        vector = client.embeddings(
            model, str(text), keep_alive=keep_alive, options=options, call=call
        )
        if isinstance(dimensions, int) and 0 < dimensions < len(vector):
            vector = vector[:dimensions]
        vectors.append(_normalised(vector))
    return InferenceResult(model=model, embeddings=vectors, raw={"model": model})


def _normalised(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector
