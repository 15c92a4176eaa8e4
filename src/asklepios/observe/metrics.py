"""The Prometheus metrics of the contract, defined once.

Names are part of the operator contract (CONTRACT.md, README); add, never rename.
The per-node gauges (`asklepios_node_*`) exist only on the leader, one series per
followed node, so their cardinality is bounded by the number of watched nodes.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_RECOVERY = (5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800)

KICKOUTS = Counter("asklepios_kickouts", "Nodes kicked out (cordoned and tainted out-of-service)")
KICKINS = Counter("asklepios_kickins", "Nodes kicked in (what the kickout did was undone)")
KICKINS_FORCED = Counter("asklepios_kickins_forced", "Kickins done although pre-kickout pods were still Terminating")
KICKOUTS_HELD = Counter("asklepios_kickouts_held", "Kickouts held at their deadline, once per hold", ["reason"])
REBALANCED_PODS = Counter("asklepios_rebalanced_pods", "StatefulSet pods evicted to rebalance")
REBALANCE_FAILURES = Counter(
    "asklepios_rebalance_failures", "Evicted StatefulSet pods whose replacement did not land on the target node"
)
REPAIRS = Counter("asklepios_repairs", "Cordons or taints of a kicked-out node re-applied")
PODS_FORCE_DELETED = Counter(
    "asklepios_pods_force_deleted", "Terminating pods of out-of-service nodes force-deleted by Asklepios"
)
FENCING = Counter("asklepios_fencing", "Power actions through a node's BMC", ["action", "result"])
FENCING_SECONDS = Histogram(
    "asklepios_fencing_seconds", "From ForceOff sent to power Off confirmed by the BMC", buckets=_RECOVERY
)
RECOVERY_SECONDS = Histogram(
    "asklepios_recovery_seconds",
    "From the start of a node's NotReady period to its last pre-kickout pod gone",
    buckets=_RECOVERY,
)
WATCHED_NODES = Gauge("asklepios_watched_nodes", "Nodes matching ASKLEPIOS_NODE_SELECTOR")
NOTREADY_NODES = Gauge("asklepios_notready_nodes", "Watched nodes whose Ready condition is not True")
KICKIN_WAITING_NODES = Gauge(
    "asklepios_kickin_waiting_nodes", "Nodes due for kickin that wait for pre-kickout pods still Terminating"
)
KICKOUT_DELAY = Histogram(
    "asklepios_kickout_delay_seconds", "From a node's kickout deadline to its taint being applied", buckets=_SECONDS
)
IS_LEADER = Gauge("asklepios_is_leader", "1 while this replica holds the Lease and may write")
WATCH_RESTARTS = Counter(
    "asklepios_watch_restarts", "Watch streams restarted (timeout, error, 410 Gone)", ["resource", "cause"]
)
WATCH_STALE = Gauge(
    "asklepios_watch_stale", "1 while a watch has made no progress for longer than it may", ["resource"]
)
WRITE_CONFLICTS = Counter("asklepios_write_conflicts", "Writes retried after a 409 Conflict")
API_ERRORS = Counter("asklepios_api_errors", "Failed apiserver writes (every attempt)", ["operation"])
NODE_STATE = Gauge("asklepios_node_state", "1 for the followed node's current state", ["node", "state"])
NODE_HELD = Gauge("asklepios_node_held", "1 while the node's kickout is held, by reason", ["node", "reason"])
NODE_DEADLINE = Gauge(
    "asklepios_node_deadline_timestamp_seconds", "Unix time of the node's kickout or kickin deadline", ["node"]
)
NODE_KICKOUT = Gauge("asklepios_node_kickout_timestamp_seconds", "Unix time the node was kicked out", ["node"])
EVENT_LOOP_LAG = Histogram(
    "asklepios_event_loop_lag_seconds",
    "How late the event loop's 0.25 s ticker woke: what every task due then waited",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BUILD = Info("asklepios_build", "The running Asklepios")
OBJECTS_SKIPPED = Counter(
    "asklepios_objects_skipped", "Objects (or record entries) that could not be read and were ignored", ["kind"]
)
PAUSED = Gauge("asklepios_paused", "1 while an operator's `asklepios pause` is in force")
FLAPPING_NODES = Gauge("asklepios_flapping_nodes", "Nodes kept kicked out for flapping, until `asklepios release NODE`")
