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

Stall: a fake training step (~20 ms of single-threaded element-wise NumPy work), ``--steps`` steps,
a checkpoint of ``--stall-mb`` MB every ``--every`` steps, with no checkpointing, synchronous
saves and ``async_save=True``. Each run makes one untimed warm-up save first (the first
async snapshot allocates its buffers; its cost is reported separately). Slowdown = run time /
run time without checkpointing - 1. Target: async < 5 %.

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


def stall_run(
    mode: str, train_step: Callable[[], None], state: dict[str, np.ndarray], steps: int, every: int
) -> tuple[float, float, float, float]:
    """Return loop seconds, seconds blocked in save(), warm-up save seconds, loop CPU seconds.

    The CPU seconds are those of the training thread alone (``time.thread_time``): on a
    shared machine they move much less than wall-clock time.
    """
    root = Path(tempfile.mkdtemp(prefix="bench-stall-"))
    try:
        mgr = None
        warm = blocked = 0.0
        if mode != "none":
            mgr = CheckpointManager(root, keep_last=2, async_save=mode == "async")
            t0 = time.perf_counter()
            mgr.save(0, state)
            warm = time.perf_counter() - t0
            mgr.wait()
        t0 = time.perf_counter()
        cpu0 = time.thread_time()
        for step in range(1, steps + 1):
            train_step()
            for v in state.values():
                v[:1] += 1  # the weights change between checkpoints
            if mgr is not None and step % every == 0:
                t1 = time.perf_counter()
                mgr.save(step, state)
                blocked += time.perf_counter() - t1
        elapsed = time.perf_counter() - t0
        cpu = time.thread_time() - cpu0
        if mgr is not None:
            mgr.close()  # the last background write is not part of the loop
        return elapsed, blocked, warm, cpu
    finally:
        shutil.rmtree(root, ignore_errors=True)


def stall(mb: float, steps: int, every: int, repeats: int) -> tuple[list[str], str]:
    train_step = calibrate_step()
    t0 = time.thread_time()
    for _ in range(20):
        train_step()
    step_ms = (time.thread_time() - t0) / 20 * 1000  # CPU ms per step
    state = make_arrays(mb, seed=2)
    modes = ["none", "sync", "async"]
    runs: dict[str, list[tuple[float, float, float, float]]] = {m: [] for m in modes}
    for r in range(repeats):
        for mode in modes[r % 3 :] + modes[: r % 3]:
            result = stall_run(mode, train_step, state, steps, every)
            runs[mode].append(result)
            print(
                f"  stall {mode}: loop {result[0]:.3f} s, in save() {result[1]:.3f} s, "
                f"warm-up save {result[2]:.3f} s, training-thread CPU {result[3]:.3f} s",
                file=sys.stderr,
            )
    saves = steps // every
    med = {m: statistics.median(r[0] for r in runs[m]) for m in modes}
    best = {m: min(r[0] for r in runs[m]) for m in modes}
    cpu = {m: statistics.median(r[3] for r in runs[m]) for m in modes}
    lines = [
        (
            f"**Training-step stall**: {steps} steps of ~{step_ms:.0f} ms (CPU) of NumPy work, "
            f"a {mb:g} MB checkpoint every {every} steps ({saves} saves, one every "
            f"~{every * step_ms / 1000:.1f} s), {repeats} interleaved runs per mode. "
            '"blocked" is the time the training thread spent inside `save()`; the slowdown '
            "also includes steps slowed down by the background writer. On a shared machine "
            "the best run is the least disturbed one, and the training thread's CPU time "
            "(median) is the least noisy figure: it grows by the work checkpointing puts "
            "on that thread (the snapshot copy for async, everything for sync)."
        ),
        "",
        (
            "| mode | loop s (median) | slowdown (median) | loop s (best) | slowdown (best) "
            "| blocked per save ms | blocked share | first save s | training-thread CPU s "
            "| CPU slowdown |"
        ),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode in modes:
        blocked = statistics.median(r[1] for r in runs[mode])
        first = statistics.median(r[2] for r in runs[mode])
        lines.append(
            f"| {mode} | {med[mode]:.3f} | {med[mode] / med['none'] - 1:+.1%} | "
            f"{best[mode]:.3f} | {best[mode] / best['none'] - 1:+.1%} | "
            f"{blocked / saves * 1000 if mode != 'none' else 0:.0f} | "
            f"{blocked / med['none']:.1%} | {first:.3f} | {cpu[mode]:.3f} | "
            f"{cpu[mode] / cpu['none'] - 1:+.1%} |"
        )
    slow = best["async"] / best["none"] - 1
    verdict = "PASS" if slow < TARGET_STALL else "MISS"
    summary = (
        f"async slowdown {slow:+.1%} best-of, "
        f"{med['async'] / med['none'] - 1:+.1%} median ({verdict} on best-of); "
        f"training-thread CPU {cpu['async'] / cpu['none'] - 1:+.1%}"
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
