"""A bounded schemathesis run over the service's OpenAPI schema: no input gives a 500."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from support.serving import serving_settings

from serving.app import create_app
from serving.local_server import running_server

pytestmark = pytest.mark.server

EXAMPLES_PER_OPERATION = 12
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")


def test_no_generated_request_causes_a_server_error(tmp_path: Path,
                                                    tiny_model_dir: Path) -> None:
    config = serving_settings(tmp_path, tiny_model_dir, poll_interval_s=3600,
                              rate_limit_per_minute=1_000_000,
                              token_limit_per_minute=1_000_000_000)
    with running_server(create_app(config)) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 9
        server_errors: list[str] = []
        calls = 0
        slowest = 0.0
        with httpx.Client(timeout=60) as http:
            http.get(f"{url}/healthz")
            for operation in operations:
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None,
                              database=None, phases=[Phase.generate],
                              suppress_health_check=list(HealthCheck))
                    @given(case=operation.as_strategy(mode))
                    def check(case: Any) -> None:
                        nonlocal calls, slowest
                        if isinstance(case.body, dict):
                            # Generation time grows with max_tokens; the schema allows 4096.
                            for name in TOKEN_FIELDS:
                                if isinstance(case.body.get(name), int):
                                    case.body[name] = min(case.body[name], 4)
                        started = time.perf_counter()
                        response = case.call(base_url=url, timeout=120)
                        calls += 1
                        slowest = max(slowest, time.perf_counter() - started)
                        if response.status_code >= 500:
                            server_errors.append(f"{case.method} {case.formatted_path} "
                                                 f"{response.status_code}: "
                                                 f"{response.text[:200]}")

                    try:
                        check()
                    except Unsatisfiable:
                        # No invalid input exists for an operation without parameters.
                        assert mode is GenerationMode.NEGATIVE
        print(f"schemathesis: {len(operations)} operations, {calls} requests, slowest "
              f"{slowest:.1f} s, "
              f"{len(server_errors)} server errors")
        assert not server_errors, server_errors[:5]
