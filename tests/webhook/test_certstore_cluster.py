"""CertStore against the real kube-apiserver: patching the caBundle while another
replica changes the webhook configuration under it (two replicas starting at once)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from kubernetes import client

from tests.cluster.controlplane import ControlPlane
from tests.webhook import clusterhook
from webhook.certstore import CertStore
from webhook.settings import Settings

pytestmark = pytest.mark.cluster


class Interfering:
    """The admission API, except that right after the first read another writer
    changes the configuration, as a replica starting at the same moment would."""

    def __init__(self, api: client.ApiClient, name: str) -> None:
        self.real = client.AdmissionregistrationV1Api(api)
        self.name, self.reads = name, 0

    def read_mutating_webhook_configuration(self, name: str) -> Any:
        config = self.real.read_mutating_webhook_configuration(name)
        self.reads += 1
        if self.reads == 1:
            self.real.patch_mutating_webhook_configuration(
                self.name, {"metadata": {"labels": {"other-replica": "was-here"}}})
        return config

    def patch_mutating_webhook_configuration(self, name: str, body: Any) -> Any:
        return self.real.patch_mutating_webhook_configuration(name, body)


def test_a_configuration_changed_between_read_and_patch_is_read_again(
        control_plane: ControlPlane) -> None:
    api = control_plane.api_client()
    reg = clusterhook.register(api, port=443)
    try:
        store = CertStore(api, Settings(injector_namespace=reg.injector_namespace,
                                        webhook_config_name=reg.config_name, offline=False))
        admission = Interfering(api, reg.config_name)
        store.admission = admission  # type: ignore[assignment]
        assert store.patch_ca_bundle(b"-----BEGIN CERTIFICATE-----\nCA\n") is True
        assert admission.reads == 2  # the first patch's test op failed (422): read again
        config = admission.real.read_mutating_webhook_configuration(reg.config_name)
        assert config.metadata.labels["other-replica"] == "was-here"  # their change is kept
        assert {base64.b64decode(h.client_config.ca_bundle) for h in config.webhooks} == \
            {b"-----BEGIN CERTIFICATE-----\nCA\n"}
    finally:
        clusterhook.unregister(api, reg)
