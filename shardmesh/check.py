"""``shardmesh check``: is this cluster's shardmesh installation healthy?

Five checks, each printed as ``OK``/``WARN``/``FAIL`` lines that name the
object at fault, with the fix underneath:

1. webhook      the MutatingWebhookConfiguration exists and each webhook answers
                ``/healthz`` (``clientConfig.url`` directly over TLS; a
                ``clientConfig.service`` through the API server's service
                proxy, plus ready endpoints);
2. ca-bundle    the caBundle parses and is not expired or near expiry, and a URL
                webhook's serving certificate chains to it;
3. rbac         every sidecar service account can read its routes' StatefulSets
                and pods (direct mode), or, in directory mode, the shardmaps of
                other namespaces it routes to (its own needs no RBAC)
                (SubjectAccessReview);
4. sidecar      no opted-in pod is missing ``shard-router``;
5. directory    if installed: ready replicas, ``/readyz`` through the service
                proxy, and one replica's subscriber and informer counts.

Exit status: 0 when nothing FAILs (WARNs included), 1 when something FAILs,
2 on a usage error or an unreadable kubeconfig.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

import urllib3
from kubernetes import client, config

from shardmesh.check_cluster import Cluster, ClusterError
from shardmesh.check_directory import directory_section, injected_directory_url
from shardmesh.check_model import FAIL, Finding, Obj, worst
from shardmesh.check_optin import opted_in, sidecar_findings
from shardmesh.check_probe import probe
from shardmesh.check_rbac import rbac_findings, requirements
from shardmesh.check_slots import slot_section
from shardmesh.check_webhook import (
    WebhookTarget,
    missing_config_finding,
    no_client_finding,
    no_webhooks_finding,
    webhook_findings,
    webhook_targets,
)
from webhook.settings import Settings as WebhookSettings

DEFAULT_WEBHOOK_CONFIG = "shardmesh-sidecar-injector"
DEFAULT_SIDECAR_CLUSTERROLE = "shardmesh-sidecar"
DEFAULT_INJECTOR_NAMESPACE = WebhookSettings().injector_namespace


@dataclass(frozen=True)
class CheckSettings:
    """Everything ``shardmesh check`` is told, built once from the command line."""

    #: Kubeconfig file; None means $KUBECONFIG, ~/.kube/config, then in-cluster.
    kubeconfig: str | None
    #: Kubeconfig context; None means the current one.
    context: str | None
    #: Name of the MutatingWebhookConfiguration to check.
    webhook_config: str
    #: ClusterRole the sidecars' RoleBindings refer to.
    sidecar_clusterrole: str
    #: A certificate with fewer days left than this is a WARN.
    expiry_warn_days: int
    #: Print JSON instead of text.
    json: bool
    #: Limit the rbac and sidecar checks to these namespaces (empty: all).
    namespaces: tuple[str, ...]
    #: The injector's own namespace, whose pods are never injected.
    injector_namespace: str = DEFAULT_INJECTOR_NAMESPACE


def build_parser() -> argparse.ArgumentParser:
    summary, _, details = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(
        prog="shardmesh check", description=summary.replace("``shardmesh check``: ", ""),
        epilog=details.replace("``", ""), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, "
                        "~/.kube/config, then the in-cluster service account)")
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    parser.add_argument("--webhook-config", default=DEFAULT_WEBHOOK_CONFIG, metavar="NAME",
                        help="MutatingWebhookConfiguration name "
                        f"(default: {DEFAULT_WEBHOOK_CONFIG})")
    parser.add_argument("--sidecar-clusterrole", default=DEFAULT_SIDECAR_CLUSTERROLE,
                        metavar="NAME", help="ClusterRole the sidecar RoleBindings refer to "
                        f"(default: {DEFAULT_SIDECAR_CLUSTERROLE})")
    parser.add_argument("--expiry-warn-days", type=int, default=30, metavar="DAYS",
                        help="WARN when a certificate expires sooner than this (default: 30)")
    parser.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                        help="check only these namespaces' RBAC and pods (repeatable)")
    parser.add_argument("--injector-namespace", default=DEFAULT_INJECTOR_NAMESPACE, metavar="NS",
                        help="the webhook's own namespace, never injected "
                        f"(default: {DEFAULT_INJECTOR_NAMESPACE})")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    return parser


def settings_from(argv: list[str]) -> CheckSettings:
    args = build_parser().parse_args(argv)
    if args.expiry_warn_days < 0:
        build_parser().error(f"--expiry-warn-days must be >= 0, got {args.expiry_warn_days}")
    return CheckSettings(args.kubeconfig, args.context, args.webhook_config,
                         args.sidecar_clusterrole, args.expiry_warn_days, args.json,
                         tuple(dict.fromkeys(args.namespace)), args.injector_namespace)


def load_client(settings: CheckSettings) -> client.ApiClient:
    """An API client from the kubeconfig, falling back to the in-cluster service account."""
    try:
        api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=settings.kubeconfig, context=settings.context)
        return api
    except config.ConfigException as err:
        if settings.kubeconfig or settings.context:
            raise
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            raise err from None
        return client.ApiClient()


# --- orchestration: fetch at the edge, decide in the pure modules ------------


def run(settings: CheckSettings, cluster: Cluster, now: datetime) -> list[Finding]:
    targets: list[WebhookTarget] = []
    try:
        cfg = cluster.webhook_config(settings.webhook_config)
    except ClusterError as err:  # e.g. forbidden: the other checks may still run
        findings = [Finding(FAIL, "webhook", str(err))]
    else:
        findings, targets = _webhook_section(settings, cluster, cfg, now)
    excluded = frozenset({settings.injector_namespace,
                          *(t.service.namespace for t in targets if t.service)})
    findings += _guard("rbac/sidecar", lambda: _namespace_sections(settings, cluster, excluded))
    findings += _guard("directory", lambda: directory_section(
        cluster.core.api_client, settings.injector_namespace, cluster.timeout))
    return findings


def _webhook_section(
    settings: CheckSettings, cluster: Cluster, cfg: Obj | None, now: datetime
) -> tuple[list[Finding], list[WebhookTarget]]:
    if cfg is None:
        return [missing_config_finding(settings.webhook_config)], []
    targets = webhook_targets(cfg)
    if not targets:
        return [no_webhooks_finding(settings.webhook_config)], []
    findings: list[Finding] = []
    for target in targets:
        findings += _guard("webhook", partial(_probe_target, settings, cluster, target, now))
    return findings, targets


def _probe_target(
    settings: CheckSettings, cluster: Cluster, target: WebhookTarget, now: datetime
) -> list[Finding]:
    if target.url:
        ca_pem = None if target.bundle.error else target.bundle.pem
        result = probe(target.url, ca_pem, float(target.timeout_s))
        return webhook_findings(target, result, now, settings.expiry_warn_days)
    if target.service:
        service = cluster.service_probe(target.service, float(target.timeout_s))
        return webhook_findings(target, service, now, settings.expiry_warn_days)
    return [no_client_finding(target)]


def _namespace_sections(
    settings: CheckSettings, cluster: Cluster, excluded: frozenset[str]
) -> list[Finding]:
    scope = opted_in(cluster.namespaces(settings.namespaces), cluster.pods(settings.namespaces),
                     excluded)
    # Sidecars default to the directory when the webhook injects one (SPEC §7).
    directory = bool(injected_directory_url(cluster.core.api_client,
                                            settings.injector_namespace, cluster.timeout))
    needed, problems = requirements(scope, directory)
    denied = {req: cluster.denied(req) for req in needed}
    role_exists = (not any(v for r, v in denied.items() if r.mode == "direct")
                   or cluster.clusterrole_exists(settings.sidecar_clusterrole))
    return [*problems, *rbac_findings(denied, settings.sidecar_clusterrole, role_exists),
            *sidecar_findings(scope), *slot_section(scope, cluster.statefulset)]


def _guard(check: str, section: Callable[[], list[Finding]]) -> list[Finding]:
    """Turn an API failure into a FAIL line, so one broken section does not hide the rest."""
    try:
        return section()
    except ClusterError as err:
        return [Finding(FAIL, check, str(err))]
    except (urllib3.exceptions.HTTPError, OSError) as err:
        return [Finding(FAIL, check, f"cannot reach the API server: {err}")]


# --- output ------------------------------------------------------------------


def render_text(findings: list[Finding]) -> str:
    lines = []
    for f in findings:
        lines.append(f"{f.status:<4}  {f.check:<12}  {f.message}")
        lines += [f"{'':<20}-> {hint}" for hint in f.hints]
    counts = {s: sum(1 for f in findings if f.status == s) for s in ("OK", "WARN", "FAIL")}
    lines.append("")
    lines.append("shardmesh check: " + ", ".join(f"{n} {s}" for s, n in counts.items())
                 + f" -> {worst(findings)}")
    return "\n".join(lines)


def render_json(findings: list[Finding]) -> str:
    return json.dumps({"status": worst(findings), "findings": [f.as_dict() for f in findings]},
                      indent=2)


def main(argv: list[str]) -> int:
    settings = settings_from(argv)
    try:
        api = load_client(settings)
    except (config.ConfigException, OSError, ValueError) as err:
        where = settings.kubeconfig or "the default kubeconfig"
        print(f"shardmesh check: cannot load {where}: {err}", file=sys.stderr)
        return 2
    with api:
        try:
            findings = run(settings, Cluster(api), datetime.now(UTC))
        except (urllib3.exceptions.HTTPError, OSError) as err:
            host = api.configuration.host
            findings = [Finding(FAIL, "api-server",
                                f"cannot reach the API server at {host}: {err}")]
    print(render_json(findings) if settings.json else render_text(findings))
    return 1 if worst(findings) == FAIL else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
