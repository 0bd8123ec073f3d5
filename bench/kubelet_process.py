"""The simulated kubelet (``tests/cluster/kubelet.py``) in a process of its own.

In the bench's process it would share one GIL with a thousand watch threads
that each parse every pod event, and the rollout would time that contention,
not the API server. As a script: ``kubelet_process.py KUBECONFIG NAMESPACE``;
it runs until SIGTERM (or its parent's death).
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cluster.kubelet import Kubelet  # noqa: E402
from tests.cluster.processes import ManagedProcess  # noqa: E402


class KubeletProcess:
    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.proc = ManagedProcess("kubelet", [sys.executable, __file__, str(kubeconfig),
                                               namespace], kubeconfig.parent / "kubelet.log")

    def __enter__(self) -> KubeletProcess:
        self.proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.stop(grace=5.0)


class _Admin:
    """What ``Kubelet`` asks of its control plane: a new admin API client."""

    def __init__(self, kubeconfig: str) -> None:
        self.kubeconfig = kubeconfig

    def api_client(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=self.kubeconfig)  # type: ignore[no-untyped-call]


def main(kubeconfig: str, namespace: str) -> None:
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    kubelet = Kubelet(_Admin(kubeconfig))  # type: ignore[arg-type]
    kubelet.watch(namespace)
    done.wait()
    kubelet.stop()
    for error in kubelet.errors:
        print(error, file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:3])
