"""The telltale controller: agent streams, policy evaluation, alerts in etcd, the console API."""
