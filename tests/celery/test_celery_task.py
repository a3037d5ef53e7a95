"""ResilientTask without a store: recoverly's retry policy mapped onto Celery's retry."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("celery")

from celery import Celery
from recoverly import events as ev
from recoverly import retry
from recoverly.celery import (
    KEY_ARGUMENT,
    ResilientTask,
    configure_app,
    resilient_task,
)


def spy_countdowns(monkeypatch, task) -> list[Any]:
    """Record the countdown of every ``Task.retry`` call the task makes."""
    seen: list[Any] = []
    cls = type(task._get_current_object())  # Celery hands out a lazy proxy
    original = cls.retry

    def recording(self, *args, **kwargs):
        seen.append(kwargs.get("countdown"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "retry", recording)
    return seen


def test_retryable_failure_becomes_celery_retry_with_policy_countdowns(app, monkeypatch, events):
    """Two transient failures are retried by Celery with the policy's 2 s then 4 s countdowns."""
    seen_retries: list[int] = []

    @resilient_task(app, retry=retry(max_attempts=3, delay=2.0, exceptions=ConnectionError))
    def fetch(self, x):
        seen_retries.append(self.request.retries)
        if len(seen_retries) < 3:
            raise ConnectionError("down")
        return x * 2

    countdowns = spy_countdowns(monkeypatch, fetch)
    result = fetch.apply(args=(21,))
    assert result.get() == 42
    assert seen_retries == [0, 1, 2]  # Celery's own retry counter went up each time
    assert countdowns == [2.0, 4.0]
    scheduled = [e for e in events if isinstance(e, ev.RetryScheduled)]
    assert [(e.name, e.attempt, e.delay) for e in scheduled] == [
        (fetch.name, 1, 2.0),
        (fetch.name, 2, 4.0),
    ]


def test_jitter_spreads_the_countdown_below_the_backoff(app, monkeypatch):
    """jitter=0.5 with random()=0.5 turns a 4 s wait into 3 s (jitter after the cap)."""
    calls: list[int] = []

    @resilient_task(
        app,
        retry=retry(max_attempts=2, delay=4.0, jitter=0.5, random=lambda: 0.5),
    )
    def job(self):
        calls.append(1)
        if len(calls) == 1:
            raise TimeoutError("slow")
        return "ok"

    countdowns = spy_countdowns(monkeypatch, job)
    assert job.apply().get() == "ok"
    assert countdowns == [3.0]


def test_non_retryable_exception_fails_at_once(app, monkeypatch):
    """An exception outside the policy's types is raised on the first attempt, no retry."""
    calls: list[int] = []

    @resilient_task(app, retry=retry(max_attempts=5, exceptions=ConnectionError))
    def job(self):
        calls.append(1)
        raise ValueError("bad input")

    countdowns = spy_countdowns(monkeypatch, job)
    with pytest.raises(ValueError, match="bad input"):
        job.apply().get()
    assert calls == [1]
    assert countdowns == []


def test_attempts_run_out_and_the_original_exception_comes_back(app, events):
    """After max_attempts the last exception itself is raised and RetryGaveUp says why."""
    raised: list[Exception] = []

    @resilient_task(app, retry={"max_attempts": 3, "delay": 1.0})
    def job(self):
        exc = ConnectionError(f"down {len(raised)}")
        raised.append(exc)
        raise exc

    with pytest.raises(ConnectionError) as info:
        job.apply().get()
    assert len(raised) == 3
    assert info.value is raised[-1]
    (gave_up,) = [e for e in events if isinstance(e, ev.RetryGaveUp)]
    assert (gave_up.attempts, gave_up.reason) == (3, "attempts")


def test_retry_after_hint_lengthens_the_countdown(app, monkeypatch):
    """An exception carrying retry_after=30 waits 30 s, not the policy's 1 s."""

    class Throttled(Exception):
        retry_after = 30.0

    calls: list[int] = []

    @resilient_task(app, retry=retry(max_attempts=2, delay=1.0))
    def job(self):
        calls.append(1)
        if len(calls) == 1:
            raise Throttled
        return len(calls)

    countdowns = spy_countdowns(monkeypatch, job)
    assert job.apply().get() == 2
    assert countdowns == [30.0]


def test_safe_defaults_for_long_tasks(app):
    """acks_late and reject_on_worker_lost are on; max_retries follows the policy."""

    @resilient_task(app, retry=retry(max_attempts=4))
    def job(self):
        return None

    assert job.acks_late is True
    assert job.reject_on_worker_lost is True
    assert job.max_retries == 3
    assert isinstance(job, ResilientTask)


def test_base_class_form_takes_the_options_as_task_attributes(app, monkeypatch):
    """@app.task(base=ResilientTask, retry_policy=...) retries like the decorator form."""
    calls: list[int] = []

    @app.task(base=ResilientTask, bind=True, retry_policy=retry(max_attempts=2, delay=0.5))
    def job(self, n):
        calls.append(n)
        if len(calls) == 1:
            raise OSError("flaky disk")
        return n + 1

    countdowns = spy_countdowns(monkeypatch, job)
    assert job.delay(1).get() == 2  # task_always_eager: delay() runs here
    assert countdowns == [0.5]
    assert job.acks_late is True


def test_options_are_validated_together_when_decorating(app):
    """Every bad option is named in one error before any task is registered."""
    with pytest.raises(TypeError) as info:
        resilient_task(app, retry=5, lease_seconds=0, max_redeliveries=-1, key="k")
    text = str(info.value)
    assert "retry must be a Retry or None, got 5" in text
    assert "lease_seconds must be a finite number of seconds > 0, got 0" in text
    assert "max_redeliveries must be an integer >= 0, got -1" in text
    assert "key must be callable or None, got 'k'" in text


def test_retry_mapping_problems_name_the_retry_argument(app):
    """A mapping of retry() arguments is validated by retry() itself."""
    with pytest.raises(ValueError, match="retry: max_attempts must be an integer >= 1, got 0"):
        resilient_task(app, retry={"max_attempts": 0})


def test_base_class_form_validates_when_the_task_class_is_made(app):
    """A bad lease_seconds on the base-class form fails when Celery builds the task."""
    with pytest.raises(ValueError, match="lease_seconds"):

        class Bad(ResilientTask):
            lease_seconds = -1.0


def test_configure_app_sets_prefetch_one_and_late_acks():
    """configure_app: prefetch 1, late acks, requeue on worker loss, visibility timeout."""
    app = Celery("cfg", broker="memory://")
    app.conf.broker_transport_options = {"max_retries": 2}
    configure_app(app, visibility_timeout=dt.timedelta(minutes=5))
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True
    assert app.conf.broker_transport_options == {"max_retries": 2, "visibility_timeout": 300.0}
    with pytest.raises(ValueError, match="visibility_timeout"):
        configure_app(app, visibility_timeout=0)


def test_explicit_idempotency_key_is_removed_before_the_call(app):
    """idempotency_key= reaches the task as self.idempotency_key, not as an argument."""
    seen: list[tuple[Any, str]] = []

    @resilient_task(app)
    def job(self, x):
        seen.append((x, self.idempotency_key))
        return x

    assert job.apply(args=(1,), kwargs={KEY_ARGUMENT: "order-7"}).get() == 1
    assert seen == [(1, "order-7")]


def test_derived_keys_follow_name_and_arguments(app):
    """The derived key is stable for equal arguments and differs for others."""

    @resilient_task(app)
    def job(self, x, *, y=0):
        return self.idempotency_key

    first = job.apply(args=(1,), kwargs={"y": 2}).get()
    assert first == job.apply(args=(1,), kwargs={"y": 2}).get()
    assert first != job.apply(args=(1,), kwargs={"y": 3}).get()
    assert first.startswith(f"{job.name}:")
    assert job.idempotency_key_for((1,), {"y": 2}) == first


def test_key_function_names_the_work(app):
    """key= computes the idempotency key from the arguments."""

    @resilient_task(app, key=lambda run_id, config: f"train:{run_id}")
    def train(self, run_id, config):
        return self.idempotency_key

    assert train.apply(args=(7, {"lr": 0.1})).get() == "train:7"


def test_checkpoint_dir_is_derived_from_the_key(app, tmp_path):
    """Each key gets one directory under checkpoint_root, the same on every delivery."""

    @resilient_task(app, checkpoint_root=tmp_path)
    def job(self, x):
        return str(self.checkpoint_dir)

    a1 = Path(job.apply(args=(1,), kwargs={KEY_ARGUMENT: "run/1 final"}).get())
    a2 = Path(job.apply(args=(2,), kwargs={KEY_ARGUMENT: "run/1 final"}).get())
    b = Path(job.apply(args=(1,)).get())
    assert a1 == a2
    assert a1 != b
    assert a1.parent == tmp_path
    assert a1.name.startswith("run_1_final-")


def test_checkpoint_dir_without_root_says_what_to_set(app):
    """Asking for checkpoint_dir without checkpoint_root names the missing option."""

    @resilient_task(app)
    def job(self):
        return str(self.checkpoint_dir)

    with pytest.raises(RuntimeError, match="set checkpoint_root"):
        job.apply().get()


def test_direct_call_runs_once_without_celery_retries(app, events):
    """task(...) called like a function runs the body once and raises its error unchanged."""
    calls: list[int] = []

    @resilient_task(app, retry=retry(max_attempts=3))
    def job(self, x):
        calls.append(x)
        if x < 0:
            raise ConnectionError("down")
        return self.idempotency_key

    assert job(1, **{KEY_ARGUMENT: "direct"}) == "direct"
    with pytest.raises(ConnectionError):
        job(-1)
    assert calls == [1, -1]
    assert [e for e in events if isinstance(e, ev.RetryScheduled)] == []


def test_task_attributes_outside_a_run_explain_themselves(app):
    """Reading self.idempotency_key outside a running task raises a clear error."""

    @resilient_task(app)
    def job(self):
        return None

    with pytest.raises(RuntimeError, match="only known while the task runs"):
        _ = job.idempotency_key


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(("TaskDeadLettered", ("train-7", 3)), id="dead-lettered"),
        pytest.param(("LeaseLost", ("train-7", 2)), id="lease-lost"),
    ],
)
def test_errors_survive_pickle_and_a_json_result_backend(error):
    """A JSON result backend and pickle rebuild the error with its data and message."""
    import pickle

    import recoverly.celery as rc

    name, args = error
    original = getattr(rc, name)(*args)
    backend = Celery("errors", backend="cache+memory://").backend
    stored = backend.prepare_exception(original, "json")
    pickled = pickle.loads(pickle.dumps(original))  # noqa: S301 - our own bytes
    for copy in (backend.exception_to_python(stored), pickled):
        assert type(copy) is type(original)
        assert copy.args == args
        assert str(copy) == str(original)
    assert "train-7" in str(original)


def test_base_class_form_takes_a_key_function(app):
    """idempotency_key_from given to @app.task is called with the arguments, not bound."""

    @app.task(base=ResilientTask, bind=True, idempotency_key_from=lambda run_id: f"run-{run_id}")
    def job(self, run_id):
        return self.idempotency_key

    assert job.apply(args=(5,)).get() == "run-5"


def test_subclass_with_a_key_method_body(app):
    """A ResilientTask subclass may define idempotency_key_from as a plain function."""

    class KeyedTask(ResilientTask):
        def idempotency_key_from(dataset_id, **_):  # noqa: N805 - called unbound
            return f"dataset-{dataset_id}"

    @app.task(base=KeyedTask, bind=True)
    def job(self, dataset_id, verbose=False):
        return self.idempotency_key

    assert job.apply(args=(3,), kwargs={"verbose": True}).get() == "dataset-3"


def test_surprising_retry_mapping_warns_at_the_callers_line(app):
    """A retry mapping that retries forever warns, pointing at the resilient_task call."""
    with pytest.warns(UserWarning, match="retries forever") as caught:
        resilient_task(app, retry={"max_attempts": None})
    assert caught[0].filename == __file__
