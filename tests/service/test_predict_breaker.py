"""/predict while the external predictor fails: breaker opens, local model answers, it closes."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sklearn")

from service_support import SMALL, service, wait_done

from recoverly import chaos
from recoverly.service.predictor_server import PredictorServer

ROW = {"features": [[0.5, -1.0, 2.0, 0.0]]}


def external(rows):
    return [1] * len(rows)


def test_breaker_opens_fallback_answers_and_it_closes_again(tmp_path, clock):
    """Down predictor: OPEN after 3 failures, local answers without calling it, then CLOSED."""
    with PredictorServer(external) as predictor:
        predictor.set_mode("down")
        with service(
            tmp_path,
            clock=clock,
            predictor_url=predictor.url,
            predictor_attempts=2,
            breaker_failure_threshold=3,
            breaker_recovery_timeout=30,
        ) as client:
            run_id = client.post("/train", json=SMALL).json()["id"]
            wait_done(client, run_id)

            first = client.post("/predict", json=ROW).json()
            assert first["source"] == "local"
            assert first["reason"].startswith("UpstreamError: external predictor answered 503")
            assert first["breaker"] == "CLOSED"
            second = client.post("/predict", json=ROW).json()
            assert second["breaker"] == "OPEN"
            assert predictor.requests["down"] == 3  # 2 attempts, then 1 that opened it

            latencies = []
            for _ in range(20):
                started = time.perf_counter()
                answer = client.post("/predict", json=ROW).json()
                latencies.append(time.perf_counter() - started)
                assert answer["source"] == "local"
                assert answer["reason"].startswith("CircuitBreakerError")
                assert answer["predictions"] in ([0], [1], [2])
            assert predictor.requests["down"] == 3  # the OPEN breaker never called it
            # Latency budget: an OPEN breaker answers well within one predictor timeout.
            assert max(latencies) < 0.5
            health = client.get("/health").json()
            assert health["breakers"]["external-predictor"]["state"] == "OPEN"

            predictor.set_mode("ok")
            clock.advance(30)
            recovered = client.post("/predict", json=ROW).json()
            health = client.get("/health").json()
    assert recovered == {
        "predictions": [1],
        "source": "external",
        "reason": None,
        "model_id": run_id,
        "breaker": "CLOSED",
    }
    assert predictor.requests["ok"] == 1
    # The outage was the predictor's chaos.outcome part: one injection per refused request.
    assert predictor.down.statistics() == chaos.ChaosStatistics(calls=3, injected=3)
    assert predictor.slow.statistics().calls == 0  # never switched on
    assert predictor.down.enabled is False  # set_mode("ok") switched it off
    assert health["breakers"]["external-predictor"]["state"] == "CLOSED"


def test_open_breaker_without_a_local_model_is_503_with_retry_after(tmp_path, clock):
    """With no trained model to fall back on, an OPEN breaker is a 503 with Retry-After."""
    with PredictorServer(external) as predictor:
        predictor.set_mode("down")
        with service(
            tmp_path,
            clock=clock,
            predictor_url=predictor.url,
            predictor_attempts=1,
            breaker_failure_threshold=2,
            breaker_recovery_timeout=12,
        ) as client:
            failures = [client.post("/predict", json=ROW) for _ in range(2)]
            clock.advance(2.5)
            rejected = client.post("/predict", json=ROW)
    assert [r.status_code for r in failures] == [502, 502]
    assert failures[0].json()["error"] == "upstream_error"
    assert rejected.status_code == 503
    assert rejected.json()["error"] == "circuit_open"
    assert rejected.headers["retry-after"] == "10"
    assert predictor.requests["down"] == 2


@pytest.mark.realtime
def test_slow_predictor_times_out_and_the_local_model_answers(tmp_path, clock):
    """A predictor slower than the timeout: calls time out, then the OPEN breaker fails fast."""
    with (
        PredictorServer(external, slow_seconds=2.0) as predictor,
        service(
            tmp_path,
            clock=clock,
            predictor_url=predictor.url,
            predictor_timeout=0.1,
            predictor_attempts=2,
            breaker_failure_threshold=2,
            breaker_recovery_timeout=30,
        ) as client,
    ):
        run_id = client.post("/train", json=SMALL).json()["id"]
        wait_done(client, run_id)
        predictor.set_mode("slow")
        started = time.perf_counter()
        timed_out = client.post("/predict", json=ROW).json()
        first_latency = time.perf_counter() - started
        started = time.perf_counter()
        fast = client.post("/predict", json=ROW).json()
        open_latency = time.perf_counter() - started
    assert timed_out["source"] == "local"
    assert timed_out["reason"].startswith("TimeoutExceeded")
    assert timed_out["breaker"] == "OPEN"
    assert fast["source"] == "local"
    assert fast["reason"].startswith("CircuitBreakerError")
    assert predictor.requests["slow"] == 2
    assert predictor.slow.statistics() == chaos.ChaosStatistics(calls=2, injected=2)
    # Two timed-out attempts bound the first answer; the OPEN breaker answers at once.
    assert 0.2 <= first_latency < 1.5
    assert open_latency < 0.1
