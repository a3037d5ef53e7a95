"""The demo's live display and final report, drawn with rich.

.. versionadded:: 0.2
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from recoverly.service.demo_report import DemoReport

__all__ = ["Display"]

_STATE_STYLE = {"CLOSED": "green", "OPEN": "red", "HALF_OPEN": "yellow"}


class _LogPane(logging.Handler):
    """Keeps the newest recoverly log lines for the live display."""

    def __init__(self, lines: deque[str]) -> None:
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname.lower():8} {record.getMessage()}")


class Display:
    """Renders the demo: a live panel while it runs, then the report.

    Args:
        console: Where to draw (default: stdout; plain text when it is not a terminal).

    .. versionadded:: 0.2
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.lines: deque[str] = deque(maxlen=6)
        self.title = ""
        self.url = ""
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[info]}"),
        )
        self.task = self.progress.add_task("training", total=1, info="")
        self.status = Table.grid(padding=(0, 2))
        self.predictions: deque[str] = deque(maxlen=6)
        self._live: Live | None = None

    def capture_logs(self) -> logging.Handler:
        """Send recoverly's log lines to the display (they would garble it otherwise)."""
        handler = _LogPane(self.lines)
        logger = logging.getLogger("recoverly")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        # An injected dropped connection makes SQLAlchemy log the cursor it could not close.
        logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)
        return handler

    @contextmanager
    def live(self) -> Iterator[None]:
        """Show the live panel while the block runs (only on a terminal)."""
        if not self.console.is_terminal:
            yield
            return
        with Live(self._render(), console=self.console, refresh_per_second=8) as live:
            self._live = live
            try:
                yield
            finally:
                self._live = None

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def _render(self) -> Panel:
        log = Text("\n".join(self.lines) or "(no events yet)", style="dim")
        parts: list[Any] = [self.progress, self.status]
        if self.predictions:
            parts.append(Text.from_markup("\n".join(self.predictions)))
        parts.append(Panel(log, title="recoverly events", border_style="dim"))
        return Panel(Group(*parts), title=f"recoverly demo - {self.title}", subtitle=self.url)

    def note(self, line: str) -> None:
        """Show a line among the events (and print it when not on a terminal)."""
        self.lines.append(line)
        if not self.console.is_terminal:
            self.console.print(line, highlight=False, markup=False)
        self._refresh()

    def phase(self, title: str, url: str) -> None:
        """Start a phase of the demo."""
        self.title, self.url = title, url
        if not self.console.is_terminal:
            self.console.print(f"== {title} ({url})")
        self._refresh()

    def training(
        self, record: dict[str, Any], progress: dict[str, Any], total: int, faults: dict[str, int]
    ) -> None:
        """Show a run's progress and the faults so far.

        ``record["pid"]`` and ``record["pid_step"]``: the worker process and the
        last step it reported (the progress row may lag behind while the
        database is unavailable).
        """
        step = int(progress.get("step") or 0)
        info = (
            f"step {step}/{total}  status {record.get('status')}  resumes {record.get('resumes')}"
        )
        if record.get("pid") is not None:
            info += f"  worker pid {record['pid']} at step {record.get('pid_step') or 0}"
        self.progress.update(self.task, completed=step, total=total, info=info)
        grid = Table.grid(padding=(0, 2))
        for kind, count in sorted(faults.items()):
            grid.add_row(Text(kind, style="bold"), str(count))
        self.status = grid
        self._refresh()

    def prediction(self, n: int, mode: str, answer: dict[str, Any]) -> None:
        """Show one prediction and who answered it."""
        state = str(answer.get("breaker"))
        line = (
            f"#{n:<3} predictor {mode:<5} -> {answer.get('source'):<8} "
            f"breaker [{_STATE_STYLE.get(state, 'white')}]{state}[/]"
        )
        self.predictions.append(line)
        if self._live is None and not self.console.is_terminal:
            self.console.print(line, markup=True, highlight=False)
        self._refresh()

    def report(self, report: DemoReport) -> None:
        """Print the final report."""
        faults = Table(title="Faults injected and recovered")
        faults.add_column("fault")
        faults.add_column("injected", justify="right")
        faults.add_column("recovered")
        for kind, row in report.faults.items():
            ok = "[green]yes[/]" if row["recovered"] else "[red]NO[/]"
            faults.add_row(kind, str(row["injected"]), ok)
        self.console.print(faults)
        self.console.print("Injected by recoverly.chaos parts (on only in their phases):")
        for row in report.faults.values():
            self.console.print(f"  {row['chaos']}", highlight=False, markup=False, soft_wrap=True)
        quiet = [phase for phase, counts in report.injections_by_phase.items() if not counts]
        self.console.print(f"Phases with no injection: {', '.join(quiet)}", highlight=False)
        retries = Table(title="Retries by call")
        retries.add_column("call")
        retries.add_column("retries", justify="right")
        for name, count in sorted(report.retries.items()):
            retries.add_row(name, str(count))
        self.console.print(retries)
        self.console.print("Breaker transitions (external-predictor):")
        for line in report.breaker_transitions:
            self.console.print(f"  {line}", highlight=False)
        same = "[green]yes[/]" if report.model_equal else "[red]NO[/]"
        self.console.print(
            f"Checkpoint resumes: {report.checkpoint_resumes}   worker restarts: "
            f"{report.worker_restarts}   predictions: {report.predictions}"
        )
        pids = ", ".join(map(str, report.worker_pids))
        self.console.print(f"Worker processes of the run (pids): {pids}", highlight=False)
        for kill in report.worker_kills:
            where = (
                f"while writing the checkpoint of step {kill['after_step']}"
                if kill["in_checkpoint_write"]
                else f"after step {kill['after_step']}"
            )
            self.console.print(
                f"  pid {kill['pid']} killed by {kill['signal']} (exit code "
                f"{kill['returncode']}) {where}; pid {kill['resumed_by_pid']} resumed at step "
                f"{kill['resumed_at_step']}",
                highlight=False,
                soft_wrap=True,
            )
        self.console.print(
            f"Final model equals the fault-free one: {same} "
            f"(sha256 {str(report.final_sha256)[:16]}... vs {report.reference_sha256[:16]}...)"
        )
        verdict = (
            "[bold green]every fault was recovered[/]"
            if report.all_recovered
            else ("[bold red]some faults were NOT recovered[/]")
        )
        self.console.print(f"{verdict} in {report.seconds:.1f} s")

    def serving(self, url: str) -> None:
        """Say where the service keeps running."""
        self.console.print(
            f"\nThe service keeps running: API {url}/docs, dashboard {url}/dashboard, "
            f"health {url}/health. Ctrl-C stops it."
        )
