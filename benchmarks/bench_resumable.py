"""ResumableRun: the cost per step, and a mid-epoch resume against skipping by loading.

Usage::

    .venv/bin/python benchmarks/bench_resumable.py            # prints the Markdown section
    .venv/bin/python benchmarks/bench_resumable.py --write    # and replaces it in RESULTS.md

Per step (one process, cases interleaved round by round, median of the repeats):

* ``plain``: ``for b in batches: step(b)`` with an empty step;
* ``ResumableRun``: the same loop through ``run.batches()`` and ``run.step_done()`` with no
  checkpoint due (what every step pays; checkpoints cost what ``CheckpointManager.save``
  costs, see the checkpoint section).

Resume (torch only): a ``DataLoader(shuffle=True)`` over a dataset whose ``__getitem__``
costs ~0.2 ms, 2,000 samples, batch 20; a run resumed at batch 75 of 100 needs the rest of
the epoch. Time to the first remaining batch:

* ``skip by loading``: ``itertools.islice(loader, 75, None)``, what a hand-written resume does
  (every sample of the skipped batches is loaded and collated);
* ``recoverly``: ``skip_batches(loader, 75, ...)``, which draws the same order and drops the
  first 75 index lists of the batch sampler.

Timing uses ``time.perf_counter`` directly (the clock rule does not apply to benchmarks).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import write_section
from recoverly.training import ResumableRun
from recoverly.training.adapters import skip_batches

RESULTS = Path(__file__).with_name("RESULTS.md")


def per_step(steps: int, repeats: int) -> dict[str, float]:
    """Median ns per step of a plain loop and of the same loop through ResumableRun."""
    data = range(steps)
    results: dict[str, list[float]] = {"plain": [], "ResumableRun": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            order = ["plain", "ResumableRun"] if r % 2 == 0 else ["ResumableRun", "plain"]
            for case in order:
                if case == "plain":
                    start = time.perf_counter()
                    for _ in data:
                        pass
                    results[case].append((time.perf_counter() - start) / steps * 1e9)
                    continue
                run = ResumableRun(
                    f"{tmp}/{r}", checkpoint_every=None, preemption=False, keep_last=1
                )
                start = time.perf_counter()
                for _epoch in run.epochs(1):
                    for _ in run.batches(data):
                        run.step_done()
                results[case].append((time.perf_counter() - start) / steps * 1e9)
                run.finish()
    return {case: statistics.median(v) for case, v in results.items()}


def resume(repeats: int) -> dict[str, float] | None:
    """Median ms to the first batch after skipping 75 of 100 batches, two ways."""
    try:
        import torch  # noqa: PLC0415 - optional: the resume case needs torch
        from torch.utils.data import DataLoader, Dataset  # noqa: PLC0415
    except ImportError:
        return None

    class Slow(Dataset):
        def __len__(self) -> int:
            return 2000

        def __getitem__(self, i: int) -> torch.Tensor:
            end = time.perf_counter() + 0.0002  # a decode or an augmentation
            while time.perf_counter() < end:
                pass
            return torch.tensor(i)

    loader = DataLoader(Slow(), batch_size=20, shuffle=True)
    results: dict[str, list[float]] = {"skip by loading": [], "recoverly": []}
    for r in range(repeats):
        order = list(results) if r % 2 == 0 else list(reversed(results))
        for case in order:
            torch.manual_seed(r)
            start = time.perf_counter()
            if case == "recoverly":
                first = next(skip_batches(loader, 75, lambda: None))
            else:
                first = next(itertools.islice(loader, 75, None))
            results[case].append((time.perf_counter() - start) * 1e3)
            assert len(first) == 20
    return {case: statistics.median(v) for case, v in results.items()}


def section(steps: dict[str, float], skip: dict[str, float] | None) -> str:
    """The Markdown section for RESULTS.md."""
    lines = [
        "## Resumable loops",
        "",
        "`benchmarks/bench_resumable.py`: one process, cases interleaved, medians.",
        "",
        "| per step | ns/step | vs plain loop |",
        "|---|---:|---:|",
    ]
    plain = steps["plain"]
    for case, ns in steps.items():
        lines.append(f"| {case} | {ns:,.0f} | {ns / plain:.0f}x |")
    extra = steps["ResumableRun"] - plain
    summary = (
        f"ResumableRun adds {extra / 1000:.1f} µs to a step with no checkpoint due: "
        f"{extra / 1e6 * 100:.2f} % of a 1 ms training step."
    )
    lines += ["", summary]
    if skip is not None:
        header = (
            "| mid-epoch resume at batch 75/100 (0.2 ms a sample) | ms to first batch | ratio |"
        )
        lines += ["", header, "|---|---:|---:|"]
        base = skip["skip by loading"]
        for case, ms in skip.items():
            lines.append(f"| {case} | {ms:,.1f} | {ms / base:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the section in RESULTS.md")
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    text = section(per_step(args.steps, args.repeats), resume(max(3, args.repeats // 2)))
    print(text)
    if args.write:
        write_section(RESULTS, "bench_resumable", text)


if __name__ == "__main__":
    main()
