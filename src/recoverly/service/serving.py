"""Run the app under uvicorn on a daemon thread (the demo, the benchmark and the browser test).

.. versionadded:: 0.2
"""

from __future__ import annotations

import signal
import socket
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any

import uvicorn

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["BackgroundServer"]


class BackgroundServer:
    """Serve an ASGI app with uvicorn on ``127.0.0.1`` from a daemon thread.

    Args:
        app: The ASGI application.
        host: Address to bind.
        port: Port to bind (``0``: a free one; see :attr:`url`).
        log_level: uvicorn's log level.

    .. versionadded:: 0.2
    """

    def __init__(
        self, app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
    ) -> None:
        # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only
        # when the listening socket says TCP; without it every response waits ~40 ms for
        # a delayed ACK (Nagle's algorithm).
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        config = uvicorn.Config(app, log_level=log_level, lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run,
            kwargs={"sockets": [self._socket]},
            name="recoverly-uvicorn",
            daemon=True,
        )

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:8000``."""
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self, timeout: float = 20.0) -> Self:
        """Start serving and wait until uvicorn has started.

        Raises:
            RuntimeError: uvicorn did not start within ``timeout`` seconds.
        """
        self._thread.start()
        waited = 0.0
        while not self.server.started:
            if not self._thread.is_alive() or waited > timeout:
                msg = f"uvicorn did not start on {self.url}"
                raise RuntimeError(msg)
            self._thread.join(0.02)  # a real-time wait, whatever the default clock is
            waited += 0.02
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """Ask uvicorn to exit (running the app's shutdown) and wait for it."""
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._socket.close()

    def wait(self) -> None:
        """Block until the server exits; SIGINT (Ctrl-C) or SIGTERM stops it cleanly."""
        stop = threading.Event()
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: stop.set())
        try:
            while self._thread.is_alive() and not stop.is_set():
                stop.wait(0.2)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
