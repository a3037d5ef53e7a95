"""Run training attempts as real processes without paying the imports each time.

``python launcher.py MODULE`` imports ``MODULE`` (a training program in this
directory, with its heavy imports: NumPy, scikit-learn, PyTorch) once, then
serves requests read from stdin, one JSON object per line::

    {"run_dir": ..., "out": ..., "env": {...}}

For each it forks a child, which starts its own process group (so its
DataLoader workers die with it), sets the environment and runs
``MODULE.main(run_dir, out)``; the launcher answers ``{"pid": N}`` at once and
``{"pid": N, "status": S}`` when the child ends (S is the exit code, or minus
the signal number that killed it). An exception that ends a child is also
written to ``OUT.error``. The tests SIGKILL and SIGTERM those
children: real processes, real signals, real files.

:class:`Launcher` is the test side.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def serve(module_name: str) -> None:
    """Import the training module, then fork one child per request line."""
    sys.path.insert(0, str(HERE))
    module = importlib.import_module(module_name)
    print(json.dumps({"ready": True}), flush=True)  # noqa: T201 - the protocol
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the training process
            os.setpgid(0, 0)
            code = 0
            try:
                os.environ.update(request.get("env", {}))
                module.main(request["run_dir"], request["out"])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException as exc:
                traceback.print_exc()
                Path(request["out"] + ".error").write_text(f"{type(exc).__name__}: {exc}")
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)  # noqa: T201
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"pid": pid, "status": code}), flush=True)  # noqa: T201
    os._exit(0)  # stdin closed: skip the slow interpreter teardown of the ML libraries


class Launcher:
    """The test side: start the launcher, run attempts, kill them."""

    def __init__(self, module_name: str, python: str = sys.executable) -> None:
        # The attempts' tracebacks (deliberate crashes) go to a file, not the test output.
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.proc = subprocess.Popen(  # noqa: S603 - fixed arguments
            [python, str(HERE / "launcher.py"), module_name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            bufsize=1,
        )
        assert self._read() == {"ready": True}

    def _read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.stderr.seek(0)
            tail = self.stderr.read()[-4000:].decode(errors="replace")
            raise RuntimeError(f"launcher ended with {self.proc.wait()}:\n{tail}")
        return json.loads(line)

    def start(self, run_dir: Path, out: Path, env: dict[str, str] | None = None) -> int:
        """Fork one attempt; return its pid."""
        assert self.proc.stdin is not None
        request = {"run_dir": str(run_dir), "out": str(out), "env": env or {}}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return int(self._read()["pid"])

    def wait(self, pid: int) -> int:
        """Return the attempt's exit code, or minus the signal that ended it."""
        answer = self._read()
        assert answer["pid"] == pid
        return int(answer["status"])

    def run(self, run_dir: Path, out: Path, env: dict[str, str] | None = None) -> int:
        """Run one attempt to its end; return its status."""
        return self.wait(self.start(run_dir, out, env))

    @staticmethod
    def kill(pid: int, sig: int = signal.SIGKILL, *, group: bool = True) -> None:
        """Send ``sig`` to the attempt (with ``group``: to its DataLoader workers too)."""
        try:
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """Stop the launcher."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.stderr.close()


if __name__ == "__main__":
    serve(sys.argv[1])
