"""/predict of the reference service: throughput and p99 with the breaker CLOSED and OPEN.

Usage::

    .venv/bin/python benchmarks/bench_service.py            # prints the Markdown section
    .venv/bin/python benchmarks/bench_service.py --write    # and replaces it in RESULTS.md
    .venv/bin/python benchmarks/bench_service.py --requests 300 --repeats 3   # quicker

Two measurements, in one process:

1. **End to end over loopback.** The app runs under uvicorn on a thread; an
   external predictor (the service's own ``PredictorServer``) answers on another
   port; Python clients (``httpx.Client``, one keep-alive connection each) send
   ``POST /predict`` with one row. Cases, interleaved over the repeats:

   * ``CLOSED``: ``/predict`` with the full recovery stack; the external predictor answers;
   * ``bare``: ``/predict-bare``, the same endpoint (same body validation, model
     lookup and response) calling the predictor with no fallback, retry, breaker or
     timeout (added by this benchmark to the same app);
   * ``OPEN``: ``/predict`` with the breaker forced open: the local model answers;
   * ``local bare``: ``/predict-local``, the same endpoint answering from the local
     model directly.

   Throughput is requests per second with ``--clients`` concurrent clients; latency
   percentiles come from a sequential client (one request at a time). Every client
   sets ``TCP_NODELAY``, as the service's own client to the predictor does: without
   it, httpx's separate header and body writes meet Nagle's algorithm and delayed
   ACKs, and every request on loopback takes ~40 ms.

2. **The stack alone, in process.** ``Predictor.answer`` (fallback -> retry ->
   breaker -> timeout -> httpx) against ``Predictor._post`` (httpx alone), both on
   an ``httpx.MockTransport`` answering at once, so the difference is the recovery
   stack's own cost per request, timed with ``_harness.measure``.

The target is an overhead of the recovery stack below 5 % of the bare endpoint's p50.
Client, server and predictor share the process (and its GIL) and a 2-CPU machine:
read the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from starlette.concurrency import run_in_threadpool

from _harness import Case, measure, write_section
from recoverly.service.app import create_app
from recoverly.service.model import SoftmaxModel
from recoverly.service.predictor import NO_DELAY, Predictor
from recoverly.service.predictor_server import PredictorServer
from recoverly.service.schemas import PredictRequest, PredictResponse
from recoverly.service.serving import BackgroundServer
from recoverly.service.settings import Settings

RESULTS = Path(__file__).with_name("RESULTS.md")
ROW = {"features": [[0.5, -1.0, 2.0, 0.0, 1.0, -0.5, 0.25, 3.0]]}
TRAIN = {"name": "bench", "n_samples": 1000, "epochs": 2, "seed": 1}


def _transport() -> httpx.HTTPTransport:
    return httpx.HTTPTransport(socket_options=NO_DELAY)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _add_bare_routes(app: Any) -> None:
    """Add the two endpoints the stack is compared with: /predict minus the stack."""
    service = app.state.service

    async def lookup(request: PredictRequest) -> tuple[list[list[float]], Any, int | None]:
        model_id = await run_in_threadpool(service.newest_model_id)
        model = await run_in_threadpool(service.models.get, model_id) if model_id else None
        return request.features, model, model_id

    @app.post("/predict-bare")
    async def predict_bare(request: PredictRequest) -> PredictResponse:
        rows, _model, model_id = await lookup(request)
        predictions = await service.predictor._post(rows, model_id)
        breaker = "CLOSED"
        return PredictResponse(
            predictions=predictions,
            source="external",
            reason=None,
            model_id=model_id,
            breaker=breaker,
        )

    @app.post("/predict-local")
    async def predict_local(request: PredictRequest) -> PredictResponse:
        rows, model, model_id = await lookup(request)
        predictions = model.predict(np.asarray(rows, dtype=np.float64))
        return PredictResponse(
            predictions=predictions,
            source="local",
            reason="bare",
            model_id=model_id,
            breaker="OPEN",
        )


def _sequential(url: str, path: str, n: int) -> list[float]:
    out = []
    with httpx.Client(base_url=url, timeout=10, transport=_transport()) as client:
        client.post(path, json=ROW).raise_for_status()  # warm the connection
        for _ in range(n):
            t0 = time.perf_counter()
            response = client.post(path, json=ROW)
            out.append(time.perf_counter() - t0)
            if response.status_code != httpx.codes.OK:
                msg = f"{path}: {response.status_code} {response.text}"
                raise RuntimeError(msg)
    return out


def _throughput(url: str, path: str, n: int, clients: int) -> float:
    per_client = max(1, n // clients)
    clients_ready = threading.Barrier(clients + 1)
    errors: list[str] = []

    def work() -> None:
        with httpx.Client(base_url=url, timeout=10, transport=_transport()) as client:
            client.post(path, json=ROW)
            clients_ready.wait()
            for _ in range(per_client):
                response = client.post(path, json=ROW)
                if response.status_code != httpx.codes.OK:
                    errors.append(response.text)

    threads = [threading.Thread(target=work) for _ in range(clients)]
    for t in threads:
        t.start()
    clients_ready.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(errors[0])
    return per_client * clients / elapsed


def end_to_end(requests: int, repeats: int, clients: int) -> dict[str, dict[str, float]]:
    """Run the loopback cases; return p50/p99 (ms) and req/s per case."""
    model = SoftmaxModel(8, 3)
    with (
        tempfile.TemporaryDirectory() as tmp,
        PredictorServer(lambda rows: model.predict(np.asarray(rows, dtype=float))) as predictor,
    ):
        settings = Settings(
            _env_file=None,
            data_dir=Path(tmp),
            predictor_url=predictor.url,
            predictor_timeout=2.0,
            breaker_recovery_timeout=3600,
        )
        app = create_app(settings)
        _add_bare_routes(app)
        breaker = app.state.service.predictor.breaker
        with BackgroundServer(app) as server, httpx.Client(base_url=server.url) as client:
            run_id = client.post("/train", json=TRAIN).json()["id"]
            while client.get(f"/models/{run_id}").json()["status"] != "completed":
                time.sleep(0.05)
            cases = {
                "CLOSED": ("/predict", breaker.reset),
                "bare": ("/predict-bare", breaker.reset),
                "OPEN": ("/predict", breaker.force_open),
                "local bare": ("/predict-local", breaker.reset),
            }
            latencies: dict[str, list[float]] = {k: [] for k in cases}
            rates: dict[str, list[float]] = {k: [] for k in cases}
            names = list(cases)
            for r in range(repeats):
                print(f"round {r + 1}/{repeats}", file=sys.stderr, flush=True)
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    path, prepare = cases[name]
                    prepare()
                    latencies[name] += _sequential(server.url, path, requests)
                    rates[name].append(_throughput(server.url, path, requests, clients))
            breaker.reset()
            check = client.post("/predict", json=ROW).json()
            if check["source"] != "external":
                raise RuntimeError(f"expected an external answer, got {check}")
    return {
        name: {
            "p50_ms": statistics.median(latencies[name]) * 1e3,
            "p99_ms": _percentile(latencies[name], 0.99) * 1e3,
            "rps": statistics.median(rates[name]),
        }
        for name in names
    }


def in_process(repeats: int) -> dict[str, float]:
    """Return ns per call of the stack and of its parts, against a mock transport."""
    body = json.dumps({"predictions": [1]}).encode()

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    predictor = Predictor("http://predictor", client=client, timeout_seconds=5.0)
    rows = ROW["features"]
    model = SoftmaxModel(8, 3)
    one_row = np.asarray(rows, dtype=np.float64)

    async def stack() -> object:
        return (await predictor.answer(rows, model, 1)).predictions

    async def bare() -> object:
        return await predictor._post(rows, 1)

    async def local() -> object:
        return model.predict(one_row)

    def runner(call: Any) -> Any:
        async def run(n: int) -> None:
            for _ in range(n):
                await call()

        return run

    def opened() -> None:
        predictor.breaker.force_open()

    cases = [
        Case("closed", "service", "stack, CLOSED", runner(stack), stack, [1], is_async=True),
        Case("bare", "service", "httpx alone", runner(bare), bare, [1], is_async=True),
        Case(
            "open",
            "service",
            "stack, OPEN (fallback)",
            runner(stack),
            stack,
            [0],
            is_async=True,
            setup=opened,
            teardown=predictor.breaker.reset,
        ),
        Case("local", "service", "local model alone", runner(local), local, [0], is_async=True),
    ]
    results = measure(cases, repeats=repeats, target_ms=150)
    asyncio.run(client.aclose())
    return {key: result.median for key, result in results.items()}


def render(e2e: dict[str, dict[str, float]], parts: dict[str, float], args: Any) -> str:
    stack_ns, bare_ns = parts["closed"], parts["bare"]
    overhead_us = (stack_ns - bare_ns) / 1e3
    open_us = (parts["open"] - parts["local"]) / 1e3
    bare_p50_us = e2e["bare"]["p50_ms"] * 1e3
    e2e_diff_us = (e2e["CLOSED"]["p50_ms"] - e2e["bare"]["p50_ms"]) * 1e3
    verdict = "PASS" if overhead_us < 0.05 * bare_p50_us else "MISS"
    lines = [
        "## Reference service: /predict (`bench_service.py`)",
        "",
        (
            f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())};"
            f" Python {sys.version.split()[0]}; {args.repeats} interleaved repeats of"
            f" {args.requests} requests per case; throughput with {args.clients} clients"
        ),
        "- client, uvicorn and the external predictor share one process on loopback",
        "",
        "| case | p50 (ms) | p99 (ms) | req/s |",
        "|---|---:|---:|---:|",
    ]
    labels = {
        "CLOSED": "/predict, breaker CLOSED (external answers)",
        "bare": "same call without the recovery stack",
        "OPEN": "/predict, breaker OPEN (local fallback answers)",
        "local bare": "local model called directly",
    }
    for name, label in labels.items():
        row = e2e[name]
        lines.append(f"| {label} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['rps']:.0f} |")
    lines += [
        "",
        (
            f"- recovery stack alone, in process (mock transport): {stack_ns / 1e3:.1f} us per"
            f" call vs {bare_ns / 1e3:.1f} us for httpx alone: **{overhead_us:.1f} us overhead**"
        ),
        (
            f"- OPEN, in process: {parts['open'] / 1e3:.1f} us per fallback answer vs"
            f" {parts['local'] / 1e3:.1f} us for the local model alone: {open_us:.1f} us for the"
            " rejection, the fallback and its event"
        ),
        (
            f"- {verdict}  stack overhead < 5 % of the bare endpoint's p50: {overhead_us:.1f} us"
            f" = {100 * overhead_us / bare_p50_us:.2f} % of {bare_p50_us:.0f} us"
            f" (end-to-end p50 difference, noisier: {e2e_diff_us:+.0f} us)"
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per case per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--write", action="store_true", help="replace the section in RESULTS.md")
    args = parser.parse_args(argv)
    logging.getLogger("recoverly").setLevel(logging.CRITICAL)  # the OPEN case logs every fallback
    e2e = end_to_end(args.requests, args.repeats, args.clients)
    parts = in_process(args.repeats)
    section = render(e2e, parts, args)
    print(section)
    if args.write:
        write_section(RESULTS, "service", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
