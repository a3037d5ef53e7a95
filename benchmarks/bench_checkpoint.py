"""Checkpoint save/load throughput against np.savez / torch.save, and the training-step stall.

Usage::

    .venv/bin/python benchmarks/bench_checkpoint.py            # prints the Markdown section
    .venv/bin/python benchmarks/bench_checkpoint.py --write    # and replaces it in RESULTS.md
    .venv/bin/python benchmarks/bench_checkpoint.py --mb 20 --repeats 1 --steps 60   # quicker

Throughput (one process, cases interleaved round by round, median of the repeats): a state of
``--mb`` MB of float32 arrays (eight arrays of different sizes) is saved and loaded back by

* ``np.savez`` + ``np.load`` (every array read): the plain save users would write;
* the same with ``fsync`` of the file and of the directory: the plain save made durable;
* ``CheckpointManager.save`` + ``load_latest``: temporary directory, SHA-256 of every file,
  fsync of every file and directory, manifest, rename, retention (keep_last=1), and on load
  verification of every byte.

and, when torch is importable, the same state as torch tensors against ``torch.save`` /
``torch.load(weights_only=True)``. The target (within 1.3x) is measured against the plain save
*with fsync*, since durability is part of what a checkpoint promises; the ratio to the plain
save without fsync is shown too.

Stall: a fake training step (~20 ms of single-threaded element-wise NumPy work); a checkpoint
interval is ``--every`` steps with a ``--stall-mb`` MB save at its start. Intervals without a
save, with a synchronous save and with ``async_save=True`` run back to back in pairs
(``--steps // --every`` pairs per repeat, order rotated), so each pair shares the machine's load
of its moment; slowdown = interval time / the same pair's interval without a save - 1, median
over the pairs. One untimed warm-up save first (the first async snapshot allocates its
buffers). Target: async < 5 %.

Timing uses ``time.perf_counter`` directly (the clock rule of the library does not apply to
benchmarks). Files go to a temporary directory on the same disk as ``/tmp``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import write_section
from recoverly.training import CheckpointManager

RESULTS = Path(__file__).with_name("RESULTS.md")
TARGET_RATIO = 1.3
TARGET_STALL = 0.05


def make_arrays(mb: float, seed: int = 0) -> dict[str, np.ndarray]:
    """Eight float32 arrays of different sizes totalling ``mb`` MB."""
    rng = np.random.default_rng(seed)
    weights = [1, 2, 3, 4, 5, 6, 7, 8]
    total = int(mb * 1e6) // 4
    sizes = [total * w // sum(weights) for w in weights]
    return {f"layer{i}": rng.random(n, dtype=np.float32) for i, n in enumerate(sizes)}


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- throughput cases
class Case:
    """One way to save and load the state: ``save()`` and ``load() -> dict``."""

    def __init__(self, label: str, save: Callable[[], None], load: Callable[[], Any]) -> None:
        self.label = label
        self.save = save
        self.load = load
        self.save_s: list[float] = []
        self.load_s: list[float] = []


def numpy_cases(state: dict[str, np.ndarray], root: Path) -> list[Case]:
    plain = root / "plain.npz"
    durable = root / "durable.npz"

    def savez() -> None:
        np.savez(plain, **state)

    def savez_fsync() -> None:
        with durable.open("wb") as f:
            np.savez(f, **state)
            f.flush()
            os.fsync(f.fileno())
        fsync_path(root)

    def load(path: Path) -> dict[str, np.ndarray]:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}

    mgr = CheckpointManager(root / "recoverly", keep_last=1)
    counter = iter(range(10**9))

    def recoverly_load() -> dict[str, Any]:
        ckpt = mgr.load_latest()
        assert ckpt is not None
        return ckpt.state

    return [
        Case("np.savez + np.load", savez, lambda: load(plain)),
        Case("np.savez + fsync + np.load", savez_fsync, lambda: load(durable)),
        Case(
            "CheckpointManager save + load_latest",
            lambda: mgr.save(next(counter), state) and None,
            recoverly_load,
        ),
    ]


def torch_cases(state: dict[str, np.ndarray], root: Path) -> list[Case]:
    import torch  # noqa: PLC0415 - optional

    tensors = {k: torch.from_numpy(v.copy()) for k, v in state.items()}
    plain = root / "plain.pt"
    durable = root / "durable.pt"

    def save_plain() -> None:
        torch.save(tensors, plain)

    def save_durable() -> None:
        with durable.open("wb") as f:
            torch.save(tensors, f)
            f.flush()
            os.fsync(f.fileno())
        fsync_path(root)

    mgr = CheckpointManager(root / "recoverly-torch", keep_last=1)
    counter = iter(range(10**9))

    def recoverly_load() -> dict[str, Any]:
        ckpt = mgr.load_latest()
        assert ckpt is not None
        return ckpt.state

    return [
        Case(
            "torch.save + torch.load(weights_only=True)",
            save_plain,
            lambda: torch.load(plain, weights_only=True),
        ),
        Case(
            "torch.save + fsync + torch.load",
            save_durable,
            lambda: torch.load(durable, weights_only=True),
        ),
        Case(
            "CheckpointManager save + load_latest",
            lambda: mgr.save(next(counter), tensors) and None,
            recoverly_load,
        ),
    ]


def check_equal(case: Case, state: dict[str, np.ndarray]) -> None:
    got = case.load()
    for k, v in state.items():
        arr = got[k].numpy() if hasattr(got[k], "numpy") else got[k]
        if arr.tobytes() != v.tobytes():
            raise AssertionError(f"{case.label}: {k} differs after load")


def measure(cases: list[Case], repeats: int) -> None:
    for r in range(repeats):
        start = r % len(cases)
        for case in cases[start:] + cases[:start]:
            t0 = time.perf_counter()
            case.save()
            t1 = time.perf_counter()
            case.load()
            t2 = time.perf_counter()
            case.save_s.append(t1 - t0)
            case.load_s.append(t2 - t1)
            print(f"  {case.label}: save {t1 - t0:.3f} s, load {t2 - t1:.3f} s", file=sys.stderr)


def table(title: str, cases: list[Case], mb: float) -> tuple[list[str], float]:
    med = {c.label: (statistics.median(c.save_s), statistics.median(c.load_s)) for c in cases}
    plain = sum(med[cases[0].label])
    durable = sum(med[cases[1].label])
    lines = [
        f"**{title}**",
        "",
        "| case | save s | load s | save+load s | MB/s | vs plain | vs plain + fsync |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in cases:
        s, lo = med[c.label]
        lines.append(
            f"| {c.label} | {s:.3f} | {lo:.3f} | {s + lo:.3f} | {2 * mb / (s + lo):.0f} | "
            f"{(s + lo) / plain:.2f}x | {(s + lo) / durable:.2f}x |"
        )
    ours = sum(med[cases[2].label]) / durable
    lines.append("")
    return lines, ours


# ---------------------------------------------------------------- stall
def calibrate_step(target_s: float = 0.02) -> Callable[[], None]:
    """A ~``target_s`` step of element-wise NumPy work (single-threaded, unlike BLAS)."""
    n = 1 << 18
    for _ in range(3):
        x = np.random.default_rng(1).random(n)
        out = np.empty_like(x)
        np.tanh(x, out=out)  # touch the pages first
        t0 = time.thread_time()  # CPU time: other jobs on the machine do not skew it
        for _ in range(5):
            np.tanh(x, out=out)
        per = max((time.thread_time() - t0) / 5, 1e-4)
        n = max(1 << 16, int(n * target_s / per))
    x = np.random.default_rng(1).random(n)
    out = np.empty_like(x)
    np.tanh(x, out=out)

    def step() -> None:
        np.tanh(x, out=out)

    return step


def _interval(
    mgr: CheckpointManager | None,
    train_step: Callable[[], None],
    state: dict[str, np.ndarray],
    step: int,
    every: int,
) -> tuple[float, float]:
    """One checkpoint interval: a save (unless ``mgr`` is None), then ``every`` steps.

    Returns (interval seconds, seconds blocked in ``save()``). An asynchronous write
    still running at the end is waited for inside the interval, so a write that does
    not overlap the steps counts in full.
    """
    t0 = time.perf_counter()
    blocked = 0.0
    if mgr is not None:
        mgr.save(step, state)
        blocked = time.perf_counter() - t0
    for _ in range(every):
        train_step()
        for v in state.values():
            v[:1] += 1  # the weights change between checkpoints
    if mgr is not None:
        mgr.wait()
    return time.perf_counter() - t0, blocked


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return q1, q2, q3


def stall(mb: float, steps: int, every: int, repeats: int) -> tuple[list[str], str]:
    """Paired checkpoint intervals: without a save, with a synchronous and an async one.

    ``steps // every`` intervals per round and ``repeats`` rounds give the pairs; each
    pair runs the three kinds of interval back to back (order rotated), so they share
    whatever else the machine is doing at that moment, and the slowdown of a pair is
    its interval time over the no-save interval of the same pair. The median over the
    pairs is the figure; the quartiles show the spread.
    """
    train_step = calibrate_step()
    t0 = time.thread_time()
    for _ in range(20):
        train_step()
    step_ms = (time.thread_time() - t0) / 20 * 1000  # CPU ms per step
    state = make_arrays(mb, seed=2)
    modes = ["none", "sync", "async"]
    pairs = max(1, steps // every) * repeats
    slow: dict[str, list[float]] = {"sync": [], "async": []}
    blocked: dict[str, list[float]] = {"sync": [], "async": []}
    interval_s: dict[str, list[float]] = {m: [] for m in modes}
    root = Path(tempfile.mkdtemp(prefix="bench-stall-"))
    try:
        mgrs: dict[str, CheckpointManager | None] = {
            "none": None,
            "sync": CheckpointManager(root / "sync", keep_last=2, async_save=False),
            "async": CheckpointManager(root / "async", keep_last=2, async_save=True),
        }
        for mgr in mgrs.values():  # warm-up: the first async snapshot allocates its buffers
            if mgr is not None:
                mgr.save(0, state)
                mgr.wait()
        for pair in range(pairs):
            times: dict[str, float] = {}
            for mode in modes[pair % 3 :] + modes[: pair % 3]:
                took, in_save = _interval(mgrs[mode], train_step, state, (pair + 1) * every, every)
                times[mode] = took
                interval_s[mode].append(took)
                if mode != "none":
                    blocked[mode].append(in_save)
            for mode in ("sync", "async"):
                slow[mode].append(times[mode] / times["none"] - 1)
            print(
                f"  pair {pair + 1}/{pairs}: none {times['none']:.3f} s, "
                f"sync {slow['sync'][-1]:+.1%}, async {slow['async'][-1]:+.1%}",
                file=sys.stderr,
            )
        for mgr in mgrs.values():
            if mgr is not None:
                mgr.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    lines = [
        (
            f"**Training-step stall**: a checkpoint interval is {every} steps of "
            f"~{step_ms:.0f} ms (CPU) of single-threaded NumPy work (~"
            f"{every * step_ms / 1000:.1f} s); a {mb:g} MB checkpoint is saved at its start. "
            f"{pairs} pairs: each runs an interval without a save, one with a synchronous "
            "save and one with `async_save=True` back to back (order rotated), so the three "
            "share the machine's load of that moment; an async write still running at the "
            "end of its interval is waited for inside it. Slowdown = interval time / the "
            "same pair's interval without a save - 1; median and quartiles over the pairs. "
            '"blocked" is the time the training thread spent inside `save()`.'
        ),
        "",
        (
            "| mode | interval s (median) | slowdown (median) | slowdown (quartiles) "
            "| blocked per save ms (median) | blocked share |"
        ),
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    none_med = statistics.median(interval_s["none"])
    lines.append(f"| none | {none_med:.3f} | +0.0% | | 0 | 0.0% |")
    for mode in ("sync", "async"):
        q1, q2, q3 = _quartiles(slow[mode])
        b = statistics.median(blocked[mode])
        lines.append(
            f"| {mode} | {statistics.median(interval_s[mode]):.3f} | {q2:+.1%} | "
            f"{q1:+.1%} .. {q3:+.1%} | {b * 1000:.0f} | {b / none_med:.1%} |"
        )
    q1, q2, q3 = _quartiles(slow["async"])
    verdict = "PASS" if q2 < TARGET_STALL else "MISS"
    summary = (
        f"async slowdown {q2:+.1%} median over {pairs} pairs (quartiles {q1:+.1%} .. "
        f"{q3:+.1%}): {verdict}"
    )
    lines += ["", f"Target: async slowdown < {TARGET_STALL:.0%}: **{summary}**.", ""]
    return lines, summary


# ---------------------------------------------------------------- checksums
def hash_rates(state: dict[str, np.ndarray], repeats: int) -> list[str]:
    """MB/s of the stdlib checksums over the state's bytes (best of ``repeats``)."""
    import hashlib  # noqa: PLC0415
    import zlib  # noqa: PLC0415

    views = [memoryview(a).cast("B") for a in state.values()]
    mb = sum(v.nbytes for v in views) / 1e6

    def digest(name: str) -> Callable[[], object]:
        def run() -> object:
            h = hashlib.new(name)
            for v in views:
                h.update(v)
            return h.digest()

        return run

    def crc() -> object:
        value = 0
        for v in views:
            value = zlib.crc32(v, value)
        return value

    cases = {"SHA-256 (used)": digest("sha256"), "SHA-1": digest("sha1"), "MD5": digest("md5")}
    cases |= {"BLAKE2b": digest("blake2b"), "CRC-32 (zlib, not cryptographic)": crc}
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(repeats):
        for name, run in cases.items():
            t0 = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t0)
    row = " | ".join(f"{mb / t:.0f}" for t in best.values())
    return [
        f"**Checksums** over the same {mb:g} MB, MB/s, best of {repeats}:",
        "",
        "| " + " | ".join(best) + " |",
        "| " + " | ".join("---:" for _ in best) + " |",
        f"| {row} |",
        "",
    ]


# ---------------------------------------------------------------- main
def run(mb: float, repeats: int, stall_mb: float, steps: int, every: int) -> str:
    root = Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
    state = make_arrays(mb)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "## Training: checkpoint throughput and stall",
        "",
        (
            f"{mb:g} MB of float32 arrays (8 arrays), saved and loaded {repeats} times per "
            "case, cases interleaved, medians. MB/s counts the bytes saved plus the bytes "
            "loaded. The CheckpointManager figures include SHA-256 of every file on save and "
            "on load, fsync of every file and directory, the manifest, the rename and "
            f"retention. Target: within {TARGET_RATIO}x of the plain save **with fsync**."
        ),
        "",
    ]
    verdicts = []
    try:
        groups = [("NumPy arrays", numpy_cases)]
        try:
            import torch  # noqa: F401, PLC0415 - optional

            groups.append(("torch tensors", torch_cases))
        except ImportError:
            lines += ["(torch is not installed: the tensor comparison was skipped.)", ""]
        for title, build in groups:
            print(f"{title}:", file=sys.stderr)
            cases = build(state, root)
            for case in cases:  # warm-up and a correctness check
                case.save()
                check_equal(case, state)
            measure(cases, repeats)
            body, ratio = table(title, cases, mb)
            lines += body
            verdicts.append(f"{title} {ratio:.2f}x ({'PASS' if ratio <= TARGET_RATIO else 'MISS'})")
        lines += [
            f"Save+load vs the plain save with fsync: {'; '.join(verdicts)}.",
            "",
        ]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("stall:", file=sys.stderr)
    lines += hash_rates(state, repeats)
    body, _ = stall(stall_mb, steps, every, repeats)
    lines += body
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines += [
        (
            f"Machine: {os.cpu_count()} cores, 1-minute load average {load_before:.1f} at the "
            f"start and {load_after:.1f} at the end (other jobs share it: above the core "
            "count, the figures are noisy)."
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mb", type=float, default=100.0, help="state size for throughput")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stall-mb", type=float, default=50.0)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    section = run(args.mb, args.repeats, args.stall_mb, args.steps, args.every)
    print(section)
    if args.write:
        write_section(RESULTS, "checkpoint", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
