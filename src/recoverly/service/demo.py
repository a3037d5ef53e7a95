"""``recoverly demo``: train and predict under injected faults, and show the service recover.

The demo starts the service on its embedded defaults (a SQLite file, the
process worker, breaker state in memory) under uvicorn, plus a small
external predictor on loopback. Then:

1. **Training under faults.** A fault-free reference run of the same config is
   fitted first (no database, no checkpoints). The same config is then queued
   through ``POST /train`` while the database loses connections, batch loads
   fail and the worker process training the run is killed twice with
   ``SIGKILL`` (once right after a step, once in the middle of writing a
   checkpoint); each time the service starts a new worker process, which
   resumes from the newest checkpoint.
2. **Predictions under an outage.** ``POST /predict`` is called while the
   external predictor answers, then times out, then is down, then recovers:
   the breaker opens, the locally trained model answers, and the breaker
   closes again.

Every fault is injected by a :mod:`recoverly.chaos` part, seeded or scheduled
(see :mod:`recoverly.service.faults` and
:mod:`recoverly.service.predictor_server`), and switched on only for its
phase: the reference fit and the predictor's healthy phases inject nothing.

The report counts the faults per kind from the parts' statistics (the worker
processes' included, as they reported them) and from the
:class:`~recoverly.events.ChaosInjected` events (per phase too; a worker
process's events are relayed to the service process), the retries, the
breaker transitions, the worker processes killed (pid, signal, exit code,
where the kill landed, which process resumed at which step), the checkpoint
resumes, and compares the trained model's weight hash with the reference's.

.. versionadded:: 0.2
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from recoverly import events
from recoverly.chaos import Fault, Latency, Outcome
from recoverly.service.app import create_app
from recoverly.service.demo_display import Display
from recoverly.service.demo_report import (
    PHASES,
    DemoReport,
    Recorder,
    death_line,
    fault_row,
    kills_of,
)
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
            # Step 37, then the 77th step run: step 70 (7 steps were redone), a checkpoint step.
            kill_after_steps=(37, 77),
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
        kill_after_steps=(170, 570),  # steps 170 and 550 (a checkpoint step)
        seed=7,
    )
    return config, plan, 0.012


class _Demo:
    def __init__(
        self, fast: bool, data_dir: Path, display: Display, port: int, recorder: Recorder
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
        shown = 0
        while time.monotonic() < deadline:
            record = self._get(f"/models/{run_id}")
            worker = self._get("/health").get("broker", {})
            deaths = [e for e in worker.get("exits", ()) if e["returncode"] != 0]
            for death in deaths[shown:]:
                self.display.note(death_line(death))
            shown = len(deaths)
            progress = record.get("progress") or {}
            info = dict(record, pid=worker.get("current_pid"), pid_step=worker.get("current_step"))
            self.display.training(info, progress, total, self.faults.counts())
            finished = record.get("status") in ("completed", "failed")
            if finished and worker.get("current_run") is None:
                break  # the worker process is gone and all it sent is counted
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
    def finish(self, record: dict[str, Any], recorder: Recorder, started: float) -> DemoReport:
        report = self.report
        counts = self.faults.counts()
        health = self._get("/health")
        worker = health.get("broker", {})
        report.retries = dict(recorder.retries)
        report.retries_gave_up = dict(recorder.gave_up)
        report.breaker_transitions = recorder.transitions
        report.checkpoint_resumes = int(record.get("resumes") or 0)
        report.worker_restarts = int(worker.get("restarts") or 0)
        lives = [e for e in worker.get("exits", ()) if e["run_id"] == record.get("id")]
        report.worker_pids = [life["pid"] for life in lives]
        report.worker_kills = kills_of(lives)
        killed = (
            len(report.worker_kills) == counts.get(KILL, 0)
            and len(set(report.worker_pids)) == len(lives)
            and all(
                k["signal"] == "SIGKILL" and k["killed_by_service"] and k["resumed_at_step"]
                for k in report.worker_kills
            )
        )
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
            and killed
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
        report.faults = {}
        for kind, part in parts.items():
            stats = self.faults.statistics(kind) if kind in (DB, DATA, KILL) else None
            report.faults[kind] = fault_row(part, recorder, recovered[kind], stats)
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
    recorder = Recorder()
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
