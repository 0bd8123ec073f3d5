"""The reason table is complete, and settings parse what operators write."""

from __future__ import annotations

import pytest

from webhook import reasons
from webhook.settings import Settings, load, parse_kube_version


def test_every_reason_has_a_sentence() -> None:
    constants = {v for k, v in vars(reasons).items() if k.isupper() and isinstance(v, str)}
    assert constants == set(reasons.SENTENCES)
    assert reasons.SKIPPED | reasons.REJECTED | {reasons.INJECTED} == constants


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("1.29", (1, 29), id="plain"),
        pytest.param("v1.28.3", (1, 28), id="git-version"),
        pytest.param("1.30+", (1, 30), id="provider-plus"),
    ],
)
def test_kube_version(text: str, expected: tuple[int, int]) -> None:
    assert parse_kube_version(text) == expected


@pytest.mark.parametrize(
    ("version", "native"),
    [
        pytest.param(None, True, id="unknown-means-native"),
        pytest.param("1.28", False, id="1.28-regular"),
        pytest.param("1.29", True, id="1.29-native"),
        pytest.param("2.0", True, id="2.0-native"),
    ],
)
def test_native_sidecar_from_version(version: str | None, native: bool) -> None:
    assert Settings(kube_version=version).native_sidecar is native


def test_flags_beat_environment_beat_defaults() -> None:
    env = {"SHARDMESH_PORT": "9443", "SHARDMESH_SIDECAR_IMAGE": "env/image:1",
           "SHARDMESH_THREADS": "4"}
    settings = load(["--port", "10443", "--extra-san", "127.0.0.1", "--extra-san", "::1"], env)
    assert settings.port == 10443
    assert settings.sidecar_image == "env/image:1"
    assert settings.threads == 4
    assert settings.extra_sans == ("127.0.0.1", "::1")
    assert settings.workers == Settings().workers


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--port", "http"], "invalid value 'http' for --port", id="port-not-number"),
        pytest.param(["--port", "0"], "invalid port 0", id="port-zero"),
        pytest.param(["--cert-mode", "acme"], "invalid cert mode 'acme'", id="cert-mode"),
        pytest.param(["--cert-mode", "file"], "needs --cert-file and --key-file",
                     id="file-no-paths"),
        pytest.param(["--kube-version", "latest"], "invalid Kubernetes version 'latest'",
                     id="kube-version"),
        pytest.param(["--offline"], "--offline has no API", id="offline-self-certs"),
    ],
)
def test_bad_settings_name_the_flag_and_value(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load(argv, {})


def test_render_and_policy_agree_on_volume_names() -> None:
    from webhook import policy, render

    assert set(policy.SIDECAR_VOLUMES) == {render.PODINFO_VOLUME, render.TOKEN_VOLUME}
