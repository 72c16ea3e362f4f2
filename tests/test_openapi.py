"""/openapi.json is generated from the models and lists every route; /docs renders it."""

from __future__ import annotations

import re

import pytest
from aiohttp.test_utils import TestClient

from app.openapi import OPERATIONS, build_openapi, route_paths
from schema.events import (
    MAX_BATCH_EVENTS,
    MAX_USER_ID_CHARS,
    event_adapter,
)
from tests.conftest import app_of

# The published document and its examples; no storage involved.
pytestmark = pytest.mark.backend_independent


async def document(client: TestClient) -> dict:
    response = await client.get("/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    return await response.json()


async def test_every_route_of_the_app_is_in_the_document(client: TestClient) -> None:
    doc = await document(client)
    routes = route_paths(app_of(client))
    assert ("POST", "/events") in routes  # the helper sees the real routes
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    missing = routes - documented
    assert not missing, f"routes missing from OPERATIONS in app/openapi.py: {missing}"
    assert documented <= routes, "the document lists an operation the app does not serve"


def test_every_documented_operation_is_well_formed() -> None:
    for (method, path), operation in OPERATIONS.items():
        assert method in {"GET", "POST"}, method
        assert operation["summary"] and operation["responses"], (method, path)
        for status, response in operation["responses"].items():
            assert re.fullmatch(r"[1-5]\d\d", status), (method, path, status)
            if int(status) >= 400 and path not in {"/readyz"}:
                schema = response["content"]["application/problem+json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Problem"}
            if status == "503" and path != "/readyz":
                assert "Retry-After" in response["headers"]
        names = re.findall(r"{(\w+)}", path)
        params = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
        assert sorted(names) == sorted(params), (method, path)


async def test_schemas_come_from_the_validating_models(client: TestClient) -> None:
    doc = await document(client)
    assert doc["openapi"] == "3.1.0"
    schemas = doc["components"]["schemas"]
    # The request schemas are exactly what pydantic derives from the validating models.
    generated = event_adapter.json_schema(ref_template="#/components/schemas/{model}")
    for name in ("ViewEvent", "ClickEvent", "LocationEvent", "ViewPayload", "LocationPayload"):
        assert schemas[name] == generated["$defs"][name]
    assert schemas["ViewEvent"]["additionalProperties"] is False
    assert schemas["ViewEvent"]["properties"]["user_id"]["maxLength"] == MAX_USER_ID_CHARS
    lat = schemas["LocationPayload"]["properties"]["latitude"]
    assert (lat["minimum"], lat["maximum"]) == (-90, 90)
    assert schemas["EventBatch"]["properties"]["events"]["maxItems"] == MAX_BATCH_EVENTS
    events = doc["paths"]["/events"]["post"]
    assert set(events["responses"]) >= {"202", "400", "408", "413", "415", "422", "500", "503"}
    assert events["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Event"
    }
    by_day = doc["paths"]["/analytics/event-counts-by-day"]["get"]
    assert {p["name"] for p in by_day["parameters"]} == {
        "event_type",
        "start_date",
        "end_date",
        "tz",
    }
    # Every $ref resolves.
    text = str(doc)
    for ref in set(re.findall(r"#/components/schemas/(\w+)", text)):
        assert ref in schemas, ref


@pytest.mark.parametrize(
    ("value", "matches"),
    [
        ("2025-05-28", True),
        ("2025-05-28T09:30:00+02:00", True),
        ("2025-05-28T09:30:00.123456789Z", True),
        ("2025-05-28T09:30:00", False),  # no offset: the API answers 400
        ("28/05/2025", False),
        ("٢٠٢٥-٠٥-٢٨", False),
    ],
)
async def test_date_parameter_pattern(client: TestClient, value: str, matches: bool) -> None:
    doc = await document(client)
    (param,) = [
        p
        for p in doc["paths"]["/analytics/event-counts"]["get"]["parameters"]
        if p["name"] == "start_date"
    ]
    pattern = param["schema"]["pattern"]
    assert bool(re.search(pattern, value)) is matches
    response = await client.get("/analytics/event-counts", params={"start_date": value})
    if not matches:
        assert response.status == 400


def test_build_openapi_is_pure_and_stable(client: TestClient) -> None:
    app = app_of(client)
    assert build_openapi(app) == build_openapi(app)
    assert build_openapi(app, server_url="http://x")["servers"] == [{"url": "http://x"}]


async def test_docs_page_and_its_offline_assets(client: TestClient) -> None:
    page = await client.get("/docs")
    assert page.status == 200 and page.content_type == "text/html"
    html = await page.text()
    assert "http://" not in html and "https://" not in html  # nothing from another origin
    for name, kind in [
        ("swagger-ui-bundle.js", "text/javascript"),
        ("swagger-ui.css", "text/css"),
        ("docs.js", "text/javascript"),
        ("LICENSE", "text/plain"),
    ]:
        asset = await client.get(f"/docs/static/{name}")
        assert asset.status == 200, name
        assert asset.content_type == kind
        assert asset.headers["X-Content-Type-Options"] == "nosniff"
        again = await client.get(
            f"/docs/static/{name}", headers={"If-None-Match": asset.headers["ETag"]}
        )
        assert again.status == 304
    assert (await client.get("/docs/static/../app.py")).status == 404
    assert (await client.get("/docs/static/nope.js")).status == 404


@pytest.mark.browser
@pytest.mark.slow
def test_docs_page_renders_in_chromium_without_csp_violations(tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    from scripts.crash_test import Service

    service = Service(tmp_path / "docs.db")
    service.start()
    problems: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium")
            try:
                page = browser.new_page()
                page.on(
                    "console",
                    lambda m: problems.append(m.text) if m.type in {"error", "warning"} else None,
                )
                page.on("pageerror", lambda e: problems.append(str(e)))
                page.on(
                    "request",
                    lambda r: (
                        None
                        if r.url.startswith((service.url, "data:"))
                        else problems.append(f"external request {r.url}")
                    ),
                )
                page.goto(service.url + "/docs")
                page.wait_for_selector(".opblock", timeout=20_000)
                count = page.locator(".opblock").count()
                page.locator(".opblock-summary").first.click()
                page.wait_for_timeout(300)
            finally:
                browser.close()
    finally:
        service.terminate()
    assert count >= len(OPERATIONS) - 2
    assert not problems, problems


async def test_the_problem_schema_documents_the_cap_and_the_strict_rules(
    client: TestClient,
) -> None:
    """Issue 10: `errors` is capped at 100 with `errors_omitted`; a repeated key is a 400; a
    parameter is taken exactly as sent; `url` must hold more than whitespace."""
    doc = await document(client)
    problem = doc["components"]["schemas"]["Problem"]
    assert "errors_omitted" in problem["properties"]
    assert "errors_omitted" not in problem.get("required", [])
    assert "100" in problem["properties"]["errors"]["description"]
    events = doc["paths"]["/events"]["post"]
    assert "repeated key" in events["requestBody"]["description"]
    start = next(
        p
        for p in doc["paths"]["/analytics/event-counts"]["get"]["parameters"]
        if p["name"] == "start_date"
    )
    assert "exactly as sent" in start["description"]
    assert doc["components"]["schemas"]["ViewPayload"]["properties"]["url"]["pattern"] == r"\S"
    admin = doc["paths"]["/admin/rollups/rebuild"]["post"]["requestBody"]
    assert "repeated key" in admin["description"]
