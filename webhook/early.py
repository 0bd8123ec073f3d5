"""What must happen before anything imports ``ssl``: gevent's monkey-patching.

gevent has to patch ``ssl`` (and ``socket``, ``threading``) before the first
import of them, or the Kubernetes client's TLS recurses forever inside the
workers ("maximum recursion depth exceeded" in ``SSLContext.minimum_version``,
gevent issue 1016). gunicorn's gevent worker only patches after the fork,
when the master has long since imported the client, so ``shardmesh webhook``
calls this first, in the master, before importing the rest of the webhook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def patch_for_gevent(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """Monkey-patch when the settings ask for the gevent worker; True if patched.
    Bad settings are left for ``webhook.cli`` to report."""
    import contextlib
    import io

    from webhook.settings import load

    quiet = io.StringIO()
    try:  # argparse would print --help and usage errors twice
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            worker_class = load(argv, environ).worker_class
    except (ValueError, SystemExit):
        return False
    if worker_class != "gevent":
        return False
    from gevent import monkey

    monkey.patch_all()
    return True
