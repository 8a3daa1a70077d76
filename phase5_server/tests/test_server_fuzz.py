"""Fuzz every operation of the server's OpenAPI schema (schemathesis): no response is a 5xx.

Runs against the tiny random-weight server (real uvicorn, real HTTP) so that thousands of odd but
schema-valid requests cost little; generation lengths are bounded by its max_model_len of 128.
"""

from __future__ import annotations

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings


def test_no_server_errors(tiny_server):
    """Every operation, 40 generated cases each (schema-valid and not), none answered with a 5xx."""
    schema = schemathesis.openapi.from_url(tiny_server.url + "/openapi.json")
    session = requests.Session()
    session.trust_env = False
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None, derandomize=True)
        def check(case):
            response = case.call(session=session, timeout=60)
            assert response.status_code < 500, (
                f"{case.method} {case.path} {case.body!r} -> {response.status_code}: {response.text[:300]}")
            if response.status_code >= 400:
                assert {"message", "type", "param", "code"} <= set(response.json()["error"])

        check()


def test_server_healthy_after_fuzzing(tiny_server):
    assert httpx.get(tiny_server.url + "/health", trust_env=False).status_code == 200
    tiny_server.wait_idle()
