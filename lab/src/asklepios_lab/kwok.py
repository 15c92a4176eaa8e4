"""kwok configuration: the Stages that make fake nodes and pods behave like real ones.

kwok plays the kubelet. The Stages below are based on kwok v0.8.0's own
``kustomize/stage/node/fast`` and ``kustomize/stage/pod/fast``, changed in two ways so
that node faults can be injected faithfully:

* There is no node *status* heartbeat stage. Liveness is the node Lease alone, renewed
  by kwok every ``lease_duration / 4`` seconds, as a modern kubelet does. SIGKILLing the
  node's kwok stops the Lease, so the node-lifecycle controller marks the node Unknown.
* ``node-initialize`` (write the kubelet's conditions, Ready=True) runs only when Ready
  is not True *and* the node lacks the :data:`READY_OVERRIDE` annotation. It is the
  "kubelet (re)starts and posts Ready" moment: a new node, or a restored one after a
  crash. Its conditions get ``lastTransitionTime`` = now (a real transition).
  ``set_ready`` sets the annotation first, so kwok leaves a hand-set condition alone.

Pods: Pending pods bound to a live node become Running/Ready at once (Ready=False if
they have the :data:`VOLUME_GATE` readiness gate: see :mod:`asklepios_lab.volumes`); pods with a
deletionTimestamp on a live node are deleted (kubelet confirms termination); pods of
Jobs complete. On a dead node (kwok killed) nothing happens: pods stay Terminating.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

READY_OVERRIDE = "lab.asklepios.dev/ready-override"
"""Node annotation: while present, kwok does not touch the node's conditions."""

GROUP_LABEL = "lab.asklepios.dev/kwok-group"
"""Node label selecting the kwok process of a bulk group (scale mode)."""

VOLUME_GATE = "lab.asklepios.dev/volume-attached"
"""Pod readiness gate: kwok leaves such a pod Ready=False; the lab's volume stand-in sets
the gate and Ready once the pod's volumes are attached to its node (:mod:`.volumes`)."""

POWERED_OFF_LABEL = "lab.asklepios.dev/powered-off-from"
"""Node label replacing :data:`GROUP_LABEL` while one node of a bulk group is powered off
(its value: the group). Its kwok no longer selects it, so it no longer renews its Lease."""

_NODE_STATUS = """\
{{ $now := Now }}
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $now | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}
{{ $hasInternalIP := false }}
{{ $hasHostname := false }}
{{ range .status.addresses }}
{{ if eq .type "InternalIP" }}{{ $hasInternalIP = true }}{{ end }}
{{ if eq .type "Hostname" }}{{ $hasHostname = true }}{{ end }}
{{ end }}
{{ if or (not $hasInternalIP) (not $hasHostname) }}
addresses:
{{ with .status.addresses }}{{ YAML . 0 }}{{ end }}
{{ end }}
{{ if not $hasInternalIP }}
{{ with NodeIP }}
- address: {{ . | Quote }}
  type: InternalIP
{{ end }}
{{ end }}
{{ if not $hasHostname }}
{{ with NodeName }}
- address: {{ . | Quote }}
  type: Hostname
{{ end }}
{{ end }}
allocatable:
{{ with .status.allocatable }}{{ YAML . 1 }}{{ else }}
  cpu: 1k
  memory: 1Ti
  pods: 1M
{{ end }}
capacity:
{{ with .status.capacity }}{{ YAML . 1 }}{{ else }}
  cpu: 1k
  memory: 1Ti
  pods: 1M
{{ end }}
{{ $nodeInfo := .status.nodeInfo }}
{{ $kwokVersion := printf "kwok-%s" Version }}
nodeInfo:
  architecture: {{ or $nodeInfo.architecture "amd64" }}
  bootID: {{ or $nodeInfo.bootID `""` }}
  containerRuntimeVersion: {{ or $nodeInfo.containerRuntimeVersion $kwokVersion }}
  kernelVersion: {{ or $nodeInfo.kernelVersion $kwokVersion }}
  kubeProxyVersion: {{ or $nodeInfo.kubeProxyVersion $kwokVersion }}
  kubeletVersion: {{ or $nodeInfo.kubeletVersion $kwokVersion }}
  machineID: {{ or $nodeInfo.machineID `""` }}
  operatingSystem: {{ or $nodeInfo.operatingSystem "linux" }}
  osImage: {{ or $nodeInfo.osImage `""` }}
  systemUUID: {{ or $nodeInfo.systemUUID `""` }}
phase: Running
"""

_POD_READY = """\
{{ $now := Now }}
{{ $gated := false }}
{{ range .spec.readinessGates }}{{ if eq .conditionType "VOLUME_GATE" }}{{ $gated = true }}{{ end }}{{ end }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  status: {{ if $gated }}"False"{{ else }}"True"{{ end }}
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: ContainersReady
{{ range .spec.readinessGates }}
{{ if ne .conditionType "VOLUME_GATE" }}
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: {{ .conditionType | Quote }}
{{ end }}
{{ end }}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  started: true
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
initContainerStatuses:
{{ range .spec.initContainers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  state:
    terminated:
      exitCode: 0
      finishedAt: {{ $now | Quote }}
      reason: Completed
      startedAt: {{ $now | Quote }}
{{ end }}
{{ $hostIPs := NodeIPsWith .spec.nodeName }}
{{ with $hostIPs }}
hostIP: {{ index . 0 | Quote }}
hostIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
{{ $podIPs := PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) \
( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
{{ with $podIPs }}
podIP: {{ index . 0 | Quote }}
podIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
phase: Running
startTime: {{ $now | Quote }}
""".replace("VOLUME_GATE", VOLUME_GATE)

_POD_COMPLETE = """\
{{ $now := Now }}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: 0
      finishedAt: {{ $now | Quote }}
      reason: Completed
      startedAt: {{ $now | Quote }}
{{ end }}
phase: Succeeded
"""


def _expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    out: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        out["values"] = list(values)
    return out


def _stage(name: str, kind: str, exprs: list[dict[str, Any]], nxt: dict[str, Any]) -> Any:
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": kind},
            "selector": {"matchExpressions": exprs},
            "next": nxt,
        },
    }


_READY = '.status.conditions.[] | select( .type == "Ready" ) | .status'


def stages() -> list[Any]:
    """The Stage objects (node-initialize, pod-ready, pod-complete, pod-delete)."""
    return [
        _stage(
            "node-initialize",
            "Node",
            [
                _expr(_READY, "NotIn", "True"),
                _expr(f'.metadata.annotations["{READY_OVERRIDE}"]', "DoesNotExist"),
            ],
            {"statusTemplate": _NODE_STATUS},
        ),
        _stage(
            "pod-ready",
            "Pod",
            [
                _expr(".metadata.deletionTimestamp", "DoesNotExist"),
                _expr(".status.phase", "In", "Pending"),
                _expr('.status.conditions.[] | select( .type == "Ready" ) | .status', "NotIn", "True"),
            ],
            {"statusTemplate": _POD_READY},
        ),
        _stage(
            "pod-complete",
            "Pod",
            [
                _expr(".metadata.deletionTimestamp", "DoesNotExist"),
                _expr(".status.phase", "In", "Running"),
                _expr(".metadata.ownerReferences.[].kind", "In", "Job"),
            ],
            {"statusTemplate": _POD_COMPLETE},
        ),
        _stage(
            "pod-delete",
            "Pod",
            [_expr(".metadata.deletionTimestamp", "Exists")],
            {"finalizers": {"empty": True}, "delete": True},
        ),
    ]


def write_config(path: Path) -> Path:
    """Write the multi-document kwok config (the Stages) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(stages(), sort_keys=False))
    return path


def argv(
    kwok: Path,
    kubeconfig: Path,
    config: Path,
    *,
    lease_seconds: int,
    node_ip: str,
    node: str | None = None,
    group: str | None = None,
    cidr: str = "10.128.0.0/16",
) -> list[str]:
    """Command line of one kwok: ``node`` (single-node mode) or ``group`` (bulk mode).

    ``node_ip`` is what kwok's templates use for a node without an InternalIP (the lab
    always sets one, in 127.0.0.0/8). ``cidr`` is the pods' IP range: pod IPs are
    never connected to.
    """
    if (node is None) == (group is None):
        raise ValueError("exactly one of node, group")
    manage = (
        [f"--manage-single-node={node}"]
        if node is not None
        else [f"--manage-nodes-with-label-selector={GROUP_LABEL}={group}"]
    )
    return [
        str(kwok),
        f"--kubeconfig={kubeconfig}",
        f"--config={config}",
        *manage,
        f"--node-lease-duration-seconds={lease_seconds}",
        f"--node-ip={node_ip}",
        f"--cidr={cidr}",
        f"-v={'INFO' if node is not None else 'WARN'}",
    ]
