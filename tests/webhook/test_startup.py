"""Start-up against an API server that is not answering yet (seen in CI: a relay
to the API server that dropped the first connection made the webhook exit)."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from webhook import cli
from webhook.settings import Settings


@pytest.mark.parametrize(("err", "expected"), [
    pytest.param(ConnectionRefusedError(111, "refused"), True, id="refused"),
    pytest.param(ApiException(status=503, reason="unavailable"), True, id="503"),
    pytest.param(ApiException(status=429, reason="slow down"), True, id="429"),
    pytest.param(ApiException(status=403, reason="forbidden"), False, id="403"),
    pytest.param(ApiException(status=401, reason="unauthorized"), False, id="401"),
    pytest.param(ValueError("bad setting"), False, id="value-error"),
])
def test_which_failures_are_worth_waiting_for(err: Exception, expected: bool) -> None:
    assert cli.transient(err) is expected


def test_a_transient_failure_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def prepare(settings: Settings) -> tuple[Settings, str, str, Any]:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError(104, "reset by peer")
        return settings, "crt", "key", None

    monkeypatch.setattr(cli, "prepare", prepare)
    monkeypatch.setattr(cli.time, "sleep", lambda _: None)
    assert cli.prepare_patiently(Settings(startup_wait_s=30.0))[1:3] == ("crt", "key")
    assert len(calls) == 3


def test_a_lasting_or_permanent_failure_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Exception] = []

    def refuse(settings: Settings) -> tuple[Settings, str, str, Any]:
        err = ApiException(status=403, reason="forbidden")
        calls.append(err)
        raise err

    monkeypatch.setattr(cli, "prepare", refuse)
    with pytest.raises(ApiException):
        cli.prepare_patiently(Settings())
    assert len(calls) == 1  # a 403 is not waited out

    def down(settings: Settings) -> tuple[Settings, str, str, Any]:
        raise ConnectionRefusedError(111, "refused")

    monkeypatch.setattr(cli, "prepare", down)
    with pytest.raises(ConnectionRefusedError):
        cli.prepare_patiently(Settings(startup_wait_s=0.0))
