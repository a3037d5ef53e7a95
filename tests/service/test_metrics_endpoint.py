"""GET /metrics serves the Prometheus registry recoverly's exporter writes to."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

import anyio
import httpx
import prometheus_client
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

import recoverly
import recoverly.prometheus
from recoverly.service.dashboard import metrics_router


def get(app, path):
    async def fetch():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path)

    return anyio.run(fetch)


def test_metrics_endpoint_serves_recoverly_samples_in_text_format():
    """After one retry, /metrics has recoverly_retries_total 1 for it, in the text format."""
    registry = CollectorRegistry()
    exporter = recoverly.prometheus.install(registry)
    try:
        app = FastAPI()
        app.include_router(metrics_router(registry))
        left = [1]

        @recoverly.retry(2, 0.0, name="predict")
        def predict():
            if left[0]:
                left[0] -= 1
                raise ConnectionError
            return 1

        predict()
        response = get(app, "/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"] == prometheus_client.CONTENT_TYPE_LATEST
        lines = response.text.splitlines()
        assert 'recoverly_retries_total{error="ConnectionError",name="predict"} 1.0' in lines
    finally:
        exporter.uninstall()


def test_metrics_endpoint_is_in_the_openapi_schema():
    """The route is documented under the 'observability' tag."""
    app = FastAPI()
    app.include_router(metrics_router(CollectorRegistry()))
    schema = get(app, "/openapi.json").json()
    assert schema["paths"]["/metrics"]["get"]["tags"] == ["observability"]
