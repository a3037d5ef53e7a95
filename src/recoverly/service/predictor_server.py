"""A tiny external predictor on loopback, whose health the demo and the tests control.

It answers ``POST /predict`` with ``{"predictions": [...], "model": "external"}``
computed by a function it is given. Its :attr:`PredictorServer.mode` makes it
misbehave on demand, through two :mod:`recoverly.chaos` parts around the
function that computes the answer::

    answer = down(slow(predict))
    # slow = chaos.latency(1.0, slow_seconds, name="predictor_slow", enabled=False)
    # down = chaos.outcome(1.0, (503, {...}), name="predictor_down", enabled=False)

- ``"ok"``: both parts off: answers at once;
- ``"slow"``: the latency part on: waits ``slow_seconds`` before answering
  (clients time out);
- ``"down"``: the outcome part on: answers ``503`` at once (the service is
  unavailable) instead of computing anything.

Each slow or refused request is a :class:`~recoverly.events.ChaosInjected`
event and counts in the part's ``statistics()``. The slow wait ends early when
the server stops.

It runs the standard library's threading HTTP server in a daemon thread.

.. versionadded:: 0.2
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any

from recoverly import chaos
from recoverly._core.clock import SystemClock

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["DOWN", "MODES", "SLOW", "PredictorServer"]

#: The modes a :class:`PredictorServer` can be in.
MODES = ("ok", "slow", "down")
#: Names of the predictor's chaos parts (and of their ChaosInjected events).
SLOW = "predictor_slow"
DOWN = "predictor_down"

PredictFn = Callable[[Sequence[Sequence[float]]], list[int]]
Answer = tuple[int, dict[str, Any]]
_MAX_BODY = 1 << 20
_UNAVAILABLE: Answer = (503, {"detail": "predictor unavailable"})
_SYSTEM = SystemClock()


class _StoppableClock:
    """The system clock, except that a sleep ends at once when the server stops."""

    __slots__ = ("_stopping",)

    def __init__(self, stopping: threading.Event) -> None:
        self._stopping = stopping

    def monotonic(self) -> float:
        return _SYSTEM.monotonic()

    def wall(self) -> float:
        return _SYSTEM.wall()

    def sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    async def asleep(self, seconds: float) -> None:  # the handler is synchronous: unused
        await _SYSTEM.asleep(seconds)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        """Stay quiet: the demo prints its own report."""

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up waiting (a slow answer): nobody to tell
            self.close_connection = True

    def do_POST(self) -> None:
        """Answer ``/predict`` according to the server's mode."""
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(min(length, _MAX_BODY))
        if self.path != "/predict":
            self._send(404, {"detail": "not found"})
            return
        owner._count(owner.mode)
        answer = owner._answer(raw)
        if answer is not None:
            self._send(*answer)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: PredictorServer


class PredictorServer:
    """Serve predictions on ``127.0.0.1`` from a daemon thread; ``mode`` makes it fail.

    Attributes:
        slow: The ``"slow"`` mode's :func:`recoverly.chaos.latency` part (rate 1).
        down: The ``"down"`` mode's :func:`recoverly.chaos.outcome` part (rate 1,
            a ``503`` answer).
        requests: Requests received, by the mode the server was in.

    Args:
        predict_fn: Turns a list of feature rows into a list of class labels.
        port: Port to bind (``0``: a free one; see :attr:`url`).
        slow_seconds: How long a ``"slow"`` answer takes.

    .. versionadded:: 0.2
    """

    def __init__(self, predict_fn: PredictFn, *, port: int = 0, slow_seconds: float = 5.0) -> None:
        self.predict_fn = predict_fn
        self.mode = "ok"
        self.requests: dict[str, int] = dict.fromkeys(MODES, 0)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.slow = chaos.latency(
            1.0, slow_seconds, name=SLOW, enabled=False, clock=_StoppableClock(self._stopping)
        )
        self.down = chaos.outcome(1.0, _UNAVAILABLE, name=DOWN, enabled=False)
        self._answer: Callable[[bytes], Answer | None] = self.down(self.slow(self._predict))
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="recoverly-predictor", daemon=True
        )

    @property
    def slow_seconds(self) -> float:
        """How long a ``"slow"`` answer takes (the latency part's ``seconds``)."""
        return self.slow.seconds

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:43817``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def set_mode(self, mode: str) -> None:
        """Switch to ``"ok"``, ``"slow"`` or ``"down"`` (switches the chaos parts).

        Raises:
            ValueError: ``mode`` is not one of :data:`MODES`.
        """
        if mode not in MODES:
            msg = f"mode must be one of {MODES}, got {mode!r}"
            raise ValueError(msg)
        self.mode = mode
        self.slow.enabled = mode == "slow"
        self.down.enabled = mode == "down"

    def _predict(self, raw: bytes) -> Answer | None:
        """Compute the answer to one request (``None``: the server stopped meanwhile)."""
        if self._stopping.is_set():  # a slow answer cut short: nobody waits for it
            return None
        try:
            rows = json.loads(raw)["features"]
            predictions = self.predict_fn(rows)
        except Exception as exc:  # a bad request to the predictor
            return 400, {"detail": f"{type(exc).__name__}: {exc}"}
        return 200, {"predictions": predictions, "model": "external"}

    def _count(self, mode: str) -> None:
        with self._lock:
            self.requests[mode] += 1

    def start(self) -> Self:
        """Start serving; returns the server."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port (slow answers in flight end at once)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<PredictorServer {self.url} mode={self.mode}>"
