"""Why the injector decided what it did: one named constant per reason.

Every admission decision carries exactly one of these. The constant is the
machine-readable part (logged, counted in ``/metrics``, returned as the audit
annotation ``decision``); ``SENTENCES`` gives each a sentence for humans, as
linkerd's ``report.go`` does. Adding a reason means adding its sentence: a
test checks that the table is complete.
"""

from __future__ import annotations

from typing import Final, Literal

Result = Literal["injected", "skipped", "rejected"]

INJECTED: Final = "injected"

# --- skipped: the pod is admitted unchanged --------------------------------
INJECTION_DISABLED_POD: Final = "injection_disabled_pod"
INJECTION_DISABLED_NAMESPACE: Final = "injection_disabled_namespace"
INJECTION_NOT_ENABLED: Final = "injection_not_enabled"
HOST_NETWORK: Final = "host_network"
MIRROR_POD: Final = "mirror_pod"
SYSTEM_NAMESPACE: Final = "system_namespace"
INJECTOR_NAMESPACE: Final = "injector_namespace"
ALREADY_INJECTED: Final = "already_injected"
NOT_POD_CREATE: Final = "not_pod_create"

# --- rejected: the pod is denied ---------------------------------------------
INVALID_ANNOTATION: Final = "invalid_annotation"
CONFLICTING_SETTING: Final = "conflicting_setting"
NAME_TAKEN: Final = "name_taken"

SENTENCES: Final[dict[str, str]] = {
    INJECTED: "the shard-router sidecar was injected",
    INJECTION_DISABLED_POD: "the pod sets shard.io/inject to \"false\"",
    INJECTION_DISABLED_NAMESPACE: "the namespace sets shard.io/inject to \"false\"",
    INJECTION_NOT_ENABLED: "neither the pod nor its namespace sets shard.io/inject to \"true\"",
    HOST_NETWORK: "the pod uses the host network, where the sidecar's ports could collide",
    MIRROR_POD: "the pod is a mirror (static) pod, which the API server cannot change",
    SYSTEM_NAMESPACE: "the pod is in a Kubernetes system namespace",
    INJECTOR_NAMESPACE: "the pod is in the injector's own namespace",
    ALREADY_INJECTED: "the pod already carries the shard-router sidecar",
    NOT_POD_CREATE: "the review is not the creation of a pod",
    INVALID_ANNOTATION: "a shard.io annotation or label has an invalid value",
    CONFLICTING_SETTING: "the annotation and the label shard.io/inject disagree on one object",
    NAME_TAKEN: "the pod already uses a volume name that the sidecar needs",
}

SKIPPED: Final = frozenset(
    {
        INJECTION_DISABLED_POD, INJECTION_DISABLED_NAMESPACE, INJECTION_NOT_ENABLED,
        HOST_NETWORK, MIRROR_POD, SYSTEM_NAMESPACE, INJECTOR_NAMESPACE, ALREADY_INJECTED,
        NOT_POD_CREATE,
    }
)
REJECTED: Final = frozenset({INVALID_ANNOTATION, CONFLICTING_SETTING, NAME_TAKEN})
