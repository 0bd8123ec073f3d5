"""The ``shardmesh`` command line, joining the webhook and sidecar packages."""

from sidecar import __version__

__all__ = ["__version__"]
