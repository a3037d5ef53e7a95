"""Property-based requests generated from the OpenAPI schema never get a 500."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("schemathesis")

import itertools

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from service_support import settings_for

from recoverly.service.app import create_app

ALLOWED_503 = {"no_model", "circuit_open", "database_unavailable"}


def test_no_generated_request_gets_a_server_error(tmp_path):
    """Every operation, fed schema-generated (and schema-violating) input, never answers 500."""
    app = create_app(settings_for(tmp_path))  # the worker is not started: runs stay queued
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        seen: dict[str, set[int]] = {}
        operations = [result.ok() for result in schema.get_all_operations()]
        for operation, mode in itertools.product(operations, GenerationMode):
            seen.setdefault(operation.label, set())

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=10,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case):
                response = case.call()
                seen[case.operation.label].add(response.status_code)
                if response.status_code == 503:
                    assert response.json()["error"] in ALLOWED_503, response.text
                else:
                    assert response.status_code < 500, response.text

            try:
                check()
            except Unsatisfiable:
                # An operation without inputs has no invalid request to generate.
                assert mode is GenerationMode.NEGATIVE, operation.label
    finally:
        app.state.service.close_sync()
    assert "POST /train" in seen
    assert "POST /predict" in seen
    assert {202, 422} <= seen["POST /train"]
    assert 422 in seen["POST /predict"]
