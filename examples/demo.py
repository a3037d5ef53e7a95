"""recoverly demo: retry, a circuit breaker and a fallback recovering from injected faults.

Run with `make demo`. Everything here uses the real clock with short waits, so
the whole demo takes a few seconds.
"""

from __future__ import annotations

import logging
import random
import sys
import time

from recoverly import CircuitBreaker, CircuitBreakerError, fallback, retry

START = time.monotonic()


def now() -> str:
    return f"{time.monotonic() - START:6.2f}s"


class Elapsed(logging.Formatter):
    """Shows recoverly's own log lines with the demo's clock."""

    def format(self, record: logging.LogRecord) -> str:
        return f"  {now()}  [recoverly {record.levelname.lower()}] {record.getMessage()}"


def show_recoverly_logs() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(Elapsed())
    logger = logging.getLogger("recoverly")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


# ---------------------------------------------------------------- part 1
class FlakyDataSource:
    """Fails its first two reads with a connection reset, then answers."""

    def __init__(self) -> None:
        self.reads = 0

    def read(self) -> list[int]:
        self.reads += 1
        if self.reads <= 2:
            raise ConnectionResetError("connection reset by peer")
        return [3, 1, 4, 1, 5]


source = FlakyDataSource()


@retry(max_attempts=4, delay=0.1, backoff=2.0, jitter=True, exceptions=ConnectionError)
def load_batch() -> list[int]:
    return source.read()


# ---------------------------------------------------------------- part 2
class PredictionService:
    """An external service that is down between two moments, then recovers."""

    def __init__(self, down_from: float, down_until: float) -> None:
        self.down_from, self.down_until = down_from, down_until
        self.calls = 0

    def predict(self, features: list[float]) -> float:
        self.calls += 1
        elapsed = time.monotonic() - START
        if self.down_from <= elapsed < self.down_until:
            raise ConnectionError("prediction service unavailable")
        return round(sum(features) / len(features) * 1.1, 3)


service = PredictionService(down_from=1.0, down_until=2.2)
breaker = CircuitBreaker(failure_threshold=3, recovery_timeout=0.5, name="prediction-service")


def local_model(features: list[float]) -> dict[str, object]:
    """The fallback: a simpler local model."""
    return {"prediction": round(sum(features) / len(features), 3), "source": "local fallback"}


predict_retry = retry(max_attempts=2, delay=0.05, exceptions=ConnectionError, name="predict")


@fallback(local_model)
@breaker
@predict_retry
def predict(features: list[float]) -> dict[str, object]:
    return {"prediction": service.predict(features), "source": "external service"}


def main() -> None:
    random.seed(7)
    show_recoverly_logs()
    print("recoverly demo: retry, a circuit breaker and a fallback under injected faults\n")

    print("1) A data source that drops the first two connections")
    print("   @retry(max_attempts=4, delay=0.1, backoff=2.0, jitter=True)")
    batch = load_batch()
    print(f"  {now()}  -> loaded {batch} after {source.reads} reads\n")

    print("2) An external prediction service that goes down at ~1.0 s and is back at ~2.2 s")
    print("   @fallback(local_model) -> @breaker(failure_threshold=3, recovery_timeout=0.5)")
    print("   -> @retry(max_attempts=2, delay=0.05)")
    served: dict[str, int] = {}
    requests = 0
    while time.monotonic() - START < 3.2:
        features = [random.uniform(0, 1) for _ in range(4)]
        result = predict(features)
        requests += 1
        served[str(result["source"])] = served.get(str(result["source"]), 0) + 1
        print(
            f"  {now()}  request -> {result['prediction']:<6} from {result['source']:<16} "
            f"(breaker {breaker.state.name})"
        )
        time.sleep(0.15)

    stats = breaker.statistics()
    retries = predict_retry.statistics()
    print("\nSummary")
    print(f"  requests: {requests}, every one answered (none raised to the caller)")
    for source_name, count in served.items():
        print(f"    served by the {source_name}: {count}")
    print(f"  calls that reached the service:        {service.calls}")
    print(
        f"  retries: {retries.retries}, recovered: {retries.recovered}, gave up: {retries.gave_up}"
    )
    print(f"  calls the OPEN breaker refused at once: {stats.rejected_calls}")
    print(f"  breaker now: {stats.state.name}")


if __name__ == "__main__":
    try:
        main()
    except CircuitBreakerError as exc:  # pragma: no cover - the fallback handles it
        raise SystemExit(str(exc)) from exc
