module shardmesh/bench/grpcbackend

go 1.24
