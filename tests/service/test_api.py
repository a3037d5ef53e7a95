"""The service's API on SQLite and PostgreSQL: train, watch progress, get the model, predict."""

from __future__ import annotations

import pickle
import threading

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sklearn")

import sqlalchemy as sa
from service_support import SMALL, service, wait_done, wait_for, wait_worker_idle

from recoverly import chaos
from recoverly.service.faults import FaultInjector, FaultPlan
from recoverly.service.jobs import fit
from recoverly.service.predictor_server import PredictorServer
from recoverly.service.schemas import TrainConfig


class PauseAt(FaultInjector):
    """Holds the worker process after one step (its answer waits) until the test releases it."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step
        self.reached = threading.Event()
        self.release = threading.Event()

    def after_step(self, run_id: object, step: int) -> None:  # noqa: ARG002
        if step == self.step:
            self.reached.set()
            assert self.release.wait(20)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """Each API test runs on a SQLite file and on a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'api.db'}"
    return request.getfixturevalue("pg_url")


def test_train_progress_model_predict(tmp_path, database_url):
    """A queued run shows progress mid-way, completes with checkpoints and answers predictions."""
    pause = PauseAt(step=10)
    with service(tmp_path, database_url, faults=pause) as client:
        response = client.post("/train", json=SMALL)
        assert response.status_code == 202
        run_id = response.json()["id"]
        assert pause.reached.wait(20)

        def progress_at_10():
            body = client.get(f"/models/{run_id}").json()
            progress = body["progress"]
            return body if progress and progress["step"] == 10 else None

        mid = wait_for(progress_at_10)
        assert mid["status"] == "running"
        assert mid["progress"]["total_steps"] == 30
        assert 0 < mid["progress"]["percent"] < 100
        pause.release.set()

        done = wait_done(client, run_id)
        assert done["status"] == "completed"
        assert done["progress"]["step"] == 30
        assert done["progress"]["percent"] == 100.0
        assert done["metrics"]["accuracy"] > 0.5
        assert [c["step"] for c in done["checkpoints"]][-1] == 30
        assert len(done["weights_sha256"]) == 64
        assert client.get("/models").json()["models"][0]["id"] == run_id

        rows = [[0.5, -1.0, 2.0, 0.0], [-2.0, 1.0, 0.0, 1.5]]
        answer = client.post("/predict", json={"features": rows}).json()
        assert answer["source"] == "local"
        assert answer["model_id"] == run_id
        assert len(answer["predictions"]) == 2
        assert all(0 <= p < 3 for p in answer["predictions"])
        assert "no external predictor" in answer["reason"]


def test_predict_uses_the_external_predictor_when_it_answers(tmp_path):
    """With a healthy external predictor the answer comes from it, breaker CLOSED."""
    with (
        PredictorServer(lambda rows: [7] * len(rows)) as predictor,
        service(tmp_path, predictor_url=predictor.url) as client,
    ):
        run_id = client.post("/train", json=SMALL).json()["id"]
        wait_done(client, run_id)
        answer = client.post("/predict", json={"features": [[1, 2, 3, 4]]}).json()
    assert answer == {
        "predictions": [7],
        "source": "external",
        "reason": None,
        "model_id": run_id,
        "breaker": "CLOSED",
    }
    assert predictor.requests["ok"] == 1


def _count_runs(tmp_path, url):
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM model_runs")).scalar_one()
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "body",
    [
        {"epochs": 0},
        {"n_samples": "many"},
        {"learning_rate": float("inf")},
        {"n_features": 2, "n_classes": 5},
        {"unknown": 1},
        [1, 2, 3],
    ],
)
def test_bad_training_config_is_422_and_writes_nothing(tmp_path, body):
    """An invalid config gets a JSON 422 naming the field, and no run row is written."""
    url = f"sqlite:///{tmp_path / 'bad.db'}"
    with service(tmp_path, url) as client:
        if isinstance(body, dict) and body.get("learning_rate") == float("inf"):
            response = client.post(
                "/train",
                content=b'{"learning_rate": Infinity}',
                headers={"content-type": "application/json"},
            )
        else:
            response = client.post("/train", json=body)
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"
    assert response.json()["detail"]
    assert _count_runs(tmp_path, url) == 0


def test_pickled_body_is_never_unpickled(tmp_path):
    """A pickle posted as the body is refused with 422; its payload never runs."""
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (marker.write_text, ("ran",))

    url = f"sqlite:///{tmp_path / 'p.db'}"
    with service(tmp_path, url) as client:
        for path in ("/train", "/predict"):
            response = client.post(
                path,
                content=pickle.dumps(Exploit()),
                headers={"content-type": "application/octet-stream"},
            )
            assert response.status_code == 422
    assert not marker.exists()
    assert _count_runs(tmp_path, url) == 0


def test_unknown_model_is_404(tmp_path):
    """An unknown id (or one no database integer can hold) is a JSON 404."""
    with service(tmp_path) as client:
        for model_id in (12345, 2**63):
            response = client.get(f"/models/{model_id}")
            assert response.status_code == 404
            assert response.json()["error"] == "not_found"
        response = client.post("/predict", json={"features": [[1.0]], "model_id": 99})
    assert response.status_code == 404


def test_predict_rejects_rows_of_the_wrong_width(tmp_path):
    """Rows whose width differs from the model's inputs are a 422."""
    with service(tmp_path) as client:
        run_id = client.post("/train", json=SMALL).json()["id"]
        wait_done(client, run_id)
        response = client.post("/predict", json={"features": [[1.0, 2.0]]})
        ragged = client.post("/predict", json={"features": [[1.0, 2.0, 3.0, 4.0], [1.0]]})
    assert response.status_code == 422
    assert "4 values" in response.json()["detail"][0]["msg"]
    assert ragged.status_code == 422


def test_write_endpoints_need_the_token_when_configured(tmp_path):
    """With an API token, /train without it (or with a wrong one) is 401 and writes nothing."""
    url = f"sqlite:///{tmp_path / 't.db'}"
    token = "s3cret"  # noqa: S105 - a test token
    with service(tmp_path, url, api_token=token) as client:
        missing = client.post("/train", json=SMALL)
        wrong = client.post("/train", json=SMALL, headers={"Authorization": "Bearer nope"})
        assert _count_runs(tmp_path, url) == 0
        good = client.post("/train", json=SMALL, headers={"Authorization": "Bearer s3cret"})
        reads = client.get("/models")
        wait_done(client, good.json()["id"])
    assert missing.status_code == wrong.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert good.status_code == 202
    assert reads.status_code == 200
    assert _count_runs(tmp_path, url) == 1


def test_health_lists_database_worker_breakers_and_pool(tmp_path):
    """/health reports the database, the process worker, the predictor's breaker and the pool."""
    with service(tmp_path) as client:
        body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["database"] == {"ok": True}
    assert body["broker"]["kind"] == "process"
    assert body["broker"]["ok"] is True
    assert body["broker"]["current_pid"] is None
    assert body["broker"]["exits"] == []
    assert body["breakers"]["external-predictor"]["state"] == "CLOSED"
    assert body["pool"]["checked_out"] == 0


def test_killed_worker_resumes_and_ends_with_the_fault_free_model(tmp_path):
    """Its process SIGKILLed twice mid-run, the worker resumes; the weights equal a clean fit."""
    faults = FaultInjector(FaultPlan(kill_after_steps=(7, 23)))
    with service(tmp_path, faults=faults) as client:
        run_id = client.post("/train", json=SMALL).json()["id"]
        done = wait_done(client, run_id)
        worker = wait_worker_idle(client)
    reference = fit(TrainConfig(**SMALL))
    assert faults.counts() == {"worker_killed": 2}
    # The kill part counts every step the worker ran: 30, plus steps 6-7 redone after the
    # kill at the 7th (checkpoint 5), plus step 21 redone after the kill at the 23rd (step
    # 21, checkpoint 20).
    assert faults.kill.statistics() == chaos.ChaosStatistics(calls=33, injected=2)
    assert done["status"] == "completed"
    assert done["resumes"] == 2
    assert worker["restarts"] == 2
    assert done["weights_sha256"] == reference.model.weights_hash()
    # Three worker processes: two died by SIGKILL (after steps 7 and 21), the third finished.
    exits = [(e["returncode"], e["signal"], e["killed"], e["last_step"]) for e in worker["exits"]]
    assert exits == [(-9, "SIGKILL", True, 7), (-9, "SIGKILL", True, 21), (0, None, False, 30)]
    assert [e["first_step"] for e in worker["exits"]] == [1, 6, 21]
    assert len({e["pid"] for e in worker["exits"]}) == 3
