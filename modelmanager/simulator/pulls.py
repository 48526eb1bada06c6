"""Pulls and the models on disk: what ``/api/pull``, ``/api/copy`` and ``/api/delete``
change, and the controls tests use to hold, slow or strip pulls.

A mixin of :class:`~.fake.FakeOllama` (it uses its condition variable ``_cv``, its
``_stopping`` flag, its installed ``models`` and its ``models_dir``). A pull that stops
part way (its client went away, or a ``partial`` fault) leaves the bytes it had, per
layer, and the next pull of the model resumes from there, as Ollama resumes its
``-partial`` files (``server/download.go``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from .catalog import ModelSpec
from .disk import ModelsDir
from .residency import POLL_S
from .watch import ClientGone, ShuttingDown, Watch

if TYPE_CHECKING:
    from .registry import InstalledModels


class Pulls:
    """The pull gate, pull progress on or off, partial layers, and the models directory.
    Thread-safe through the simulator's condition variable."""

    _cv: threading.Condition
    _stopping: bool
    models: InstalledModels
    models_dir: ModelsDir | None

    def _init_pulls(self) -> None:
        self._pull_gate = False  # pulls wait after their first progress line
        self._pull_counts = True  # pull progress carries byte counts
        self._pulls_held = 0
        self._partial: dict[tuple[str, str], int] = {}  # (model, layer) -> bytes kept

    def set_pull(self, *, closed: bool | None = None, progress: bool | None = None) -> None:
        """``closed``: hold every pull after the first progress line of its first layer
        to download until the gate opens again (so a download stays under way). ``progress``
        False: pulls stream status lines only, without ``digest``/``total``/``completed``
        (an older Ollama). None leaves a setting as it is."""
        with self._cv:
            if closed is not None:
                self._pull_gate = closed
            if progress is not None:
                self._pull_counts = progress
            self._cv.notify_all()

    def pull_progress(self) -> bool:
        with self._cv:
            return self._pull_counts

    def pulls_held(self) -> int:
        """How many pulls wait at the closed pull gate now."""
        with self._cv:
            return self._pulls_held

    def hold_pull(self, watch: Watch) -> None:
        """Wait while the pull gate is closed; raise when the client goes or we stop."""
        with self._cv:
            if not self._pull_gate:
                return
            self._pulls_held += 1
            self._cv.notify_all()
            try:
                while self._pull_gate:
                    if self._stopping:
                        raise ShuttingDown
                    if watch.gone:
                        raise ClientGone
                    self._cv.wait(POLL_S)
            finally:
                self._pulls_held -= 1
                self._cv.notify_all()

    def partial_bytes(self, spec: ModelSpec, layer: str) -> int:
        """Bytes of ``layer`` a stopped pull left (resumed by the next pull)."""
        with self._cv:
            return self._partial.get((spec.name, layer), 0)

    def keep_partial(self, spec: ModelSpec, layer: str, done: int) -> None:
        """A pull stopped with ``done`` bytes of ``layer``: keep them, as Ollama keeps its
        ``-partial`` file."""
        with self._cv:
            self._partial[(spec.name, layer)] = done
        if self.models_dir is not None:
            size = dict(spec.layers())[layer]
            self.models_dir.partial(spec, layer, size)

    def install(self, name: str, spec: ModelSpec) -> None:
        """A pull completed: ``name`` is installed (partial layers become whole)."""
        with self._cv:
            for layer, _ in spec.layers():
                self._partial.pop((spec.name, layer), None)
        self.models.install(name, spec)
        self.written(name, spec)

    def written(self, name: str, spec: ModelSpec) -> None:
        """Keep the models directory in step with a model installed or copied."""
        if self.models_dir is not None:
            stored = self.models.find(name)
            self.models_dir.install(stored.name if stored else name, spec)

    def delete(self, name: str) -> None:
        """``/api/delete``: forget ``name``; its blobs go unless another model uses them.
        Raises as :meth:`.registry.InstalledModels.delete`."""
        found = self.models.find(name)
        self.models.delete(name)
        if self.models_dir is not None and found is not None:
            used = {
                m.spec.layer_digest(layer)
                for m in self.models.listing()
                for layer, _ in m.spec.layers()
            }
            self.models_dir.remove(found.name, found.spec, used)
