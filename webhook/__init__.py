"""shardmesh mutating admission webhook: decides on and injects the shard-router sidecar."""
