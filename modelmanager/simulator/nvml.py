"""The simulated GPUs as NVML shows them: a fake-NVML state file kept in step.

``../shared/fake-nvml`` is a ``libnvidia-ml.so.1`` that reads a small ``key=value`` state
file; programs using NVML through it see the simulator's GPUs. Memory is in MiB, as NVML
counts it per process.

Several simulators may share one file, as several Ollamas pinned with
``CUDA_VISIBLE_DEVICES`` share one host whose NVML shows every GPU: each owns the devices
``first_index, first_index + 1, ...`` and rewrites only those devices' ``gpuI.*`` keys,
keeping every other line. The read-merge-write runs under an exclusive ``flock`` on a
lock file beside the state file (so it serialises simulators in other processes and in
this one alike); the new text then replaces the file atomically. ``device_count`` is the
highest device index in the file plus one (a device nobody wrote shows the library's
default, an idle 24 GiB GPU).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: The pid NVML lists for the simulated "other program" holding memory.
OTHER_PROGRAM_PID = 31337
#: The fake-NVML library knows at most this many devices.
MAX_DEVICES = 16
HEADER = "# written by the Model Manager Ollama simulator"
_UUID_PREFIX = "GPU-5a1f0c3e-7d2b-4c8e-9f61-0a0b0c0d"


def gpu_uuid(nvml_index: int) -> str:
    """The UUID of NVML device ``nvml_index`` (device 0 keeps the simulator's old UUID)."""
    return f"{_UUID_PREFIX}{0x0E0F + nvml_index:04x}"


@dataclass(frozen=True)
class GpuSnapshot:
    """What NVML should report now for one GPU: sizes in MiB, one ``(pid, MiB)`` per
    runner process holding memory there."""

    total_mb: int
    used_mb: int
    other_mb: int
    runner_procs: tuple[tuple[int, int], ...]
    busy: bool


def device_of(line: str) -> int | None:
    """The device index of a ``gpuI.key=value`` line, or None for any other line."""
    key = line.split("=", 1)[0].strip()
    head, dot, _ = key.partition(".")
    if not dot or not head.startswith("gpu") or not head[3:].isdigit():
        return None
    return int(head[3:])


def merge(current: str, own: dict[int, list[str]]) -> str:
    """The state file's text: ``current`` with the devices in ``own`` replaced by its
    lines. Other devices' lines and other keys are kept; ``device_count`` is recomputed."""
    kept: dict[int, list[str]] = {}
    other: list[str] = []
    for line in current.splitlines():
        stripped = line.strip()
        if not stripped or stripped == HEADER or stripped.startswith("device_count="):
            continue
        device = device_of(stripped)
        if device is None:
            other.append(stripped)
        elif device not in own:
            kept.setdefault(device, []).append(stripped)
    devices = {**kept, **own}
    lines = [HEADER, f"device_count={max(devices) + 1 if devices else 0}", *other]
    for index in sorted(devices):
        lines += devices[index]
    return "\n".join(lines) + "\n"


class NvmlStateFile:
    """Writes the :class:`GpuSnapshot`\\ s of one simulator's GPUs (NVML devices
    ``first_index`` onward) into a fake-NVML state file that other simulators may share;
    only when this simulator's part changes. Not thread-safe: the simulator calls it with
    its lock held. Across simulators and processes the lock file serialises writers."""

    def __init__(self, path: Path, gpu_name: str, first_index: int = 0) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self.gpu_name = gpu_name
        self.first_index = first_index
        self.error: str | None = None
        self._last: dict[int, list[str]] | None = None

    def device_lines(self, nvml_index: int, snap: GpuSnapshot) -> list[str]:
        """The ``gpuI.*`` lines of NVML device ``nvml_index``."""
        procs = [f"{pid}:{mb}" for pid, mb in snap.runner_procs]
        if snap.other_mb:
            procs.insert(0, f"{OTHER_PROGRAM_PID}:{snap.other_mb}")
        loaded = len(snap.runner_procs)
        key = f"gpu{nvml_index}"
        return [
            f"{key}.name={self.gpu_name}",
            f"{key}.uuid={gpu_uuid(nvml_index)}",
            f"{key}.total_mb={snap.total_mb}",
            f"{key}.used_mb={snap.used_mb}",
            f"{key}.util={90 if snap.busy else 0}",
            f"{key}.mem_util={45 if snap.busy else (2 if loaded else 0)}",
            f"{key}.temp={72 if snap.busy else 41}",
            f"{key}.power_mw={285000 if snap.busy else 28000 + 4000 * loaded}",
            f"{key}.procs={','.join(procs[:32])}",
        ]

    def render(self, snaps: Sequence[GpuSnapshot], current: str = "") -> str:
        """The state file's text for ``snaps`` merged into ``current``."""
        return merge(current, self._own(snaps))

    def write(self, snaps: Sequence[GpuSnapshot]) -> None:
        """Merge this simulator's devices into the file if they changed; an error is kept
        in :attr:`error`."""
        own = self._own(snaps)
        if own == self._last:
            return
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    current = self.path.read_text()
                except FileNotFoundError:
                    current = ""
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                tmp.write_text(merge(current, own))
                os.replace(tmp, self.path)
            finally:
                os.close(fd)  # releases the lock
        except OSError as exc:
            self.error = str(exc)
            return
        self._last = own

    def _own(self, snaps: Sequence[GpuSnapshot]) -> dict[int, list[str]]:
        return {
            self.first_index + i: self.device_lines(self.first_index + i, snap)
            for i, snap in enumerate(snaps)
        }
