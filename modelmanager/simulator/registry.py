"""The models installed in the simulated Ollama: names as Ollama stores them.

Ollama keeps a model under the name it was pulled, copied or created with (case kept) and
finds it case-insensitively with the default host, namespace and tag filled in
(``getExistingName``). Each entry points at a catalog :class:`ModelSpec` (its weights);
a copy is a new entry sharing its source's spec. Thread-safe: one lock guards the table.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from modelmanager.names import InvalidModelName, display_name, model_key

from .catalog import CATALOG, INSTALLED_AT, ModelSpec
from .wire import ERR_INVALID_NAME, ApiError


@dataclass(frozen=True)
class Installed:
    """One installed model: its stored name, its weights and when it was written (Unix s)."""

    name: str
    spec: ModelSpec
    modified: float


def key_of(name: str) -> str:
    """The model identity of ``name`` (:func:`modelmanager.names.model_key`), else 400."""
    try:
        return model_key(name)
    except InvalidModelName:
        raise ApiError(400, ERR_INVALID_NAME) from None


class InstalledModels:
    """The installed models, keyed by model identity. Starts with the catalog's installed
    models, one day apart (newest first in catalog order)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, Installed] = {}
        for i, spec in enumerate(s for s in CATALOG.values() if s.installed):
            self._models[model_key(spec.name)] = Installed(
                spec.name, spec, INSTALLED_AT - i * 86400
            )

    def find(self, name: str) -> Installed | None:
        """The installed model ``name`` refers to, or None. 400 for an invalid name."""
        key = key_of(name)
        with self._lock:
            return self._models.get(key)

    def resolve(self, name: str, double_quote: bool = False) -> Installed:
        """The installed model ``name`` refers to, else 400 (invalid name) or 404 with the
        text of generate/chat/show (``model 'x' not found``) or, with ``double_quote``, of
        embed (``model "x" not found, try pulling it first``)."""
        found = self.find(name)
        if found is None:
            if double_quote:
                raise ApiError(404, f'model "{name}" not found, try pulling it first')
            raise ApiError(404, f"model '{name}' not found")
        return found

    def listing(self) -> list[Installed]:
        """Every installed model, newest first (ties by name)."""
        with self._lock:
            models = list(self._models.values())
        return sorted(models, key=lambda m: (-m.modified, m.name))

    def install(self, name: str, spec: ModelSpec) -> bool:
        """Install ``spec`` as ``name`` (a pull) unless a model of that name exists; True
        if it was installed now."""
        key = key_of(name)
        with self._lock:
            if key in self._models:
                return False
            self._models[key] = Installed(display_name(name), spec, time.time())
            return True

    def copy(self, source: str, destination: str) -> Installed:
        """``/api/copy``: ``destination`` becomes another name for ``source``'s weights.

        An existing destination (matched case-insensitively) keeps its stored spelling and
        now points at the source's weights, as Ollama overwrites its manifest. Raises 400
        for an invalid name (``source "x" is invalid``) and 404 ``model "x" not found``.
        """
        try:
            src_key = model_key(source)
        except InvalidModelName:
            raise ApiError(400, f'source "{source}" is invalid') from None
        try:
            dst_key = model_key(destination)
            dst_name = display_name(destination)
        except InvalidModelName:
            raise ApiError(400, f'destination "{destination}" is invalid') from None
        with self._lock:
            src = self._models.get(src_key)
            if src is None:
                raise ApiError(404, f'model "{source}" not found')
            existing = self._models.get(dst_key)
            name = existing.name if existing is not None else dst_name
            copied = Installed(name, src.spec, time.time())
            self._models[dst_key] = copied
            return copied

    def delete(self, name: str) -> None:
        """``/api/delete``: forget ``name`` (its runner, if loaded, keeps running).
        Raises 400 for an invalid name, 404 ``model 'x' not found``."""
        key = key_of(name)
        with self._lock:
            if self._models.pop(key, None) is None:
                raise ApiError(404, f"model '{name}' not found")
