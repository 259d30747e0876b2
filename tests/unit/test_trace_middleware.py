"""The ingress's trace-and-measure middleware: trace ids in and out, metrics by route template."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from api.middleware import MAX_TRACE_ID, TraceAndMeasure
from core.logs import trace_id_var

pytestmark = pytest.mark.unit


def app() -> FastAPI:
    application = FastAPI()
    application.add_middleware(TraceAndMeasure)

    @application.get("/things/{thing_id}")
    async def thing(thing_id: str, request: Request) -> dict[str, str | None]:
        return {"state": request.state.trace_id, "context": trace_id_var.get()}

    @application.get("/broken")
    async def broken() -> None:
        raise RuntimeError("bug")

    return application


def count(route: str, status: str) -> float:
    value = REGISTRY.get_sample_value("tributary_http_requests_total",
                                      {"method": "GET", "route": route, "status": status})
    return value or 0.0


def test_a_supplied_trace_id_reaches_the_handler_and_comes_back() -> None:
    with TestClient(app()) as client:
        response = client.get("/things/a", headers={"X-Trace-Id": "abc123"})
    assert response.json() == {"state": "abc123", "context": "abc123"}
    assert response.headers["x-trace-id"] == "abc123"


def test_a_new_trace_id_is_made_and_an_overlong_one_is_cut() -> None:
    with TestClient(app()) as client:
        made = client.get("/things/a")
        cut = client.get("/things/a", headers={"X-Trace-Id": "x" * 500})
    assert len(made.headers["x-trace-id"]) == 32 and made.json()["state"] == made.headers["x-trace-id"]
    assert cut.headers["x-trace-id"] == "x" * MAX_TRACE_ID


def test_requests_are_counted_by_route_template_and_status() -> None:
    before_ok, before_404 = count("/things/{thing_id}", "200"), count("unmatched", "404")
    before_500 = count("/broken", "500")
    with TestClient(app(), raise_server_exceptions=False) as client:
        for thing_id in ("1", "2", "3"):
            assert client.get(f"/things/{thing_id}").status_code == 200
        assert client.get("/nowhere").status_code == 404
        assert client.get("/broken").status_code == 500
    assert count("/things/{thing_id}", "200") - before_ok == 3
    assert count("unmatched", "404") - before_404 == 1
    assert count("/broken", "500") - before_500 == 1
