"""The service on Celery (RabbitMQ) and PostgreSQL: a worker killed mid-run, another resumes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("celery")
pytest.importorskip("sklearn")

from kombu import Connection
from service_support import service, wait_done, wait_for

from recoverly.service.jobs import fit
from recoverly.service.schemas import TrainConfig

AMQP_URL = os.environ.get("RECOVERLY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
CONFIG = {
    "name": "celery",
    "n_samples": 2000,
    "n_features": 4,
    "n_classes": 3,
    "epochs": 2,
    "batch_size": 32,
    "seed": 5,
    "checkpoint_every": 10,
}
STEP_DELAY = 0.03


@pytest.fixture
def amqp_queue():
    """A queue name of its own on the test RabbitMQ (deleted afterwards); skips when unreachable."""
    try:
        with Connection(AMQP_URL, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        pytest.skip(
            f"RabbitMQ at {AMQP_URL} is not reachable ({type(exc).__name__}); start it with "
            "../shared/services.sh or point RECOVERLY_TEST_AMQP_URL at a server"
        )
    queue = f"test-train-{uuid.uuid4().hex[:12]}"
    yield queue
    with Connection(AMQP_URL, connect_timeout=3) as conn:
        conn.default_channel.queue_delete(queue)


def start_worker(tmp_path, database_url, queue, n):
    """Start a solo-pool Celery worker for the service's training task (log in worker-N.log)."""
    env = {
        **os.environ,
        "RECOVERLY_BROKER_URL": AMQP_URL,
        "RECOVERLY_DATABASE_URL": database_url,
        "RECOVERLY_DATA_DIR": str(tmp_path),
        "RECOVERLY_CELERY_QUEUE": queue,
        "RECOVERLY_TRAINING_STEP_DELAY": str(STEP_DELAY),
    }
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "recoverly.service.celery_worker",
        "worker",
        "--pool=solo",
        "-Q",
        queue,
        # A name of its own: the remote-control queue is named after it, and other
        # workers may share the broker.
        "-n",
        f"{queue}-{n}@%h",
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
        "--loglevel=WARNING",
    ]
    with (tmp_path / f"worker-{n}.log").open("w") as log:
        return subprocess.Popen(  # noqa: S603 - fixed command
            command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )


@pytest.mark.realtime
@pytest.mark.integration
def test_worker_killed_mid_training_another_resumes_it(tmp_path, pg_url, amqp_queue):
    """train, progress, SIGKILL, redelivery, resume: the clean fit's model answers predictions."""
    workers = []
    try:
        with service(tmp_path, pg_url, broker_url=AMQP_URL, celery_queue=amqp_queue) as client:
            health = client.get("/health").json()
            assert health["broker"] == {"kind": "celery", "ok": True, "queue": amqp_queue}
            workers.append(start_worker(tmp_path, pg_url, amqp_queue, 1))
            run_id = client.post("/train", json=CONFIG).json()["id"]

            def mid_run():
                body = client.get(f"/models/{run_id}").json()
                step = (body["progress"] or {}).get("step", 0)
                return body if step >= 25 and body["checkpoints"] else None

            mid = wait_for(mid_run, timeout=40)
            assert mid["status"] == "running"
            workers[0].send_signal(signal.SIGKILL)
            assert workers[0].wait(10) == -signal.SIGKILL
            killed_at = client.get(f"/models/{run_id}").json()
            assert killed_at["status"] == "running"
            assert killed_at["progress"]["step"] < 100

            workers.append(start_worker(tmp_path, pg_url, amqp_queue, 2))
            done = wait_done(client, run_id)
            answer = client.post("/predict", json={"features": [[0.1, 0.2, 0.3, 0.4]]}).json()
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()  # idle by now; nothing to shut down gracefully
                worker.wait(10)
    assert done["status"] == "completed", done
    assert done["resumes"] == 1
    assert done["progress"]["step"] == 100
    assert done["weights_sha256"] == fit(TrainConfig(**CONFIG)).model.weights_hash()
    assert answer["source"] == "local"
    assert answer["model_id"] == run_id
