"""The API against its own OpenAPI document (schemathesis, bounded): never a 5xx.

Only the server-error check runs: the schema cannot express every rule of
:class:`release.validation.RequestDraft` (an E.164 number, a birth date not in the
future), so schema-valid input is often, and rightly, refused with 422.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.portal.conftest import Api

MAX_EXAMPLES = 20


@pytest.fixture
def schema(api: Api) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/api/openapi.json", api.app)


def test_no_operation_answers_with_a_server_error(
    api: Api, schema: schemathesis.BaseSchema
) -> None:
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 6
    seen: set[int] = set()
    for operation in operations:

        @given(case=operation.as_strategy(), authorized=st.booleans())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case, authorized: bool) -> None:
            headers = dict(case.headers or {})
            if authorized:
                headers.pop("X-API-Key", None)
                headers["Authorization"] = f"Bearer {api.key}"
            response = case.call(headers=headers)
            assert response.status_code < 500, (case.method, case.path, response.text)
            seen.add(response.status_code)

        run()
    # Both refused and accepted calls happened: the run reached past authentication.
    assert {401, 403} & seen and 422 in seen and 200 in seen, seen
