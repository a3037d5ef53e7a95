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
from service_support import wait_for


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
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(20)
    assert body["status"] == "ok"
    assert body["broker"]["kind"] == "in-process"
    assert (data / "recoverly.db").exists()
    assert refused.status_code == 401  # the token from .env is required
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert code in (0, -signal.SIGTERM)
