"""shardmesh routing sidecar: key -> ordinal, the shard map, and the streaming proxy.

This package never imports ``webhook``; the webhook imports this package's
annotation schema so both sides agree on what an annotation means.
"""

__version__ = "0.1.0"


def compiled() -> bool:
    """Whether the data plane runs as mypyc-compiled C (see setup.py) or as plain Python."""
    from sidecar import proxy

    return not proxy.__file__.endswith(".py")
