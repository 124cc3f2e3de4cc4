"""A multi-node harness on one machine: nodes as network namespaces joined to a bridge, a 3-member
etcd cluster and two controllers (`python -m telltale.netcluster up|down|status`, or `NetCluster`)."""

from telltale.netcluster.cluster import (
    API_PORT,
    CONTROLLERS,
    ETCD,
    ClusterError,
    NetCluster,
    wait_until,
)
from telltale.netcluster.network import NetworkError

__all__ = ["API_PORT", "CONTROLLERS", "ETCD", "ClusterError", "NetCluster", "NetworkError", "wait_until"]
