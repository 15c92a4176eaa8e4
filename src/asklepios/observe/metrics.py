"""The Prometheus metrics of the contract, defined once.

Names are part of the operator contract (CONTRACT.md); add, never rename.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

KICKOUTS = Counter("asklepios_kickouts", "Nodes kicked out (cordoned and tainted out-of-service)")
KICKINS = Counter("asklepios_kickins", "Nodes kicked in (what the kickout did was undone)")
KICKOUTS_HELD = Counter("asklepios_kickouts_held", "Kickouts held at their deadline (guard, dry run)", ["reason"])
REBALANCED_PODS = Counter("asklepios_rebalanced_pods", "StatefulSet pods evicted to rebalance")
REPAIRS = Counter("asklepios_repairs", "Cordons or taints of a kicked-out node re-applied")
WATCHED_NODES = Gauge("asklepios_watched_nodes", "Nodes matching ASKLEPIOS_NODE_SELECTOR")
NOTREADY_NODES = Gauge("asklepios_notready_nodes", "Watched nodes whose Ready condition is not True")
KICKOUT_DELAY = Histogram(
    "asklepios_kickout_delay_seconds",
    "From a node's kickout deadline to its taint being applied",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
IS_LEADER = Gauge("asklepios_is_leader", "1 while this replica holds the Lease and may write")
WATCH_RESTARTS = Counter(
    "asklepios_watch_restarts",
    "Watch streams restarted (timeout, error, 410 Gone)",
    ["resource", "cause"],
)
WRITE_CONFLICTS = Counter("asklepios_write_conflicts", "Writes retried after a 409 Conflict")
API_ERRORS = Counter("asklepios_api_errors", "Failed apiserver requests", ["operation"])
