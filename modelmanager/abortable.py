"""Requests that another thread can abort, so that Ollama stops the work at once.

Ollama stops generating when its client goes away (the request's context is cancelled)
and frees the runner slot. ``requests`` has no way to abort a call in flight from another
thread, so the Ollama client's session uses :class:`AbortableAdapter`: its connections
register their socket with the :class:`Call` the current thread is making, and
:meth:`Call.abort` shuts that socket down. The blocked read in the calling thread then
fails at once, whether it waits for the answer's first byte or is in the middle of a
stream, and Ollama sees the connection close.

Thread safety: :meth:`Call.abort` may be called from any thread, any number of times,
before, during or after the call; a call aborted before it connects is shut down as soon
as its socket exists.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_current = threading.local()


class Call:
    """A handle on one request in flight; :meth:`abort` ends it from another thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: Any = None
        self.aborted = False
        self.release = False  # aborted because its backend went away: run it elsewhere
        self.expired = False  # aborted first because it was silent too long: a timeout

    def abort(self, *, release: bool = False, expired: bool = False) -> None:
        """Close the request's connection now (or as soon as it opens). Idempotent.
        ``release``: the job should go back to the queue (its backend is gone), not end.
        ``expired``: the request timed out (:mod:`modelmanager.silence`); it counts only
        when it is the first abort, so a cancel that came first stays a cancel."""
        with self._lock:
            self.expired = self.expired or (expired and not self.aborted)
            self.aborted = True
            self.release = self.release or release
            conn = self._conn
        _shut(conn)

    def _attach(self, conn: Any) -> None:
        with self._lock:
            self._conn = conn
            aborted = self.aborted
        if aborted:
            _shut(conn)


def _shut(conn: Any) -> None:
    sock = getattr(conn, "sock", None)
    if sock is None:
        return
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


@contextmanager
def calling(call: Call | None) -> Iterator[None]:
    """Make ``call`` the current thread's call while the block sends its request."""
    previous = getattr(_current, "call", None)
    _current.call = call
    try:
        yield
    finally:
        _current.call = previous


def _register(conn: Any) -> None:
    call: Call | None = getattr(_current, "call", None)
    if call is not None:
        call._attach(conn)


class _TrackedHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _register(self)  # a call aborted while this connected is shut at once


class _TrackedHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _register(self)


class _TrackedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)
        _register(conn)  # a pooled connection is already open
        return conn


class _TrackedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)
        _register(conn)
        return conn


class AbortableAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose connections can be shut by :meth:`Call.abort`."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _TrackedHTTPPool,
            "https": _TrackedHTTPSPool,
        }
