"""Rehearse a cluster on one machine: several real raylets on 127.0.0.1, Ray's fake multi-node autoscaler,
a real S3 endpoint (moto) and a real MLflow server, so node loss, scale-up/down and spot reclaims can be
tested and measured without a cloud account (tests/cluster, benchmarks/reclaim_cost.py)."""
