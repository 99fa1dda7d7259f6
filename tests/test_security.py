"""Security of the HTTP surface: keys, headers, CORS, no pickle, bandit."""

from __future__ import annotations

import hmac
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from jobs.settings import Settings
from service.app import create_app

KEY = "a-secret-key-never-logged"
ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings(data_dir=tmp_path_factory.mktemp("redis"), models=["emoji"],
                    api_keys=["other-key", KEY])


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings)) as client:
        yield client


def test_keys_are_compared_in_constant_time_with_every_accepted_key(client, monkeypatch):
    calls = []
    original = hmac.compare_digest

    def compare(a: bytes, b: bytes) -> bool:
        calls.append(a)
        return original(a, b)

    monkeypatch.setattr("service.deps.hmac.compare_digest", compare)
    assert client.get("/v1/edits/x", headers={"Authorization": "Bearer other-key"}
                      ).status_code == 404  # known key, unknown job
    assert client.get("/v1/edits/x", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert len(calls) == 4  # no early exit on the first match


def test_keys_never_reach_the_logs(client, caplog):
    with caplog.at_level(logging.DEBUG):
        client.get("/v1/edits/nope", headers={"Authorization": f"Bearer {KEY}"})
        client.get("/v1/edits/nope", headers={"Authorization": "Bearer wrong-key-123"})
    assert KEY not in caplog.text and "wrong-key-123" not in caplog.text


def test_every_response_has_the_security_headers_and_the_painter_a_csp(client):
    for path in ("/", "/painter.js", "/v1/models", "/healthz", "/v1/edits/nope"):
        response = client.get(path)
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["referrer-policy"] == "no-referrer", path
    painter = client.get("/").headers["content-security-policy"]
    assert "script-src 'self'" in painter and "default-src 'self'" in painter
    assert "unsafe-inline" not in painter
    assert "content-security-policy" not in client.get("/v1/models").headers


def test_cors_is_off_by_default_and_follows_the_setting(client, settings):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/v1/edits", headers=preflight
                                                               ).headers
    allowed = settings.model_copy(update={"cors_origins": ["https://app.example"]})
    with TestClient(create_app(allowed)) as cors:
        answer = cors.options("/v1/edits", headers=preflight)
        assert answer.headers["access-control-allow-origin"] == "https://app.example"
        other = cors.options("/v1/edits", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_no_pickle_on_the_path_from_the_network():
    """RQ jobs are JSON (tests/test_api.py checks the stored payload); nothing else unpickles."""
    for package in ("jobs", "service", "worker"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            assert "import pickle" not in text and "pickle.load" not in text, path
    from jobs.queue import rq_queue

    assert rq_queue.__code__.co_names.count("JSONSerializer") == 1


def test_bandit_finds_nothing_unjustified():
    """bandit over the runtime packages: clean, or each finding justified where it is (nosec)."""
    result = subprocess.run([sys.executable, "-m", "bandit", "-r", "jobs", "service", "worker",
                             "models", "cli", "-q", "-f", "custom",
                             "--msg-template", "{relpath}:{line} {test_id} {msg}"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
