"""`recoverly serve` runs the service alone, configured by `.env` and RECOVERLY_* variables."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

pytest.importorskip("fastapi")

import httpx
from service_support import SMALL, wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.realtime
def test_serve_reads_dotenv_and_answers_health(tmp_path):
    """Settings come from .env in the working directory; the SQLite file lands in its data dir."""
    port = free_port()
    data = tmp_path / "data"
    (tmp_path / ".env").write_text(
        f"RECOVERLY_DATA_DIR={data}\nRECOVERLY_PORT={port}\nRECOVERLY_API_TOKEN=t0ken\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECOVERLY_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "recoverly.service.cli", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def health():
            try:
                return httpx.get(f"{url}/health", timeout=2).json()
            except httpx.TransportError:
                return None

        body = wait_for(health, timeout=30)
        refused = httpx.post(f"{url}/train", json={}, timeout=5)
        auth = {"Authorization": "Bearer t0ken"}
        run_id = httpx.post(f"{url}/train", json=SMALL, headers=auth, timeout=5).json()["id"]

        def trained():
            worker = health()["broker"]
            return worker if worker["exits"] and worker["current_run"] is None else None

        worker = wait_for(trained, timeout=60)
        run = httpx.get(f"{url}/models/{run_id}", timeout=5).json()
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(20)
    assert body["status"] == "ok"
    assert body["broker"]["kind"] == "process"
    assert (data / "recoverly.db").exists()
    # The run was trained by a worker process of the server, which exited normally.
    [ended] = worker["exits"]
    assert ended["pid"] != server.pid
    assert (ended["returncode"], ended["run_id"], ended["last_step"]) == (0, run_id, 30)
    assert run["status"] == "completed"
    assert refused.status_code == 401  # the token from .env is required
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert code in (0, -signal.SIGTERM)
