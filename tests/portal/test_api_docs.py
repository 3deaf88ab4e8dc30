"""No HTML API docs on the portal's origin: only the OpenAPI document, under the CSP,
and nothing that points at another origin."""

from __future__ import annotations

import re

import pytest

from tests.portal.conftest import Api


@pytest.mark.parametrize(
    "path", ["/api/docs", "/api/redoc", "/docs", "/redoc", "/api/docs/oauth2-redirect"]
)
def test_there_are_no_html_docs(api: Api, path: str) -> None:
    r = api.client.get(path)
    assert r.status_code == 404
    assert "swagger" not in r.text.lower() and "redoc" not in r.text.lower()
    assert "default-src" in r.headers["content-security-policy"]


def test_the_openapi_document_stays_and_names_no_other_origin(api: Api) -> None:
    r = api.client.get("/api/openapi.json")
    assert r.status_code == 200
    assert r.json()["paths"]
    assert "default-src" in r.headers["content-security-policy"]
    assert not re.search(r"https?://", r.text), re.findall(r"https?://[^\"]*", r.text)
