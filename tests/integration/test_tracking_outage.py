"""A training loop keeps its pace through a database outage; every report lands later, in order.

The outage is made by a TCP proxy this test controls (the shared PostgreSQL
server is never touched): the tracker's engine talks to PostgreSQL through the
proxy, and cutting it closes every open connection and turns new ones away
until it is restored.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Any

import pytest

sa = pytest.importorskip("sqlalchemy", reason="progress tracking needs the db extra")

from sqlalchemy.orm import Session  # noqa: E402

from recoverly import CircuitBreaker  # noqa: E402
from recoverly._core.clock import SystemClock  # noqa: E402
from recoverly.training import (  # noqa: E402
    ModelRun,
    ProgressTracker,
    TrainingProgress,
    TrainingProgressHistory,
)
from recoverly.training.models import Base  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.realtime]

_log = logging.getLogger(__name__)


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to a server; cut() drops every connection and refuses new ones."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.up = threading.Event()
        self.up.set()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.refused = 0
        self.accepter = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self.accepter.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.up.is_set():
                self.refused += 1
                _drop(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=3)
            except OSError:
                _drop(client)
                continue
            server.settimeout(None)
            with self.lock:
                self.sockets += [client, server]
                for a, b in ((client, server), (server, client)):
                    t = threading.Thread(target=_pump, args=(a, b), daemon=True)
                    self.threads.append(t)
                    t.start()

    def cut(self) -> None:
        """Close every forwarded connection and refuse new ones."""
        self.up.clear()
        with self.lock:
            for s in self.sockets:
                _drop(s)
            self.sockets.clear()

    def restore(self) -> None:
        """Accept and forward connections again."""
        self.up.set()

    def close(self) -> None:
        """Stop the proxy and join its threads."""
        self.stopping.set()
        self.cut()
        self.accepter.join(5)
        self.listener.close()
        for t in self.threads:
            t.join(5)


def _drop(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv on it
    s.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        _drop(src)
        _drop(dst)


@pytest.fixture
def proxy(pg_url: str) -> Any:
    """A cuttable proxy in front of the test's PostgreSQL server."""
    url = sa.engine.make_url(pg_url)
    p = CuttableProxy(url.host or "127.0.0.1", url.port or 5432)
    yield p
    p.close()


STEPS = 400
CUT_AT, RESTORE_AT = 100, 300
WORK = 0.005  # seconds of fake training per step


def test_training_keeps_its_pace_through_an_outage_and_progress_lands_in_order(
    pg_url, pg_engine, proxy, tmp_path, record_property
):
    """No update() waits on the cut database; after it returns, every step is stored, in order."""
    Base.metadata.create_all(pg_engine)
    with Session(pg_engine) as db:
        run = ModelRun(name="outage", model_type="mlp", config={})
        db.add(run)
        db.commit()
        run_id = run.id
    through_proxy = sa.engine.make_url(pg_url).set(host="127.0.0.1", port=proxy.port)
    engine = sa.create_engine(through_proxy, connect_args={"connect_timeout": 2})
    clock = SystemClock()
    breaker = CircuitBreaker(failure_threshold=2, recovery_timeout=0.3, clock=clock)
    tracker = ProgressTracker(
        engine,
        run_id,
        tmp_path / "progress.journal",
        total_steps=STEPS,
        interval=0.05,
        breaker=breaker,
        clock=clock,
    )
    latencies: list[float] = []
    pending_at_restore = 0
    try:
        assert tracker.flush(timeout=10)  # connected once before the outage
        started = time.perf_counter()
        for step in range(1, STEPS + 1):
            if step == CUT_AT:
                proxy.cut()
            if step == RESTORE_AT:
                pending_at_restore = tracker.statistics().pending
                proxy.restore()
            time.sleep(WORK)  # the "training"
            t0 = time.perf_counter()
            tracker.update(step // 100, step, {"loss": 1.0 / step, "step_sq": step * step})
            latencies.append(time.perf_counter() - t0)
        loop_seconds = time.perf_counter() - started
        tracker.update(STEPS // 100, STEPS, {"loss": 1.0 / STEPS}, status="completed")
        delivered = tracker.close(timeout=30)
    finally:
        tracker.close(timeout=1)
        engine.dispose()

    stats = tracker.statistics()
    record_property("max_update_ms", round(max(latencies) * 1000, 3))
    record_property("loop_seconds", round(loop_seconds, 3))
    record_property("pending_at_restore", pending_at_restore)
    _log.info(
        "outage: max update() %.3f ms, loop %.2f s for %d steps (%.2f s of work), "
        "%d records pending at restore, %d failed sends, %d rejected by the breaker, "
        "%d connections refused by the proxy",
        max(latencies) * 1000,
        loop_seconds,
        STEPS,
        STEPS * WORK,
        pending_at_restore,
        stats.failed_sends,
        stats.rejected_sends,
        proxy.refused,
    )
    assert len(latencies) == STEPS  # every step ran
    assert max(latencies) < 0.5  # no update() waited on the database
    assert loop_seconds < STEPS * WORK * 3 + 1.0  # the outage did not stretch the loop
    assert stats.failed_sends >= 1  # the sender did meet the outage...
    assert stats.rejected_sends >= 1  # ...and the breaker spared the dead database
    assert pending_at_restore >= (RESTORE_AT - CUT_AT) * 0.9
    assert delivered
    assert (stats.pending, stats.dropped, stats.delivered) == (0, 0, STEPS + 1)

    with Session(pg_engine) as db:
        rows = db.execute(
            sa.select(TrainingProgressHistory.step, TrainingProgressHistory.metrics)
            .where(TrainingProgressHistory.model_run_id == run_id)
            .order_by(TrainingProgressHistory.id)
        ).all()
        progress = db.scalars(
            sa.select(TrainingProgress).where(TrainingProgress.model_run_id == run_id)
        ).one()
    assert [step for step, _ in rows] == list(range(1, STEPS + 1))  # all there, written in order
    assert all(metrics["step_sq"] == step * step for step, metrics in rows[:-1])
    assert (progress.step, progress.status, progress.progress_percentage) == (
        STEPS,
        "completed",
        100.0,
    )
