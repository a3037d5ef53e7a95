"""``recoverly demo``: train and predict under injected faults, and show the service recover.

The demo starts the service on its embedded defaults (a SQLite file, the
in-process worker, breaker state in memory) under uvicorn, plus a small
external predictor on loopback. Then:

1. **Training under faults.** A fault-free reference run of the same config is
   fitted first (no database, no checkpoints). The same config is then queued
   through ``POST /train`` while the database loses connections, batch loads
   fail and the worker is killed twice mid-training; the run resumes from its
   checkpoints each time.
2. **Predictions under an outage.** ``POST /predict`` is called while the
   external predictor answers, then times out, then is down, then recovers:
   the breaker opens, the locally trained model answers, and the breaker
   closes again.

Every fault is injected by a :mod:`recoverly.chaos` part, seeded or scheduled
(see :mod:`recoverly.service.faults` and
:mod:`recoverly.service.predictor_server`), and switched on only for its
phase: the reference fit and the predictor's healthy phases inject nothing.

The report counts the faults per kind from the parts' statistics and from the
:class:`~recoverly.events.ChaosInjected` events (per phase too), the retries,
the breaker transitions, the checkpoint resumes, and compares the trained
model's weight hash with the reference's.

.. versionadded:: 0.2
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from recoverly import events
from recoverly.chaos import Fault, Latency, Outcome
from recoverly.service.app import create_app
from recoverly.service.demo_display import Display
from recoverly.service.faults import DATA, DB, KILL, FaultInjector, FaultPlan
from recoverly.service.jobs import fit, total_steps
from recoverly.service.predictor import BREAKER_NAME, NO_DELAY
from recoverly.service.predictor_server import PredictorServer
from recoverly.service.schemas import TrainConfig
from recoverly.service.serving import BackgroundServer
from recoverly.service.settings import Settings

__all__ = ["DemoReport", "run_demo"]

TIMEOUT = "predictor_timed_out"
_DONE = 100.0
#: Answers in a row from a CLOSED breaker that end the last phase.
_CLOSED_STREAK = 5
DOWN = "predictor_down"


@dataclass
class DemoReport:
    """What the demo saw; ``all_recovered`` is the verdict.

    .. versionadded:: 0.2
    """

    faults: dict[str, dict[str, Any]] = field(default_factory=dict)
    injections_by_phase: dict[str, dict[str, int]] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    retries_gave_up: dict[str, int] = field(default_factory=dict)
    breaker_transitions: list[str] = field(default_factory=list)
    checkpoint_resumes: int = 0
    worker_restarts: int = 0
    run_status: str = ""
    reference_sha256: str = ""
    final_sha256: str | None = None
    model_equal: bool = False
    accuracy: float | None = None
    predictions: dict[str, int] = field(default_factory=dict)
    api_errors: int = 0
    breaker_final: str = ""
    all_recovered: bool = False
    seconds: float = 0.0
    url: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready data."""
        return asdict(self)


#: The demo's phases, in order (the first covers the reference fit and the start-up).
PHASES = (
    "reference",
    "training",
    "predictor ok",
    "predictor slow",
    "predictor down",
    "predictor recovered",
)


class _Recorder:
    """Collects the events the report needs."""

    def __init__(self) -> None:
        self.retries: Counter[str] = Counter()
        self.gave_up: Counter[str] = Counter()
        self.transitions: list[str] = []
        self.phase = PHASES[0]
        self.injections: dict[str, Counter[str]] = {phase: Counter() for phase in PHASES}
        self.started = time.monotonic()

    def injected(self, name: str) -> int:
        """Return the ChaosInjected events of part ``name`` in all phases."""
        return sum(counts[name] for counts in self.injections.values())

    def __call__(self, event: events.Event) -> None:
        if isinstance(event, events.ChaosInjected):
            self.injections[self.phase][event.name] += 1
        elif isinstance(event, events.RetryScheduled):
            self.retries[event.name] += 1
        elif isinstance(event, events.RetryGaveUp):
            self.gave_up[event.name] += 1
        elif isinstance(event, events.CircuitStateChanged) and event.name == BREAKER_NAME:
            at = time.monotonic() - self.started
            self.transitions.append(f"{at:6.2f}s {event.previous.name} -> {event.state.name}")


def _configs(fast: bool) -> tuple[TrainConfig, FaultPlan, float]:
    if fast:
        config = TrainConfig(
            name="demo", n_samples=1000, epochs=4, batch_size=32, seed=7, checkpoint_every=10
        )
        plan = FaultPlan(
            db_drop_rate=0.1,
            db_drop_max=3,
            data_fail_rate=0.06,
            data_fail_max=3,
            kill_after_steps=(37, 71),
            seed=7,
        )
        return config, plan, 0.0
    config = TrainConfig(
        name="demo", n_samples=4000, epochs=8, batch_size=32, seed=7, checkpoint_every=50
    )
    plan = FaultPlan(
        db_drop_rate=0.09,
        db_drop_max=6,
        data_fail_rate=0.016,
        data_fail_max=8,
        kill_after_steps=(170, 530),
        seed=7,
    )
    return config, plan, 0.012


class _Demo:
    def __init__(
        self, fast: bool, data_dir: Path, display: Display, port: int, recorder: _Recorder
    ) -> None:
        self.fast = fast
        self.display = display
        self.recorder = recorder
        self.config, plan, step_delay = _configs(fast)
        self.faults = FaultInjector(plan, enabled=False)
        self.reference = fit(self.config)
        self.predictor = PredictorServer(self._external_predict, slow_seconds=2.0)
        self.settings = Settings(
            data_dir=data_dir,
            predictor_url=self.predictor.url,
            predictor_timeout=0.2,
            predictor_attempts=2,
            breaker_failure_threshold=3,
            breaker_recovery_timeout=0.3 if fast else 1.5,
            training_step_delay=step_delay,
        )
        self.app = create_app(self.settings, faults=self.faults)
        try:
            self.server = BackgroundServer(self.app, port=port)
        except OSError:  # the port is taken: any free one will do
            self.server = BackgroundServer(self.app)
        self.client = httpx.Client(
            base_url=self.server.url,
            timeout=30,
            transport=httpx.HTTPTransport(socket_options=NO_DELAY),
        )
        self.report = DemoReport(
            url=self.server.url, reference_sha256=self.reference.model.weights_hash()
        )
        self.api_errors = 0

    def _external_predict(self, rows: Any) -> list[int]:
        import numpy as np  # noqa: PLC0415 - numpy is loaded by now anyway

        return self.reference.model.predict(np.asarray(rows, dtype=np.float64))

    def _get(self, path: str) -> dict[str, Any]:
        response = self.client.get(path)
        if response.status_code >= 500:  # noqa: PLR2004 - server errors are what we count
            self.api_errors += 1
            self.display.note(f"GET {path} answered {response.status_code}: {response.text}")
        body: dict[str, Any] = response.json()
        return body

    # ------------------------------------------------------------ phase 1
    def train(self) -> dict[str, Any]:
        self.recorder.phase = "training"
        self.faults.enable()  # the chaos parts, in every thread: worker, tracker, API
        response = self.client.post("/train", json=self.config.model_dump())
        response.raise_for_status()
        run_id = response.json()["id"]
        total = total_steps(self.config)
        record: dict[str, Any] = {}
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            record = self._get(f"/models/{run_id}")
            progress = record.get("progress") or {}
            self.display.training(record, progress, total, self.faults.counts())
            if record.get("status") in ("completed", "failed"):
                break
            time.sleep(0.1)
        self.faults.disable()
        return record

    # ------------------------------------------------------------ phase 2
    def predict(self) -> None:
        width = self.reference.model.weights.shape[0]
        sources: Counter[str] = Counter()
        # Long enough for the breaker to open, probe and open again in each failing phase.
        seconds = 1.0 if self.fast else 4.0
        n = 0
        for mode, phase in zip(("ok", "slow", "down", "ok"), PHASES[2:], strict=True):
            self.recorder.phase = phase
            self.predictor.set_mode(mode)  # switches the predictor's chaos parts
            ends = time.monotonic() + seconds
            closed_streak = 0
            while time.monotonic() < ends or (
                mode == "ok" and n > 0 and closed_streak < _CLOSED_STREAK
            ):
                answer = self._one_prediction(n, width, mode, sources)
                n += 1
                closed_streak = closed_streak + 1 if answer.get("breaker") == "CLOSED" else 0
                if time.monotonic() > ends + 15:
                    break
                time.sleep(0.1)
        self.report.predictions = dict(sources)

    def _one_prediction(
        self, n: int, width: int, mode: str, sources: Counter[str]
    ) -> dict[str, Any]:
        features = [[((n * 7 + j * 3) % 11 - 5) / 2.5 for j in range(width)]]
        response = self.client.post("/predict", json={"features": features})
        if response.status_code != httpx.codes.OK:
            self.api_errors += 1
            self.display.note(f"POST /predict answered {response.status_code}: {response.text}")
            sources["error"] += 1
            return {}
        answer: dict[str, Any] = response.json()
        sources[answer["source"]] += 1
        self.display.prediction(n, mode, answer)
        return answer

    # ------------------------------------------------------------ report
    def finish(self, record: dict[str, Any], recorder: _Recorder, started: float) -> DemoReport:
        report = self.report
        counts = self.faults.counts()
        health = self._get("/health")
        worker = health.get("broker", {})
        report.retries = dict(recorder.retries)
        report.retries_gave_up = dict(recorder.gave_up)
        report.breaker_transitions = recorder.transitions
        report.checkpoint_resumes = int(record.get("resumes") or 0)
        report.worker_restarts = int(worker.get("restarts") or 0)
        report.run_status = str(record.get("status"))
        report.final_sha256 = record.get("weights_sha256")
        report.model_equal = report.final_sha256 == report.reference_sha256
        report.accuracy = (record.get("metrics") or {}).get("accuracy")
        report.breaker_final = str(health.get("breakers", {}).get(BREAKER_NAME, {}).get("state"))
        report.api_errors = self.api_errors
        completed = report.run_status == "completed"
        progress = record.get("progress") or {}
        answered = self.api_errors == 0 and report.breaker_final == "CLOSED"
        recovered = {
            DB: completed and progress.get("percent") == _DONE,
            DATA: completed and recorder.gave_up.get("load_batch", 0) == 0,
            KILL: completed
            and report.checkpoint_resumes >= counts.get(KILL, 0)
            and report.model_equal,
            TIMEOUT: answered,
            DOWN: answered,
        }
        parts: dict[str, Fault | Latency | Outcome] = {
            DB: self.faults.db,
            DATA: self.faults.data,
            KILL: self.faults.kill,
            TIMEOUT: self.predictor.slow,
            DOWN: self.predictor.down,
        }
        report.faults = {
            kind: _fault_row(part, recorder, recovered[kind]) for kind, part in parts.items()
        }
        report.injections_by_phase = {
            phase: dict(counts) for phase, counts in recorder.injections.items()
        }
        report.all_recovered = (
            report.model_equal
            and report.api_errors == 0
            and all(f["injected"] > 0 and f["recovered"] for f in report.faults.values())
        )
        report.seconds = round(time.monotonic() - started, 2)
        return report


def _fault_row(
    part: Fault | Latency | Outcome, recorder: _Recorder, recovered: bool
) -> dict[str, Any]:
    """One row of the report: the chaos part, its injections (counted and seen), the verdict."""
    stats = part.statistics()
    return {
        "injected": stats.injected,
        "events": recorder.injected(part.name or ""),
        "calls": stats.calls,
        # The part is switched off by now; show its settings without that.
        "chaos": part.describe_part().removesuffix(" enabled=False"),
        "recovered": recovered,
    }


def run_demo(
    *,
    fast: bool = False,
    serve: bool = False,
    data_dir: Path | None = None,
    display: Display | None = None,
    port: int = 0,
) -> DemoReport:
    """Run the demo; return its report (and, with ``serve``, keep serving until Ctrl-C).

    Args:
        fast: A short run (small dataset, no pause between steps).
        serve: Keep the service running after the report.
        data_dir: Where the database and checkpoints go (default: a new temporary directory).
        display: Where to show progress (default: a rich live display on stdout).
        port: Port to serve on (``0``, or a port in use: a free one).

    Returns:
        The :class:`DemoReport`.

    .. versionadded:: 0.2
    """
    started = time.monotonic()
    display = display or Display()
    owned = None
    if data_dir is None:
        owned = tempfile.TemporaryDirectory(prefix="recoverly-demo-")
        data_dir = Path(owned.name)
    recorder = _Recorder()
    events.subscribe(recorder)
    handler = display.capture_logs()
    try:
        demo = _Demo(fast, data_dir, display, port, recorder)
        with demo.predictor, demo.client:
            demo.server.start()
            try:
                with display.live():
                    display.phase("Training under injected faults", demo.server.url)
                    record = demo.train()
                    display.phase("Predictions while the external predictor fails", demo.server.url)
                    demo.predict()
                report = demo.finish(record, recorder, started)
                display.report(report)
                if serve:
                    display.serving(demo.server.url)
                    logging.getLogger("recoverly").removeHandler(handler)
                    demo.server.wait()
            finally:
                demo.server.stop()
    finally:
        events.unsubscribe(recorder)
        logging.getLogger("recoverly").removeHandler(handler)
        if owned is not None:
            owned.cleanup()
    return report
