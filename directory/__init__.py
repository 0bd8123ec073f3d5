"""shardmesh directory: one watcher for the cluster, serving shard maps to sidecars (SPEC §7).

The server (``shardmesh directory``) keeps one narrow list+watch per StatefulSet
that someone subscribed to, computes the map with the sidecar's own pure code
(``sidecar.discovery.statefulset_info``/``pod_info``, ``sidecar.slots.parse``)
and streams it over TLS; ``directory.client`` is the consuming side.
"""
