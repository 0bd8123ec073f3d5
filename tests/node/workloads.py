"""The manifests the node tier applies, and the driver that runs inside the client pod.

Everything runs the product image (imagePullPolicy IfNotPresent, imported
locally): the backend StatefulSet as ``shardmesh accounts-backend`` with its
ordinal from the pod-index label, and the client apps as its python, idle
until ``kubectl exec`` runs :data:`DRIVER` in them. The driver talks to the
injected sidecar on 127.0.0.1:15001 from inside the pod, as an app does.
"""

from __future__ import annotations

from typing import Any

from tests.node.images import product_image

STATEFULSET = "sharded-svc"
ROUTE = "bank"
PORT = 8080
#: Not the default, so a sidecar that ignored shard.io/strategy.bank would misroute (409).
STRATEGY = "jump"
CLIENT_ACCOUNT = "client"  # the ServiceAccount of manifests/examples/sidecar-rolebinding.yaml

#: Idles as PID 1 but ends at once on SIGTERM (a plain sleep would make every delete
#: wait out the grace period).
IDLE = ["python3", "-c",
        "import signal, sys; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); "
        "signal.pause()"]

#: Run in the client pod's app container: reads a JSON request on stdin, prints JSON.
#: {"op": "routes"} -> /_shard/routes; {"op": "deposit", "accounts": [...],
#: "key_header": name|null, "key_in_path": bool} -> [[account, status, X-Shard-Ordinal,
#: X-Replica, body prefix], ...].
DRIVER = r'''
import http.client, json, sys
req = json.load(sys.stdin)
def connect():
    return http.client.HTTPConnection("127.0.0.1", 15001, timeout=15)
conn = connect()
if req["op"] == "routes":
    conn.request("GET", "/_shard/routes")
    r = conn.getresponse()
    print(json.dumps({"status": r.status, "body": json.loads(r.read() or b"null")}))
    sys.exit(0)
out = []
for acc in req["accounts"]:
    headers = {req["key_header"]: acc} if req.get("key_header") else {}
    path = "/bank/accounts/%s/deposit" % acc if req.get("key_in_path", True) else "/bank/deposit"
    try:
        conn.request("POST", path, body=b"", headers=headers)
        r = conn.getresponse()
        body = r.read()
        out.append([acc, r.status, r.getheader("X-Shard-Ordinal"), r.getheader("X-Replica"),
                    body.decode(errors="replace")[:300]])
    except Exception as exc:
        out.append([acc, 0, None, None, repr(exc)])
        conn.close()
        conn = connect()
print(json.dumps(out))
'''

#: A Job's app: deposits through the sidecar and exits 0 only if all were answered 200.
JOB_APP = r'''
import http.client, sys
conn = http.client.HTTPConnection("127.0.0.1", 15001, timeout=15)
for acc in range(200000, 200020):
    conn.request("POST", "/bank/accounts/%d/deposit" % acc, body=b"")
    r = conn.getresponse(); r.read()
    if r.status != 200:
        print("account", acc, "got", r.status); sys.exit(1)
print("20 deposits answered 200")
'''


def client_annotations() -> dict[str, str]:
    return {"shard.io/backend": f"{ROUTE}={STATEFULSET}:{PORT}",
            f"shard.io/key.{ROUTE}": "path:1",
            f"shard.io/strategy.{ROUTE}": STRATEGY}


def _container(name: str, command: list[str]) -> dict[str, Any]:
    return {"name": name, "image": product_image(), "imagePullPolicy": "IfNotPresent",
            "command": command,
            "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]}}}


def backend_service() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": STATEFULSET},
            "spec": {"clusterIP": "None", "selector": {"app": STATEFULSET},
                     "ports": [{"name": "http", "port": PORT}]}}


def backend_statefulset(replicas: int) -> dict[str, Any]:
    container = _container("accounts", [
        "shardmesh", "accounts-backend", "--listen", f"0.0.0.0:{PORT}",
        "--ordinal", "$(POD_INDEX)", "--strategy", STRATEGY, "--name", "$(POD_NAME)"])
    container["env"] = [
        {"name": "POD_INDEX", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    container["ports"] = [{"name": "http", "containerPort": PORT}]
    container["readinessProbe"] = {"httpGet": {"path": "/_state", "port": PORT},
                                   "periodSeconds": 1, "failureThreshold": 1}
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": STATEFULSET},
            "spec": {"serviceName": STATEFULSET, "replicas": replicas,
                     "podManagementPolicy": "Parallel",
                     "selector": {"matchLabels": {"app": STATEFULSET}},
                     "template": {
                         "metadata": {"labels": {"app": STATEFULSET},
                                      "annotations": {"shard.io/inject": "false"}},
                         "spec": {"terminationGracePeriodSeconds": 2,
                                  "containers": [container]}}}}


def client_pod_spec(service_account: str, automount: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {"serviceAccountName": service_account,
                            "terminationGracePeriodSeconds": 2,
                            "containers": [_container("app", IDLE)]}
    if not automount:
        spec["automountServiceAccountToken"] = False
    return spec


def client_deployment(name: str, service_account: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name},
                                               "annotations": client_annotations()},
                                  "spec": client_pod_spec(service_account)}}}


def client_pod(name: str, service_account: str, automount: bool = True) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": name},
                         "annotations": client_annotations()},
            "spec": client_pod_spec(service_account, automount)}


def job(name: str, service_account: str) -> dict[str, Any]:
    spec = client_pod_spec(service_account)
    spec["containers"] = [_container("app", ["python3", "-c", JOB_APP])]
    spec["restartPolicy"] = "Never"
    del spec["terminationGracePeriodSeconds"]  # the default 30 s: a slow stop would show
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "activeDeadlineSeconds": 120,
                     "template": {"metadata": {"annotations": client_annotations()},
                                  "spec": spec}}}
