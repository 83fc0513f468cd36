"""Generated hostile input (issue #7, point 6): schemathesis drives every operation of
the served OpenAPI document with generated bodies, headers, path and query values,
valid and invalid, and checks that nothing is a 5xx and every answer (status, content
type, headers, body) is one the document describes; an invalid request must be refused
(4xx) and a request without a token must be a 401.

Bounded and deterministic: `FUZZ_EXAMPLES` examples per operation and mode, with
Hypothesis derandomized and without its example database, so `make test` replays the
same cases every time. Set PARLEY_FUZZ_EXAMPLES for a longer local run.
"""

from __future__ import annotations

import asyncio
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.schemas import APIOperation

from tests.support.stack import Stack

pytestmark = [pytest.mark.security, pytest.mark.timeout(300)]

FUZZ_EXAMPLES = int(os.environ.get("PARLEY_FUZZ_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _fuzz(operation: APIOperation, mode: GenerationMode, base_url: str, token: str) -> None:
    checks = [*CHECKS, negative_data_rejection] if mode is GenerationMode.NEGATIVE else CHECKS
    auth = {"Authorization": f"Bearer {token}"}

    @settings(
        max_examples=FUZZ_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        public = operation.definition.raw.get("security") == []
        headers = dict(auth) if not public else {}
        headers.update(case.headers or {})
        if not public:
            headers["Authorization"] = auth["Authorization"]
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        extra = [ignored_auth] if not public and mode is GenerationMode.POSITIVE else []
        case.validate_response(response, checks=[*checks, *extra], headers=headers)

    run()


def _operations(base_url: str) -> list[APIOperation]:
    schema = schemathesis.openapi.from_url(f"{base_url}/api/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
async def test_generated_requests_to_every_operation_get_documented_answers(
    open_stack: Stack, mode: GenerationMode
):
    operations = await asyncio.to_thread(_operations, open_stack.url)
    assert len(operations) >= 20
    token = open_stack.token("fuzzer")
    failures: list[str] = []
    for operation in operations:
        if operation.label.startswith("GET /metrics"):
            continue  # Prometheus text, no schema to hold it to
        try:
            await asyncio.to_thread(_fuzz, operation, mode, open_stack.url, token)
        except Unsatisfiable:
            # No parameters, no body: nothing an invalid request could be made of.
            assert mode is GenerationMode.NEGATIVE, operation.label
        except Exception as exc:  # collected, so one run reports every operation
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
