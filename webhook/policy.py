"""Whether to inject: a pure decision over the pod, its namespace and the settings.

Rules, in the order they are checked (the first that applies decides):

1. Never touch system namespaces, the injector's own namespace, mirror pods,
   pods that already carry the sidecar (so a second invocation, e.g. under
   ``reinvocationPolicy: IfNeeded``, changes nothing) or hostNetwork pods.
2. ``shard.io/inject`` must be exactly "true" or "false" wherever it is set
   (annotation or label, pod or namespace); anything else rejects the pod.
3. The pod's setting beats the namespace's; without either, nothing happens.
4. A pod about to be injected must have valid shard.io annotations: a typo
   that quietly fell back to a default could send a key to the wrong shard.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final

from sidecar import annotations as ann
from sidecar import pod_checks
from sidecar.annotations import clip
from webhook import reasons
from webhook.podview import MIRROR_ANNOTATION, Obj, annotations_of, has_sidecar, labels_of, spec
from webhook.reasons import Result
from webhook.settings import Settings

SYSTEM_NAMESPACES: Final = frozenset({"kube-system", "kube-public", "kube-node-lease"})
#: Volume names the injection adds (kept in step with webhook.render, which
#: imports policy's decision but not the other way round).
SIDECAR_VOLUMES: Final = ("shard-podinfo", "shard-token")


@dataclass(frozen=True)
class Decision:
    """What to do with one pod, and why (``reason`` is a ``webhook.reasons`` constant)."""

    result: Result
    reason: str
    #: For rejections, the message the user sees; otherwise the reason's sentence.
    message: str
    routes: tuple[ann.RouteSpec, ...] = ()

    def __str__(self) -> str:
        return self.result if self.result == "injected" else f"{self.result}: {self.reason}"


def skipped(reason: str) -> Decision:
    return Decision("skipped", reason, reasons.SENTENCES[reason])


def rejected(reason: str, message: str) -> Decision:
    return Decision("rejected", reason, message)


def decide(pod: Obj, namespace: str, namespace_obj: Obj, settings: Settings) -> Decision:
    """The decision for ``pod`` in ``namespace``, whose object (labels, annotations)
    is ``namespace_obj`` (``{}`` when unknown)."""
    never = _never_injected(pod, namespace, settings)
    if never is not None:
        return skipped(never)
    try:
        pod_setting = inject_setting(pod, "pod")
        ns_setting = inject_setting(namespace_obj, f"namespace '{clip(namespace)}'")
    except SettingError as err:
        return rejected(err.reason, str(err))
    wanted = pod_setting if pod_setting is not None else ns_setting
    if wanted is not True:
        if pod_setting is False:
            return skipped(reasons.INJECTION_DISABLED_POD)
        if ns_setting is False:
            return skipped(reasons.INJECTION_DISABLED_NAMESPACE)
        return skipped(reasons.INJECTION_NOT_ENABLED)
    try:
        routes = _validated(_shard_items(annotations_of(pod)), namespace)
    except ann.AnnotationError as err:
        return rejected(reasons.INVALID_ANNOTATION, str(err))
    taken = sorted(_volume_names(pod) & set(SIDECAR_VOLUMES))
    if taken:
        return rejected(reasons.NAME_TAKEN,
                        f"the pod already has a volume named '{taken[0]}', which the "
                        f"shard-router sidecar needs; rename it")
    return Decision("injected", reasons.INJECTED, reasons.SENTENCES[reasons.INJECTED], routes)


def _shard_items(annotations: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The ``shard.io/*`` annotations, the only ones validation reads, as a cache key."""
    return tuple(sorted(item for item in annotations.items()
                        if item[0].startswith(ann.PREFIX)))


@functools.lru_cache(maxsize=1024)
def _validated(items: tuple[tuple[str, str], ...], namespace: str) -> tuple[ann.RouteSpec, ...]:
    """``pod_checks.validate_pod``, memoised: the pods of a rollout share their annotations,
    and parsing them was a fifth of a review. Errors are not cached (re-raised each time)."""
    return pod_checks.validate_pod(dict(items), namespace)


def _volume_names(pod: Obj) -> set[str]:
    volumes = spec(pod).get("volumes")
    if not isinstance(volumes, list):
        return set()
    return {str(v.get("name")) for v in volumes if isinstance(v, dict)}


def _never_injected(pod: Obj, namespace: str, settings: Settings) -> str | None:
    if namespace in SYSTEM_NAMESPACES:
        return reasons.SYSTEM_NAMESPACE
    if namespace == settings.injector_namespace:
        return reasons.INJECTOR_NAMESPACE
    if MIRROR_ANNOTATION in annotations_of(pod):
        return reasons.MIRROR_POD
    if has_sidecar(pod):
        return reasons.ALREADY_INJECTED
    if spec(pod).get("hostNetwork") is True:
        return reasons.HOST_NETWORK
    return None


class SettingError(ValueError):
    """A ``shard.io/inject`` that is neither "true" nor "false", or that contradicts itself."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def inject_setting(obj: Obj, where: str) -> bool | None:
    """``shard.io/inject`` from the object's annotation or label; None when unset.

    Both may be set; if they disagree the object is ambiguous and is rejected
    rather than guessed at.
    """
    found: dict[str, bool] = {}
    for kind, values in (("annotation", annotations_of(obj)), ("label", labels_of(obj))):
        if ann.INJECT not in values:
            continue
        try:
            found[kind] = ann.parse_bool(ann.INJECT, values[ann.INJECT])
        except ann.AnnotationError as err:
            message = (f"{where}: invalid value '{clip(err.value)}' for {kind} "
                       f"'{ann.INJECT}': {err.why}")
            raise SettingError(reasons.INVALID_ANNOTATION, message) from None
    if len(set(found.values())) > 1:
        raise SettingError(
            reasons.CONFLICTING_SETTING,
            f"{where}: annotation '{ann.INJECT}' is '{str(found['annotation']).lower()}' but "
            f"label '{ann.INJECT}' is '{str(found['label']).lower()}': set one, or make them agree",
        )
    return next(iter(found.values()), None)
