"""Log setup: ``[HH:MM:SS.mmm] [COMPONENT] message`` to a file and to stderr.

Components log through ``get_logger("ENGINE")`` etc. Every record passes through a
formatter that escapes CR, LF and other control characters, so nothing user-supplied can
forge a log line (CWE-117).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

COMPONENTS = ("SYSTEM", "API", "QUEUE", "SCHEDULER", "ENGINE", "MONITOR", "REGISTRY", "DISK")
_ROOT = "modelmanager"
_CONTROL = {i: f"\\x{i:02x}" for i in range(32)} | {10: "\\n", 13: "\\r", 9: "\\t", 127: "\\x7f"}


def get_logger(component: str) -> logging.Logger:
    """The logger for one component (SYSTEM, API, QUEUE, ...)."""
    return logging.getLogger(f"{_ROOT}.{component}")


def escape(text: str) -> str:
    """Make any string safe for a one-line log record."""
    return text.translate(_CONTROL)


class LineFormatter(logging.Formatter):
    """``[HH:MM:SS.mmm] [COMPONENT] message``, one physical line per record."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.localtime(record.created)
        stamp = time.strftime("%H:%M:%S", t) + f".{int(record.msecs):03d}"
        component = record.name.rsplit(".", 1)[-1] if record.name.startswith(_ROOT) else "SYSTEM"
        message = record.getMessage()
        if record.exc_info:
            message += " | " + self.formatException(record.exc_info)
        return f"[{stamp}] [{component}] {escape(message)}"


def setup_logging(log_file: str | Path | None, level: int = logging.INFO) -> None:
    """Send every component's records to ``log_file`` (if given) and stderr. Idempotent."""
    root = logging.getLogger(_ROOT)
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    root.propagate = False
    formatter = LineFormatter()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
