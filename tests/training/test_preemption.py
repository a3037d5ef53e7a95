"""PreemptionGuard: signals become a flag, handlers are restored, a second signal escalates."""

from __future__ import annotations

import os
import pickle
import signal
import threading

import pytest

from recoverly.training import PREEMPTED_EXIT_CODE, Preempted, PreemptionGuard


def test_signal_sets_the_flag_instead_of_stopping():
    """SIGTERM inside the guard only records the request."""
    with PreemptionGuard() as guard:
        assert not guard.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.requested
        assert guard.received == signal.SIGTERM
        assert "requested by SIGTERM" in repr(guard)


def test_sigusr1_for_slurm_is_handled_by_default():
    """SIGUSR1 (SLURM's --signal) is one of the default signals."""
    with PreemptionGuard() as guard:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert guard.received == signal.SIGUSR1


def test_previous_handlers_are_restored_on_exit():
    """Leaving the guard puts back exactly the handlers installed before it."""
    seen: list[int] = []

    def mine(signum, frame):
        seen.append(signum)

    before = signal.signal(signal.SIGUSR1, mine)
    try:
        int_before = signal.getsignal(signal.SIGINT)
        with PreemptionGuard():
            assert signal.getsignal(signal.SIGUSR1) is not mine
        assert signal.getsignal(signal.SIGUSR1) is mine
        assert signal.getsignal(signal.SIGINT) is int_before
        os.kill(os.getpid(), signal.SIGUSR1)
        assert seen == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_a_second_identical_signal_goes_to_the_previous_handler():
    """Ctrl-C twice: the second SIGINT raises KeyboardInterrupt as before the guard."""
    guard = PreemptionGuard([signal.SIGINT]).install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert guard.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        guard.uninstall()


def test_request_and_clear_work_without_signals():
    """request() sets the flag like a signal; clear() forgets it."""
    guard = PreemptionGuard()
    guard.request()
    assert guard.requested
    assert guard.received == 0
    exc = guard.preempted(7)
    assert exc.signal is None
    assert "request()" in str(exc)
    guard.clear()
    assert not guard.requested


def test_outside_the_main_thread_it_warns_and_installs_nothing():
    """A worker thread cannot install handlers: RuntimeWarning, handlers untouched."""
    before = signal.getsignal(signal.SIGTERM)
    caught: list[Warning] = []

    def work():
        with pytest.warns(RuntimeWarning, match="main thread") as record:
            PreemptionGuard().install()
        caught.extend(w.message for w in record)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert len(caught) == 1
    assert signal.getsignal(signal.SIGTERM) is before


def test_preempted_is_a_system_exit_with_the_exit_code():
    """Preempted leaves the process with code 75 and is not an Exception."""
    exc = Preempted(signal.SIGTERM, 120)
    assert isinstance(exc, SystemExit)
    assert not isinstance(exc, Exception)
    assert exc.code == PREEMPTED_EXIT_CODE == 75
    assert str(exc) == "pre-empted by SIGTERM; checkpoint saved at step 120; exit code 75"
    again = pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own object
    assert (again.signal, again.step, again.code) == (signal.SIGTERM, 120, 75)


def test_exit_code_is_configurable():
    """exit_code= changes the code carried by Preempted."""
    guard = PreemptionGuard(exit_code=143)
    guard.request(signal.SIGTERM)
    assert guard.preempted(3).code == 143


def test_bad_arguments_are_reported_together():
    """Every bad argument is named in one exception."""
    with pytest.raises(TypeError, match=r"signals must hold signal numbers, got 'TERM'"):
        PreemptionGuard(["TERM"])
    with pytest.raises(
        ValueError, match=r"at least one signal.*exit_code must be an integer in 1..255, got 300"
    ):
        PreemptionGuard([], exit_code=300)


def test_ignore_preemption_signals_for_loader_workers():
    """The worker_init_fn sets SIGTERM, SIGINT and SIGUSR1 to SIG_IGN in its process."""
    from recoverly.training import ignore_preemption_signals

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    try:
        ignore_preemption_signals(3)
        assert {signal.getsignal(sig) for sig in before} == {signal.SIG_IGN}
        os.kill(os.getpid(), signal.SIGUSR1)  # would end the process with the default handler
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_loop_names_are_exported_documented_and_show_the_public_module():
    """Each resumable-loop name is in __all__, has a docstring and lives in recoverly.training."""
    import inspect

    from recoverly import training

    names = [
        "ArrayState",
        "Attempt",
        "CrashLoopError",
        "PREEMPTED_EXIT_CODE",
        "Preempted",
        "PreemptionGuard",
        "ResumableRun",
        "RunInUseError",
        "RunStatistics",
        "capture_rng",
        "ignore_preemption_signals",
        "restore_rng",
        "seed_all",
    ]
    for name in names:
        assert name in training.__all__, name
        obj = getattr(training, name)
        if name == "PREEMPTED_EXIT_CODE":
            continue
        assert inspect.getdoc(obj), name
        assert obj.__module__ == "recoverly.training", name


def test_a_second_sigterm_ends_the_process_as_before_the_guard(tmp_path):
    """In a real process: the first SIGTERM is recorded, the second kills it (SIG_DFL)."""
    import subprocess
    import sys

    marker = tmp_path / "first-signal-recorded"
    code = (
        "import os, signal, sys\n"
        "from recoverly.training import PreemptionGuard\n"
        "guard = PreemptionGuard().install()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "assert guard.requested\n"
        f"open({str(marker)!r}, 'w').close()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "sys.exit(3)  # not reached\n"
    )
    done = subprocess.run([sys.executable, "-c", code], timeout=30, check=False)  # noqa: S603
    assert marker.exists()
    assert done.returncode == -signal.SIGTERM
