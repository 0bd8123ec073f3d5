"""The WSGI lane in front of Flask: which requests it takes, and that it answers
exactly as Flask alone does (status, headers and bytes) for every golden case."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from tests.webhook.golden import TESTDATA, load_input, review
from webhook.logs import LOGGER, JsonFormatter
from webhook.mutate_lane import MutateLane, plain_length, status_line
from webhook.server import create_app
from webhook.settings import Settings

LIMIT = 1000


def environ(**changes: Any) -> dict[str, Any]:
    base = {"PATH_INFO": "/mutate", "REQUEST_METHOD": "POST", "QUERY_STRING": "timeout=10s",
            "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": "12"}
    return {**base, **changes}


@pytest.mark.parametrize(
    ("changes", "taken"),
    [
        pytest.param({}, 12, id="plain-review"),
        pytest.param({"CONTENT_LENGTH": str(LIMIT)}, LIMIT, id="at-the-cap"),
        pytest.param({"CONTENT_LENGTH": str(LIMIT + 1)}, None, id="over-the-cap"),
        pytest.param({"CONTENT_LENGTH": ""}, None, id="no-length-chunked"),
        pytest.param({"CONTENT_LENGTH": "-1"}, None, id="negative-length"),
        pytest.param({"CONTENT_TYPE": "application/json; charset=utf-8"}, None,
                     id="media-type-parameter"),
        pytest.param({"CONTENT_TYPE": "text/plain"}, None, id="other-media-type"),
        pytest.param({"REQUEST_METHOD": "GET"}, None, id="get"),
        pytest.param({"PATH_INFO": "/mutate/"}, None, id="other-path"),
        pytest.param({"PATH_INFO": "/healthz"}, None, id="healthz"),
    ],
)
def test_lane_takes_only_plain_reviews(changes: dict[str, Any], taken: int | None) -> None:
    assert plain_length(environ(**changes), LIMIT) == taken


def test_declined_requests_reach_the_app_untouched() -> None:
    seen: list[dict[str, Any]] = []

    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(env)
        start_response("204 No Content", [])
        return []

    def answer(body: bytes, started: float) -> tuple[int, bytes]:
        raise AssertionError(f"the lane answered {body!r}")

    env = environ(REQUEST_METHOD="PUT", **{"wsgi.input": io.BytesIO(b'{"x": 1}')})
    assert list(MutateLane(app, answer, LIMIT)(env, lambda *_: None)) == []
    assert seen == [env] and env["wsgi.input"].tell() == 0


def test_lane_reads_exactly_the_body_and_answers_with_its_length() -> None:
    got: list[bytes] = []
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def answer(body: bytes, _started: float) -> tuple[int, bytes]:
        got.append(body)
        return 415, b'{"error":"x"}'

    stream = io.BytesIO(b'{"kind": 1}\nNEXT REQUEST')
    out = MutateLane(lambda *_: [], answer, LIMIT)(
        environ(CONTENT_LENGTH="11", **{"wsgi.input": stream}),
        lambda status, headers: started.append((status, headers)))
    assert got == [b'{"kind": 1}'] and list(out) == [b'{"error":"x"}']
    assert started == [("415 Unsupported Media Type",
                        [("Content-Type", "application/json"), ("Content-Length", "13")])]


def test_status_lines() -> None:
    assert [status_line(s) for s in (200, 400, 413, 503)] == [
        "200 OK", "400 Bad Request", "413 Request Entity Too Large", "503 Service Unavailable"]


def golden_inputs() -> list[Any]:
    return [pytest.param(p, id=p.stem) for p in sorted(TESTDATA.glob("*.yaml"))]


@pytest.mark.parametrize("path", golden_inputs())
def test_lane_and_flask_answer_byte_for_byte_alike(path: Path) -> None:
    pod, namespace_obj, namespace = load_input(path)
    name = (namespace_obj.get("metadata") or {}).get("name")
    body = json.dumps(review(pod, namespace, False)).encode()
    answers = []
    for lane in (True, False):
        app = create_app(Settings(), lambda ns: namespace_obj if ns == name else {}, lane=lane)
        resp = app.test_client().post("/mutate?timeout=10s", data=body,
                                      content_type="application/json")
        answers.append((resp.status_code, resp.headers.get("Content-Type"),
                        resp.headers.get("Content-Length"), resp.get_data()))
    assert answers[0] == answers[1]
    assert answers[0][0] == 200


@pytest.mark.parametrize("body", [b"{", b"", b"[]", b'{"kind": "AdmissionReview"}'])
def test_lane_and_flask_refuse_broken_reviews_alike(body: bytes) -> None:
    answers = []
    for lane in (True, False):
        resp = create_app(Settings(), lambda _ns: {}, lane=lane).test_client().post(
            "/mutate", data=body, content_type="application/json")
        answers.append((resp.status_code, resp.get_data()))
    assert answers[0] == answers[1]
    assert answers[0][0] == 400


def test_a_bug_in_a_review_is_a_json_500_either_way() -> None:
    def broken(_name: str) -> dict[str, Any]:
        raise KeyError("surprise")

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    LOGGER.addHandler(handler)
    pod, _, namespace = load_input(TESTDATA / "pod-annotation-true.yaml")
    try:
        for lane in (True, False):
            records.clear()
            resp = create_app(Settings(), broken, lane=lane).test_client().post(
                "/mutate", json=review(pod, namespace, False))
            assert resp.status_code == 500
            assert "internal error: KeyError" in resp.get_json()["message"]
            # One line for the bug: at error level, with its traceback.
            assert [(r.levelname, r.getMessage()) for r in records] == [("ERROR", "bad review")]
            assert records[0].exc_info is not None and records[0].exc_info[0] is KeyError
            line = json.loads(JsonFormatter().format(records[0]))
            assert line["error"].startswith("internal error: KeyError")
            assert "raise KeyError" in line["traceback"]
    finally:
        LOGGER.removeHandler(handler)


def test_reviews_are_counted_by_the_way_they_came() -> None:
    from prometheus_client import REGISTRY

    def count(via: str) -> float:
        value = REGISTRY.get_sample_value("shardmesh_webhook_reviews_total", {"via": via})
        return value or 0.0

    before = {via: count(via) for via in ("lane", "flask")}
    client = create_app(Settings(), lambda _ns: {}).test_client()
    pod, _, namespace = load_input(TESTDATA / "pod-annotation-true.yaml")
    body = json.dumps(review(pod, namespace, False)).encode()
    client.post("/mutate", data=body, content_type="application/json")
    client.post("/mutate", data=body, content_type="application/json; charset=utf-8")
    client.post("/mutate", data=body, content_type="application/json")
    assert count("lane") == before["lane"] + 2 and count("flask") == before["flask"] + 1
