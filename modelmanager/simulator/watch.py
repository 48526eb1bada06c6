"""Noticing at once that a client went away, as Go's HTTP server cancels a request's context.

One thread watches the sockets of requests that are waiting or working (queued, loading,
waiting for a slot or the gate, generating). When a client closes its connection the
socket turns readable with nothing to read; the watcher then marks that request's
:class:`Watch` gone and wakes everyone waiting on the simulator's condition variable, so
the work stops within milliseconds instead of running to its end.

Only the watcher thread touches its selector; other threads queue (un)registrations and
wake it through a socket pair, so sockets never race with ``select``.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Callable

GONE, STOPPED = "gone", "stopped"


class ClientGone(Exception):
    """The client closed its connection; stop working for it."""


class ShuttingDown(Exception):
    """The simulator is stopping."""


class Watch:
    """One request's connection under watch. ``event`` is set once the client is gone or
    the simulator stops (``reason`` says which), so a sleep on it wakes at once."""

    __slots__ = ("conn", "event", "reason")

    def __init__(self, conn: socket.socket | None) -> None:
        self.conn = conn
        self.event = threading.Event()
        self.reason = ""

    @property
    def gone(self) -> bool:
        """True once the client closed its connection."""
        return self.reason == GONE

    def end(self, reason: str) -> None:
        """Mark the request gone or stopped (the first reason wins) and wake its sleeper."""
        if not self.reason:
            self.reason = reason
        self.event.set()

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``; raise :class:`ClientGone` or :class:`ShuttingDown` at once
        when the request ends that way (also when it already has)."""
        if self.event.wait(max(0.0, seconds)):
            raise ClientGone if self.gone else ShuttingDown


#: A request that nobody watches (a control, a fault): never gone, never stopped.
UNWATCHED = Watch(None)


class DisconnectWatcher:
    """The watcher thread. ``on_gone`` runs (in the watcher thread) after a request was
    marked gone; the simulator passes a function that notifies its condition variable."""

    def __init__(self, on_gone: Callable[[], None]) -> None:
        self._on_gone = on_gone
        self._lock = threading.Lock()
        self._ops: list[tuple[bool, Watch]] = []
        self._active: set[Watch] = set()
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="fake-ollama-watch", daemon=True)

    def start(self) -> None:
        """Start the watcher thread."""
        self._thread.start()

    def stop(self) -> None:
        """End every watched request as stopped, stop the thread and join it. Idempotent."""
        with self._lock:
            self._stopping = True
            for watch in self._active:
                watch.end(STOPPED)
        self._wake()
        if self._thread.is_alive():
            self._thread.join()
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    def watch(self, conn: socket.socket) -> Watch:
        """Start watching ``conn`` for the request being served on it."""
        watch = Watch(conn)
        with self._lock:
            if self._stopping:
                watch.end(STOPPED)
                return watch
            self._active.add(watch)
            self._ops.append((True, watch))
        self._wake()
        return watch

    def unwatch(self, watch: Watch) -> None:
        """Stop watching (the request is answered); call before the connection is reused."""
        with self._lock:
            if watch not in self._active:
                return
            self._active.discard(watch)
            if self._stopping:
                return
            self._ops.append((False, watch))
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
            self._wake_w.send(b"x")

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            while True:
                with self._lock:
                    if self._stopping:
                        return
                    ops, self._ops = self._ops, []
                for add, watch in ops:
                    self._apply(selector, add, watch)
                for key, _ in selector.select():
                    if key.data is None:
                        with contextlib.suppress(OSError):
                            while self._wake_r.recv(4096):
                                pass
                    else:
                        self._check(selector, key.data)
        finally:
            selector.close()

    @staticmethod
    def _apply(selector: selectors.BaseSelector, add: bool, watch: Watch) -> None:
        conn = watch.conn
        assert conn is not None
        if add:
            with contextlib.suppress(KeyError, ValueError, OSError):
                selector.register(conn, selectors.EVENT_READ, watch)
            return
        with contextlib.suppress(KeyError, ValueError, OSError):
            if selector.get_key(conn).data is watch:
                selector.unregister(conn)

    def _check(self, selector: selectors.BaseSelector, watch: Watch) -> None:
        """The watched socket is readable: the client closed it, or sent more bytes."""
        conn = watch.conn
        assert conn is not None
        try:
            gone = conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return
        except OSError:
            gone = True
        # Either way stop watching: data the client sent early cannot be peeked past.
        with contextlib.suppress(KeyError, ValueError, OSError):
            selector.unregister(conn)
        if gone:
            with self._lock:
                active = watch in self._active
            if active:
                watch.end(GONE)
                self._on_gone()
