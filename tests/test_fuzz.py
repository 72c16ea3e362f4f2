"""Schemathesis against the live service's own /openapi.json.

Every generated request (schema-valid and schema-violating, every operation) must get a
status the document lists, never a 5xx, with a body and headers that conform to it; and
schema-violating requests must be rejected. Bounded: ``MAX_EXAMPLES`` per operation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from scripts.crash_test import Service

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 40
TOKEN = "fuzz-admin-token-0123456789"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
SEEN: Counter[int] = Counter()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """The service as a process, on a SQLite file, then on a PostgreSQL database."""
    workdir: Path = tmp_path_factory.mktemp("fuzz")
    databases = request.getfixturevalue("pg_databases") if request.param == "postgres" else None
    db = databases.take() if databases else workdir / "fuzz.db"
    SEEN.clear()
    service = Service(db, "--admin-token", TOKEN, log_path=workdir / "fuzz.log")
    service.start()
    try:
        yield service
    finally:
        service.terminate()
        if databases:
            databases.give_back(str(db))


def _run(operation, mode: GenerationMode, live: Service, failures: list[str]) -> None:  # type: ignore[no-untyped-def]
    auth = {"Authorization": f"Bearer {TOKEN}"} if operation.path.startswith("/admin/") else None

    @given(operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: report, do not minimise
    )
    def one(case) -> None:  # type: ignore[no-untyped-def]
        # A case whose headers are the invalid part (a malformed or missing Authorization)
        # is sent as generated: the real token would make it a valid request.
        own_headers = case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER)
        headers = None if own_headers else auth
        response = case.call(base_url=live.url, headers=headers, timeout=10)
        SEEN[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except AssertionError as exc:  # schemathesis' failures are AssertionError subclasses
            if len(failures) < 20:
                failures.append(f"{operation.label} [{mode}]: {str(exc)[:1500]}")

    try:
        one()
    except Unsatisfiable:
        # Nothing to break: an operation without parameters or body has no invalid input.
        assert mode is GenerationMode.NEGATIVE, operation.label


def test_every_operation_answers_as_documented(live: Service) -> None:
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    # A schema-violating body can also be rejected for its size (413, a listed status).
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _run(operation, mode, live, failures)
    assert not failures, "\n\n".join(failures)


def test_fuzz_summary(live: Service) -> None:
    """Runs last in this module: the figures for the closing notes, and no 5xx at all."""
    total = sum(SEEN.values())
    server_errors = sum(n for status, n in SEEN.items() if status >= 500)
    print(f"\nfuzz cases run: {total}, 5xx seen: {server_errors}, statuses: {dict(SEEN)}")
    assert total > 0
    assert server_errors == 0
    assert "Traceback" not in live.log()
