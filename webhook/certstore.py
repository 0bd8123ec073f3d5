"""Self-managed certificates at the edge: the shared Secret and the caBundle.

Every replica runs the same loop (``sync``):
1. read the Secret; create it from a fresh bundle if absent. Replicas racing
   to create it get 409 Conflict except one; the losers read the winner's.
2. if the bundle needs renewing, patch the new ``caBundle`` into the webhook
   configuration first (so the API server trusts the new CA before anyone
   serves a certificate it signed), then replace the Secret with an
   optimistic-concurrency update. A 409 means another replica renewed first:
   use its bundle.
3. make sure every webhook of our MutatingWebhookConfiguration carries the
   Secret's ``caBundle`` (a loser of step 2 may have patched its own in).
4. write the serving certificate and key to files; the TLS layer reloads them
   (and, for the directory, the trust bundle it sends its clients).

With ``ca_overlap_s`` (the directory's), a CA rotation takes two renewals:
the next CA is staged (trusted in ``ca-bundle.crt``, kept in ``next-ca.*``)
and promoted to signing ``ca_overlap_s`` later (``webhook.certs``);
``stage_next_ca`` and ``promote_next_ca`` do either step now (tests, or an
operator who needs a new CA early).
"""

from __future__ import annotations

import _thread
import base64
import datetime as dt
import logging
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from webhook import certs
from webhook.certs import CertBundle
from webhook.logs import event

FIELDS = {"ca_cert": "ca.crt", "ca_key": "ca.key", "cert": "tls.crt", "key": "tls.key",
          "ca_bundle": "ca-bundle.crt"}
#: Present only while a next CA is staged.
OPTIONAL_FIELDS = {"next_ca_cert": "next-ca.crt", "next_ca_key": "next-ca.key"}
Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def to_secret_data(bundle: CertBundle) -> dict[str, bytes | str]:
    fields = {**FIELDS, **{a: k for a, k in OPTIONAL_FIELDS.items() if getattr(bundle, a)}}
    return {key: base64.b64encode(getattr(bundle, attr)).decode() for attr, key in fields.items()}


def from_secret_data(data: Mapping[str, bytes | str] | None) -> CertBundle | None:
    """The bundle in a Secret's data, or None if a field is missing (then it is rebuilt)."""
    if not data or any(key not in data for key in FIELDS.values()):
        return None
    fields = {**FIELDS, **{a: k for a, k in OPTIONAL_FIELDS.items() if k in data}}
    return CertBundle(**{attr: base64.b64decode(data[key]) for attr, key in fields.items()})


class CertSettings(Protocol):
    """What the store reads of a component's settings (the webhook's, the directory's)."""

    @property
    def secret_name(self) -> str: ...
    @property
    def injector_namespace(self) -> str: ...
    @property
    def service_name(self) -> str: ...
    @property
    def extra_sans(self) -> Sequence[str]: ...
    @property
    def cert_lifetime_s(self) -> float: ...
    @property
    def ca_lifetime_s(self) -> float: ...
    #: Empty: no MutatingWebhookConfiguration to keep current (the directory).
    @property
    def webhook_config_name(self) -> str: ...


class CertStore:
    """The Secret and MutatingWebhookConfiguration side of self-managed certificates."""

    def __init__(self, api: client.ApiClient, settings: CertSettings, clock: Clock = utcnow,
                 component: str = "webhook", ca_overlap_s: float = 0.0) -> None:
        self.core = client.CoreV1Api(api)
        self.admission = client.AdmissionregistrationV1Api(api)
        self.settings, self.clock, self.component = settings, clock, component
        self.ca_overlap_s = ca_overlap_s
        self.overlap = dt.timedelta(seconds=ca_overlap_s)
        self.sans = certs.service_sans(settings.service_name, settings.injector_namespace,
                                       settings.extra_sans)
        self.cert_lifetime = dt.timedelta(seconds=settings.cert_lifetime_s)
        self.ca_lifetime = dt.timedelta(seconds=settings.ca_lifetime_s)

    # --- the Secret ----------------------------------------------------------

    def _read(self) -> tuple[CertBundle | None, str | None]:
        """The stored bundle and the Secret's resourceVersion (None, None if absent)."""
        try:
            secret = self.core.read_namespaced_secret(self.settings.secret_name,
                                                      self.settings.injector_namespace)
        except ApiException as err:
            if err.status == 404:
                return None, None
            raise
        assert secret.metadata is not None
        return from_secret_data(secret.data), secret.metadata.resource_version

    def _secret(self, bundle: CertBundle, resource_version: str | None) -> client.V1Secret:
        meta = client.V1ObjectMeta(
            name=self.settings.secret_name, namespace=self.settings.injector_namespace,
            labels={"app.kubernetes.io/name": "shardmesh",
                    "app.kubernetes.io/component": self.component},
            resource_version=resource_version)
        return client.V1Secret(metadata=meta, type="kubernetes.io/tls",
                               data=to_secret_data(bundle))

    def ensure(self) -> CertBundle:
        """The bundle every replica serves; created or renewed here if needed."""
        for _ in range(5):
            bundle, version = self._read()
            if version is None:
                created = self._create()
                if created is not None:
                    return created
                continue
            now = self.clock()
            replacement = (certs.fresh(self.sans, now, self.cert_lifetime, self.ca_lifetime)
                           if bundle is None else
                           certs.renewed(bundle, self.sans, now, self.cert_lifetime,
                                         self.ca_lifetime, self.overlap))
            if replacement is None and bundle is not None:
                return bundle
            assert replacement is not None
            if self._replace(replacement, version):
                return replacement
        raise RuntimeError(f"could not agree on Secret {self.settings.secret_name} after 5 tries")

    def _create(self) -> CertBundle | None:
        bundle = certs.fresh(self.sans, self.clock(), self.cert_lifetime, self.ca_lifetime)
        self.patch_ca_bundle(bundle.ca_bundle)
        try:
            self.core.create_namespaced_secret(self.settings.injector_namespace,
                                               self._secret(bundle, None))
        except ApiException as err:
            if err.status == 409:
                event("another replica created the certificate Secret first; using it")
                return None
            raise
        event("created the certificate Secret", secret=self.settings.secret_name,
              not_after=certs.not_after(bundle.cert).isoformat())
        return bundle

    def _replace(self, bundle: CertBundle, resource_version: str) -> bool:
        self.patch_ca_bundle(bundle.ca_bundle)
        try:
            self.core.replace_namespaced_secret(self.settings.secret_name,
                                                self.settings.injector_namespace,
                                                self._secret(bundle, resource_version))
        except ApiException as err:
            if err.status == 409:
                event("another replica renewed the certificates first; using theirs")
                return False
            raise
        event("renewed the certificates", secret=self.settings.secret_name,
              not_after=certs.not_after(bundle.cert).isoformat(),
              ca_not_after=certs.not_after(bundle.ca_cert).isoformat(),
              next_ca_staged=bool(bundle.next_ca_cert))
        return True

    def stage_next_ca(self) -> CertBundle:
        """Stage a next CA now (trusted, not signing yet), whatever the current CA's age."""
        return self._step(lambda b: certs.staged(b, self.clock(), self.ca_lifetime))

    def promote_next_ca(self) -> CertBundle:
        """Make the staged next CA sign the serving certificate now, overlap or not."""
        return self._step(lambda b: certs.promoted(b, self.sans, self.clock(),
                                                   self.cert_lifetime))

    def _step(self, change: Callable[[CertBundle], CertBundle]) -> CertBundle:
        for _ in range(5):
            bundle, version = self._read()
            if bundle is None or version is None:
                raise RuntimeError(f"Secret {self.settings.secret_name} holds no certificates "
                                   "yet: nothing to rotate")
            replacement = change(bundle)
            if self._replace(replacement, version):
                return replacement
        raise RuntimeError(f"could not agree on Secret {self.settings.secret_name} after 5 tries")

    # --- the MutatingWebhookConfiguration ---------------------------------------

    def patch_ca_bundle(self, ca_bundle: bytes) -> bool:
        """Put ``ca_bundle`` into every webhook of our configuration; True if changed.
        A missing configuration is not an error: it may be applied later."""
        name = self.settings.webhook_config_name
        if not name:
            return False
        for _ in range(5):
            try:
                return self._patch_ca_bundle_once(name, ca_bundle)
            except ApiException as err:
                # 422: the test op failed, someone (another replica starting at the
                # same moment) changed the configuration between our read and patch.
                if err.status not in (409, 422):
                    raise
                event("webhook configuration changed while patching; reading it again",
                      name=name)
        raise RuntimeError(f"could not patch the caBundle of {name} after 5 tries")

    def _patch_ca_bundle_once(self, name: str, ca_bundle: bytes) -> bool:
        try:
            config = self.admission.read_mutating_webhook_configuration(name)
        except ApiException as err:
            if err.status == 404:
                event("webhook configuration not found; caBundle not patched",
                      logging.WARNING, name=name)
                return False
            raise
        wanted = base64.b64encode(ca_bundle).decode()
        ops = [
            {"op": "replace" if (hook.client_config.ca_bundle is not None) else "add",
             "path": f"/webhooks/{i}/clientConfig/caBundle", "value": wanted}
            for i, hook in enumerate(config.webhooks or [])
            if hook.client_config.ca_bundle != wanted
        ]
        if not ops:
            return False
        # The test op fails the patch if the list changed under us (then: read again).
        assert config.metadata is not None
        ops.insert(0, {"op": "test", "path": "/metadata/resourceVersion",
                       "value": str(config.metadata.resource_version)})
        self.admission.patch_mutating_webhook_configuration(name, ops)
        event("patched caBundle", name=name, webhooks=len(ops) - 1)
        return True

    def in_this_thread(self) -> CertStore:
        """The same store with an API client of its own, for another OS thread: under
        gevent the first client's connection pool belongs to the thread that used it
        (elsewhere: "Cannot switch to a different thread")."""
        api = client.ApiClient(configuration=self.core.api_client.configuration)
        return CertStore(api, self.settings, self.clock, self.component, self.ca_overlap_s)

    def sync(self, cert_file: str, key_file: str, ca_file: str = "") -> CertBundle:
        """Bring the Secret up to date and write its files. The trust bundle (``ca_file``)
        goes before the certificate: whoever sends it on never lags the certificate."""
        bundle = self.ensure()
        self.patch_ca_bundle(bundle.ca_bundle)
        if ca_file and certs.write_file(ca_file, bundle.ca_bundle):
            event("wrote the CA bundle", ca_file=ca_file,
                  cas=bundle.ca_bundle.count(b"BEGIN CERTIFICATE"))
        if certs.write_files(bundle.cert, bundle.key, cert_file, key_file):
            event("wrote the serving certificate", cert_file=cert_file,
                  not_after=certs.not_after(bundle.cert).isoformat())
        return bundle


def run_rotation(store: CertStore, cert_file: str, key_file: str, interval: float,
                 stop: threading.Event, ca_file: str = "") -> None:
    """Keep syncing every ``interval`` seconds in a daemon OS thread until ``stop`` is set.

    An OS thread even when gevent has patched ``threading`` (``webhook.early``):
    gunicorn forks its workers after this starts, and a greenlet would live on
    in every worker, while an OS thread stays in the master, the only process
    that may rotate.
    """

    def loop() -> None:
        own = store.in_this_thread()  # made here, in the OS thread that uses it
        while not stop.wait(interval):
            try:
                own.sync(cert_file, key_file, ca_file)
            except Exception as err:  # keep serving the current certificate
                event("certificate sync failed; will retry", logging.WARNING, error=str(err))

    _start_os_thread(loop)


def _start_os_thread(target: Callable[[], None]) -> None:
    start: Callable[..., object] = _thread.start_new_thread
    if "gevent" in sys.modules:
        from gevent import monkey

        start = monkey.get_original("_thread", "start_new_thread")
    start(target, ())
