"""The simulated Ollama's models directory (its ``OLLAMA_MODELS``), kept on a real disk.

Laid out as Ollama lays it out (``server/internal/manifest``, ``manifest.BlobsPath``):
``manifests/<host>/<namespace>/<model>/<tag>`` holds each model's manifest (JSON: its
config and layers with digest and size), ``blobs/sha256-<hex>`` each layer, and a layer
being downloaded sits in ``blobs/sha256-<hex>-partial`` until it is complete (Ollama
keeps such a file when a pull stops, and the next pull resumes it). A blob shared by
several models (a copy) is kept until the last model using it is deleted.

Blobs are *sparse* files of the layer's size (``os.truncate``), so that a 40 GB model
costs no disk: their size is real to ``stat`` (what ``ls`` shows), not to the blocks the
disk holds. Thread-safe: one lock.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from modelmanager.names import parse

from .catalog import ModelSpec

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
LAYER_TYPES = {
    "model": "application/vnd.ollama.image.model",
    "template": "application/vnd.ollama.image.template",
    "license": "application/vnd.ollama.image.license",
    "params": "application/vnd.ollama.image.params",
    "config": "application/vnd.docker.container.image.v1+json",
}


class ModelsDir:
    """Manifests and blobs under ``root`` (created if missing)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "manifests").mkdir(parents=True, exist_ok=True)

    def _manifest_path(self, name: str) -> Path:
        host, namespace, model, tag = parse(name)
        return self.root / "manifests" / host / namespace / model / tag

    def _blob(self, spec: ModelSpec, layer: str, partial: bool = False) -> Path:
        suffix = "-partial" if partial else ""
        return self.root / "blobs" / f"sha256-{spec.layer_digest(layer)}{suffix}"

    def install(self, name: str, spec: ModelSpec) -> None:
        """Write ``name``'s manifest and any blob it lacks; a partial file is completed."""
        with self._lock:
            for layer, size in spec.layers():
                blob = self._blob(spec, layer)
                partial = self._blob(spec, layer, partial=True)
                if partial.exists():
                    partial.replace(blob)
                if not blob.exists():
                    blob.touch()
                os.truncate(blob, size)
            layers = [
                {
                    "mediaType": LAYER_TYPES[layer],
                    "digest": f"sha256:{spec.layer_digest(layer)}",
                    "size": size,
                }
                for layer, size in spec.layers()
            ]
            config = next(entry for entry in layers if entry["mediaType"] == LAYER_TYPES["config"])
            doc = {
                "schemaVersion": 2,
                "mediaType": MANIFEST_TYPE,
                "config": config,
                "layers": [entry for entry in layers if entry is not config],
            }
            path = self._manifest_path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(doc))

    def partial(self, spec: ModelSpec, layer: str, size: int) -> None:
        """A download of ``layer`` stopped: its ``-partial`` file (sparse, ``size`` bytes
        long, as Ollama sizes it to the whole layer)."""
        with self._lock:
            path = self._blob(spec, layer, partial=True)
            if not path.exists():
                path.touch()
            os.truncate(path, size)

    def remove(self, name: str, spec: ModelSpec, still_used: set[str]) -> None:
        """Delete ``name``'s manifest and its blobs whose digests no model in
        ``still_used`` (layer digests of the models that remain) needs."""
        with self._lock:
            path = self._manifest_path(name)
            path.unlink(missing_ok=True)
            for layer, _ in spec.layers():
                if spec.layer_digest(layer) not in still_used:
                    self._blob(spec, layer).unlink(missing_ok=True)
