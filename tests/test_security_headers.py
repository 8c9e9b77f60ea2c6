"""Check the security headers on pages, fragments, errors and the RQ dashboard."""

import re

import pytest

from tests.conftest import login


@pytest.mark.parametrize("path", ["/login", "/healthz", "/no-such-page", "/static/app.css"])
def test_strict_policy_everywhere(client, path):
    response = client.get(path)
    policy = response.headers["Content-Security-Policy"]

    assert "script-src 'self';" in policy
    assert "style-src 'self';" in policy
    assert "'unsafe-inline'" not in policy
    assert "'unsafe-eval'" not in policy
    assert "frame-ancestors 'none'" in policy
    assert "object-src 'none'" in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "same-origin"
    response.close()


def test_no_hsts_over_http(client):
    assert "Strict-Transport-Security" not in client.get("/login").headers


def test_hsts_over_https(client):
    response = client.get("/login", base_url="https://localhost")

    assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")


def test_dashboard_policy_allows_its_inline_scripts(app, users):
    client = app.test_client()
    login(client, users["admin"][1])

    policy = client.get("/rq/").headers["Content-Security-Policy"]

    assert "script-src 'self' 'unsafe-inline' 'unsafe-eval'" in policy
    assert "frame-ancestors 'none'" in policy


INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)
EVENT_ATTRIBUTE = re.compile(r"\son[a-z]+\s*=", re.IGNORECASE)
STYLE_ATTRIBUTE = re.compile(r"\sstyle\s*=", re.IGNORECASE)


@pytest.mark.parametrize(
    "path", ["/", "/people", "/deals/new", "/automations/", "/automations/new", "/password"]
)
def test_page_has_no_inline_code(manager_client, path):
    html = manager_client.get(path).text

    assert INLINE_SCRIPT.findall(html) == []
    assert EVENT_ATTRIBUTE.findall(html) == []
    assert STYLE_ATTRIBUTE.findall(html) == []
