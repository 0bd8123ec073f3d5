"""The injection pipeline: decide, render, annotate, diff. Pure, no I/O.

Both the webhook (``webhook.admission``) and ``shardmesh inject`` call
``inject``; the golden tests run every case through both to show that they
agree byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from webhook import patch, render
from webhook.podview import Obj, annotations_of
from webhook.policy import Decision, decide
from webhook.settings import Settings


@dataclass(frozen=True)
class Outcome:
    """The decision and, when injected, the new pod and the patch that makes it."""

    decision: Decision
    #: The pod as it should be stored (the input itself unless injected).
    pod: Obj
    patch: patch.Patch = field(default_factory=list)


def inject(pod: Obj, namespace: str, namespace_obj: Obj, settings: Settings) -> Outcome:
    """Decide for ``pod`` and, if it is to be injected, build the injected pod and the patch."""
    decision = decide(pod, namespace, namespace_obj, settings)
    if decision.result != "injected":
        return Outcome(decision, pod)
    rendered = render.mutate(pod, annotations_of(pod), settings)
    final = render.with_status(rendered, render.status(settings, decision.routes, pod))
    return Outcome(decision, final, patch.make_patch(pod, rendered, final))
