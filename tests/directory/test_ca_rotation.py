"""The directory's CA rotation reaches running sidecars (issue 14, README "Troubleshooting").

A real ``shardmesh directory`` (self-managed certificates, its own namespace, so
the rotation touches no other module's directory) and an in-process sidecar
with no kubeconfig, injected with the CA of its day only. The rotation is
driven through the directory's own ``CertStore`` (``stage_next_ca``, then
``promote_next_ca``: what the sync does after ``--ca-overlap-s``), not waited for.
"""

from __future__ import annotations

import base64
import urllib.request
from collections.abc import Iterator

import pytest
from kubernetes import client

from directory.client import client_context
from directory.settings import Settings
from tests.cluster.controlplane import ControlPlane
from tests.cluster.naming import namespace_name
from tests.cluster.waiting import wait_for
from tests.directory.harness import DirectoryProcess
from tests.directory.test_sidecar_cluster import DirectoryCluster
from tests.sidecar.test_cluster import all_ready
from webhook import certs
from webhook.certstore import CertStore

pytestmark = pytest.mark.cluster

BEGIN = b"-----BEGIN CERTIFICATE-----"


@pytest.fixture
def directory(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[DirectoryProcess]:
    api = client.CoreV1Api(control_plane.api_client())
    ns = namespace_name("dirca-home")
    api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    wait_for(lambda: api.read_namespaced_config_map("kube-root-ca.crt", ns),
             f"ConfigMap kube-root-ca.crt in {ns}", timeout=120)
    # Certificates looked at twice a second; an overlap the test never waits out.
    proc = DirectoryProcess(control_plane, ns, tmp_path_factory.mktemp("dirca"))
    try:
        yield proc.start("--cert-check-s", "0.5", "--ca-overlap-s", "3600")
    finally:
        proc.stop()
        api.delete_namespace(ns)


@pytest.fixture
def store(directory: DirectoryProcess) -> CertStore:
    """The directory's certificate Secret, as its own rotation thread sees it."""
    settings = Settings(injector_namespace=directory.namespace, extra_sans=("127.0.0.1",))
    return CertStore(directory.cp.api_client(), settings, component="directory",
                     ca_overlap_s=settings.ca_overlap_s)




def serves_under(directory: DirectoryProcess, ca: bytes) -> bool:
    """Whether a client trusting only ``ca`` completes a handshake with the directory."""
    try:
        with urllib.request.urlopen(directory.url + "/healthz", timeout=5,
                                    context=client_context(ca)) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def secret_bundle(directory: DirectoryProcess) -> bytes:
    secret = client.CoreV1Api(directory.cp.api_client()).read_namespaced_secret(
        "shardmesh-directory-certs", directory.namespace)
    return base64.b64decode(secret.data["ca-bundle.crt"])


def test_a_running_sidecar_follows_a_ca_rotation_without_a_restart(
    directory: DirectoryProcess, store: CertStore, cluster: DirectoryCluster, reader: str,
) -> None:
    old_ca = directory.ca
    assert old_ca.count(BEGIN) == 1
    cluster.create(2)
    cluster.start_directory_sidecar(reader, [directory.url], old_ca)
    cluster.wait_map(all_ready(2), "2 ready ordinals through the directory")
    assert cluster.route()["directory"]["trusted_cas"] == 1

    staged = store.stage_next_ca()
    new_ca = staged.next_ca_cert
    # The bundle first: the webhook's file (the Secret) and the stream both carry old + new,
    assert secret_bundle(directory).count(BEGIN) == 2
    wait_for(lambda: cluster.route()["directory"]["trusted_cas"] == 2,
             "the sidecar trusting the next CA it was sent", timeout=15)
    _, trust = directory.get("/v1/trust")
    assert trust["cas"] == 2 and new_ca.decode() in trust["ca_bundle"]
    # while the directory still serves under the old CA (the overlap).
    assert serves_under(directory, old_ca) and not serves_under(directory, new_ca)

    promoted = store.promote_next_ca()
    assert promoted.ca_cert == new_ca and promoted.next_ca_cert == b""
    wait_for(lambda: serves_under(directory, new_ca) and not serves_under(directory, old_ca),
             "the directory serving a certificate of the new CA", timeout=15)

    # Every new connection now needs the new CA: restart the directory, so the
    # sidecar's stream must be made again, then change the map.
    directory.stop()
    directory.launch()
    cluster.scale(3)
    cluster.wait_map(all_ready(3), "the scale, after the switch to the new CA", timeout=60)
    route = cluster.route()
    assert not route["stale"] and route["directory"]["error"] is None
    assert cluster.losses("ca_mismatch") == 0
    cluster.routes_correctly(3)


def test_a_sidecar_that_missed_the_overlap_keeps_its_map_and_names_the_ca_mismatch(
    directory: DirectoryProcess, store: CertStore, cluster: DirectoryCluster, reader: str,
) -> None:
    cluster.create(2)
    cluster.start_directory_sidecar(reader, [directory.url], directory.ca)
    cluster.wait_map(all_ready(2), "2 ready ordinals through the directory")
    directory.stop()  # the sidecar is away for the whole rotation
    wait_for(lambda: cluster.route()["stale"], "stale while the directory is down", timeout=15)
    store.stage_next_ca()
    store.promote_next_ca()
    directory.launch()

    wait_for(lambda: cluster.losses("ca_mismatch") >= 1, "a CA mismatch", timeout=30)
    route = cluster.route()
    assert "CA mismatch" in route["directory"]["error"], route
    assert "restart the pod" in route["directory"]["error"]
    assert route["stale"] and route["directory"]["trusted_cas"] == 1
    cluster.routes_correctly(2)  # the last map, stale, still serves


def test_a_sidecar_given_an_unrelated_ca_is_refused_and_reports_the_mismatch(
    directory: DirectoryProcess, cluster: DirectoryCluster, reader: str,
) -> None:
    import datetime as dt

    unrelated, _ = certs.new_ca(dt.datetime.now(dt.UTC), dt.timedelta(days=1))
    cluster.create(2)
    cluster.start_directory_sidecar(reader, [directory.url], unrelated)
    wait_for(lambda: cluster.losses("ca_mismatch") >= 1, "a CA mismatch", timeout=30)
    route = cluster.route()
    assert "CA mismatch" in route["directory"]["error"], route
    assert not route["directory"]["connected"] and route["directory"]["generation"] is None
    assert directory.metric("shardmesh_directory_subscribers") == 0
