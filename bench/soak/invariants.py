"""The soak's invariants: pure functions of a recorded :class:`~bench.soak.model.History`.

Each checker reads only what the system itself recorded (the apiserver's audit log of
Asklepios' identities, the runner's watches, the lab's physics log and the BMC
emulator's timeline, the fault log), never Asklepios' logs or metrics, and returns a
:class:`CheckResult`: how many checks it ran, the violations, and counts of the cases
it set aside and why (``notes``). Definitions (times: the apiserver's
``requestReceivedTimestamp`` of a write, the runner's receive time of a watch event):

1. **No out-of-service taint on a live node.** For every successful node patch of
   Asklepios whose body's ``spec.taints`` holds the out-of-service taint (a kickout or
   a repair), at its time ``t`` the node shows no evidence of life: (a) no renewal of
   its Lease with ``t - leaseDurationSeconds < renewTime <= t``, seen by ``t +
   decision_window`` (a kubelet whose clock is behind writes such renewTimes later); (b) no change of its
   Lease's renewTime *seen* (by the runner's watch) in ``(t - leaseDurationSeconds, t -
   decision_window]``, whatever the renewTime says (a kubelet whose clock is behind),
   unless its kubelet was stopped after that change; and (c) its kubelet port did not
   certainly answer throughout ``[t - decision_window, t]`` (answer: accept or refuse,
   the machine runs; certainly: from the end of the restore that opened it to the start
   of the crash that silenced it; a partition, a stopped kubelet or a skewed kubelet
   keep it answering). Life that began less than ``decision_window`` before ``t`` (a
   node booting while Asklepios decided) is counted as a race, not a violation.
   **1f, no power-off of a renewing kubelet.** No ForceOff (a reset to Off the BMC
   emulator recorded) while (a) or (b) holds: fencing ends partitions, never a kubelet
   that demonstrably renews its Lease.
2. **The guard.** At every kickout (a patch that records a new ``asklepios.io/kickout``)
   at most ``max_unhealthy`` watched nodes were NotReady throughout
   ``[t - guard_slack, t]``.
3. **Foreign state kept.** No successful node patch of Asklepios removes, relative to
   the node version named by the patch's ``resourceVersion`` precondition, a taint
   other than the out-of-service taint, the out-of-service taint unless that version's
   kickout record says ``tainted``, or a cordon unless the record says ``cordoned``.
4. **One action once.** At most one kickout per NotReady period of a node (a period:
   from a Ready!=True event to the next Ready=True event; False/Unknown flips do not
   end it).
5. **Pods recover.** Every StatefulSet pod bound to a node when the node died (its
   kubelet stopped and its port silent) runs Ready on another node by
   ``death + grace + kickout + recovery_bound + blocked``, unless the node came back
   first; ``blocked`` is the time within that window when Asklepios may not act:
   apiserver outages (+ ``outage_settle``), no leader, more NotReady nodes than the
   guard allows, no other node the pod could run on.
6. **Kickin.** Every kicked-out node that becomes Ready is kicked in by
   ``ready + kickin + kickin_bound + blocked`` unless it goes NotReady again first;
   ``blocked``: outages, no leader, pods from before the kickout still on the node
   (at most kickin + pod_wait).
7. **Only the leader writes.** Every write of an Asklepios process (Leases and access
   reviews aside) at ``t`` falls within a term of its own: the newest version of the
   election Lease with ``renewTime <= t`` names it as holder and
   ``t <= renewTime + leaseDurationSeconds``.

Two checks of the run itself complete them: ``process`` (no Asklepios process exits by
itself; a SIGTERM ends with status 0) and ``settled`` (after the drain every watched
node is Ready, none is kicked out or tainted, every StatefulSet pod runs).
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from functools import cached_property

import attrs

from bench.soak.model import (
    KICKOUT_ANNOTATION,
    History,
    Interval,
    KickoutMark,
    LeaseVersion,
    NodeVersion,
    Physics,
    PodVersion,
    Taint,
    epoch,
    taints_of,
)

INF = math.inf


@attrs.frozen
class Violation:
    invariant: str
    t: float
    node: str
    what: str
    evidence: tuple[str, ...] = ()


@attrs.frozen
class CheckResult:
    invariant: str
    title: str
    checks: int
    violations: tuple[Violation, ...]
    notes: Mapping[str, int] = attrs.field(factory=dict)
    samples: tuple[float, ...] = ()  # recovery or kickin times, where the check measures one

    @property
    def passed(self) -> bool:
        return not self.violations


@attrs.frozen
class NodePatch:
    """A node patch of Asklepios, with the node version it was decided on."""

    write_index: int
    t: float
    node: str
    ok: bool
    body: Mapping[str, object]
    before: NodeVersion | None
    exact: bool  # ``before`` is the version named by the patch's resourceVersion
    kind: str  # kickout, kickin, repair, record, marks

    @property
    def spec(self) -> Mapping[str, object]:
        spec = self.body.get("spec")
        return spec if isinstance(spec, dict) else {}


# ----------------------------------------------------------------------- intervals


def union(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, merged intervals."""
    out: list[Interval] = []
    for iv in sorted(intervals, key=lambda i: i.start):
        if iv.end < iv.start:
            continue
        if out and iv.start <= out[-1].end:
            out[-1] = Interval(out[-1].start, max(out[-1].end, iv.end))
        else:
            out.append(iv)
    return out


def overlap(intervals: Iterable[Interval], start: float, end: float) -> float:
    """Seconds of ``[start, end]`` covered by (merged) ``intervals``."""
    return sum(max(0.0, min(iv.end, end) - max(iv.start, start)) for iv in intervals)


def extended_due(base: float, start: float, blocked: list[Interval]) -> float:
    """``base`` pushed back by the blocked time within ``[start, due]`` (a fixpoint)."""
    due = base
    for _ in range(100):
        new = base + overlap(blocked, start, due)
        if abs(new - due) < 1e-6:
            return new
        due = new
    return due


def complement(intervals: list[Interval], start: float, end: float) -> list[Interval]:
    out, cursor = [], start
    for iv in union(intervals):
        if iv.start > cursor:
            out.append(Interval(cursor, min(iv.start, end)))
        cursor = max(cursor, iv.end)
        if cursor >= end:
            break
    if cursor < end:
        out.append(Interval(cursor, end))
    return [iv for iv in out if iv.end > iv.start]


# ---------------------------------------------------------------- the timelines


class Timelines:
    """Indexes over a :class:`History`, built once and shared by the checkers."""

    def __init__(self, history: History) -> None:
        self.h = history
        self.p = history.params
        self.node_versions: dict[str, list[NodeVersion]] = defaultdict(list)
        self.by_rv: dict[tuple[str, str], NodeVersion] = {}
        for v in sorted(history.nodes, key=lambda v: v.t):
            self.node_versions[v.name].append(v)
            self.by_rv.setdefault((v.name, v.rv), v)
        self._node_times = {n: [v.t for v in vs] for n, vs in self.node_versions.items()}
        renewals: dict[str, dict[float, LeaseVersion]] = defaultdict(dict)
        for lv in history.node_leases:
            if lv.renew is not None:
                renewals[lv.name].setdefault(lv.renew, lv)
        self.renewals = {n: sorted(r.values(), key=lambda lv: lv.renew or 0.0) for n, r in renewals.items()}
        self.lease_changes = {n: sorted(r.values(), key=lambda lv: lv.t) for n, r in renewals.items()}
        self.users = {i.user: i for i in history.incarnations}
        self._no_target: dict[str, list[Interval]] = {}
        self.physics: dict[str, list[Physics]] = defaultdict(list)
        for ph in sorted(history.physics, key=lambda p: p.t0):
            self.physics[ph.node].append(ph)

    # -- nodes

    def version_at(self, node: str, t: float) -> NodeVersion | None:
        """The newest version of ``node`` received at or before ``t``."""
        times = self._node_times.get(node, [])
        i = bisect.bisect_right(times, t)
        return self.node_versions[node][i - 1] if i else None

    def ready_at(self, node: str, t: float) -> bool:
        v = self.version_at(node, t)
        return v is None or v.is_ready  # before the first event: Ready (nodes start Ready)

    def notready_throughout(self, node: str, start: float, end: float) -> bool:
        if self.ready_at(node, start):
            return False
        times = self._node_times.get(node, [])
        lo, hi = bisect.bisect_right(times, start), bisect.bisect_right(times, end)
        return not any(v.is_ready for v in self.node_versions[node][lo:hi])

    def notready_periods(self, node: str) -> list[Interval]:
        periods: list[Interval] = []
        start: float | None = None
        for v in self.node_versions.get(node, []):
            if v.deleted:
                continue
            if not v.is_ready and start is None:
                start = v.t
            elif v.is_ready and start is not None:
                periods.append(Interval(start, v.t))
                start = None
        if start is not None:
            periods.append(Interval(start, INF))
        return periods

    @cached_property
    def guard_over(self) -> list[Interval]:
        """When more watched nodes than the guard allows were NotReady (runner's view)."""
        changes = sorted((v.t, v.name, v.is_ready) for n in self.p.watched for v in self.node_versions.get(n, []))
        ready = dict.fromkeys(self.p.watched, True)
        out, since = [], None
        for t, name, is_ready in changes:
            ready[name] = is_ready
            over = sum(not r for r in ready.values()) > self.p.max_unhealthy
            if over and since is None:
                since = t
            elif not over and since is not None:
                out.append(Interval(since, t))
                since = None
        if since is not None:
            out.append(Interval(since, INF))
        return out

    def available(self, v: NodeVersion) -> bool:
        """Could a soak pod be scheduled to and run on this node version?"""
        if not v.is_ready or v.unschedulable:
            return False
        hard = [t for t in v.taints if t.effect in ("NoSchedule", "NoExecute")]
        return all((t.key, t.effect) in self.p.tolerated_taints for t in hard)

    def no_target(self, dead: str) -> list[Interval]:
        """When no node other than ``dead`` could run a soak pod."""
        if dead not in self._no_target:
            self._no_target[dead] = self._compute_no_target(dead)
        return self._no_target[dead]

    def _compute_no_target(self, dead: str) -> list[Interval]:
        others = [n for n in self.node_versions if n != dead]
        changes = sorted((v.t, v.name, self.available(v)) for n in others for v in self.node_versions[n])
        avail = dict.fromkeys(others, False)
        out: list[Interval] = []
        since: float | None = self.h.start
        for t, name, ok in changes:
            avail[name] = ok
            if any(avail.values()):
                if since is not None:
                    out.append(Interval(since, t))
                    since = None
            elif since is None:
                since = t
        if since is not None:
            out.append(Interval(since, INF))
        return [iv for iv in out if iv.end > iv.start]

    # -- leadership and outages

    @cached_property
    def election(self) -> list[LeaseVersion]:
        """Versions of the election Lease (runner's watch and audited writes), by renewTime."""
        seen: dict[tuple[str, float], LeaseVersion] = {}
        for lv in self.h.election:
            if lv.renew is not None:
                seen.setdefault((lv.holder, lv.renew), lv)
        return sorted(seen.values(), key=lambda lv: (lv.renew or 0.0, lv.t))

    @cached_property
    def _election_times(self) -> list[float]:
        return [lv.renew or 0.0 for lv in self.election]

    def holder_at(self, t: float) -> LeaseVersion | None:
        """The newest version of the election Lease renewed at or before ``t``."""
        i = bisect.bisect_right(self._election_times, t)
        return self.election[i - 1] if i else None

    @cached_property
    def leaderless(self) -> list[Interval]:
        """When no live process held the Lease within its renew deadline."""
        led = []
        versions = self.election
        for i, lv in enumerate(versions):
            if not lv.holder or lv.renew is None:
                continue
            end = lv.renew + self.p.renew_deadline
            if i + 1 < len(versions) and versions[i + 1].renew is not None:
                end = min(end, versions[i + 1].renew or end)
            for inc in self.h.incarnations:
                if inc.holds(lv.holder) and inc.stopped is not None:
                    end = min(end, inc.stopped)
            led.append(Interval(lv.renew, end))
        return complement(led, self.h.start, self.h.end)

    @cached_property
    def outages(self) -> list[Interval]:
        return union(Interval(o.start, o.end + self.p.outage_settle) for o in self.h.outages)

    # -- physics

    def kubelet_started(self, node: str, t: float) -> float:
        """When the kubelet running at ``t`` had certainly started (-inf: since the start)."""
        started = -INF
        for ph in self.physics.get(node, []):
            if ph.t0 > t:
                break
            if not ph.kubelet[0] and ph.kubelet[1]:
                started = ph.t1
        return started

    def kubelet_stopped_between(self, node: str, start: float, end: float) -> bool:
        """Whether a call stopped the node's kubelet that ended at or after ``start`` and began by ``end``."""
        return any(
            ph.kubelet[0] and not ph.kubelet[1] and ph.t1 >= start and ph.t0 <= end for ph in self.physics.get(node, [])
        )

    def lease_life(self, node: str, t: float) -> tuple[list[str], list[str]]:
        """(life, races): the node's Lease as evidence of a running kubelet at ``t`` (1a, 1b)."""
        window = self.p.decision_window
        life: list[str] = []
        raced: list[str] = []
        renewals = self.renewals.get(node, [])
        lo = bisect.bisect_left([lv.renew or 0.0 for lv in renewals], t - 3600)
        for lv in renewals[lo:]:
            renew = lv.renew or 0.0
            if renew > t:
                break
            if t - lv.duration < renew and lv.t <= t + window:  # seen by then (a skewed one: much later)
                started = self.kubelet_started(node, renew)
                line = f"its Lease was renewed at {renew:.3f}, {t - renew:.3f} s before the write"
                (life if started <= t - window else raced).append(line)
        changes = self.lease_changes.get(node, [])
        lo = bisect.bisect_left([lv.t for lv in changes], t - 3600)
        for lv in changes[lo:]:
            if lv.t > t:
                break
            if t - lv.duration < lv.t and not self.kubelet_stopped_between(node, lv.t, t):
                line = (f"its Lease's renewTime changed at {lv.t:.3f}, {t - lv.t:.3f} s before the write "
                        f"(renewTime {t - (lv.renew or 0.0):.1f} s old)")  # fmt: skip
                started = self.kubelet_started(node, lv.t)
                (life if lv.t <= t - window and started <= t - window else raced).append(line)
        return life, raced

    def listener_intervals(self, node: str) -> tuple[list[Interval], list[Interval]]:
        """(certainly up, possibly up) intervals of the node's kubelet port answering."""
        certain, possible = [], []
        c_start: float | None = -INF
        p_start: float | None = -INF
        for ph in self.physics.get(node, []):
            before, after = ph.listener
            if before and not after:
                if c_start is not None:
                    certain.append(Interval(c_start, ph.t0))
                if p_start is not None:
                    possible.append(Interval(p_start, ph.t1))
                c_start = p_start = None
            elif after and not before:
                c_start, p_start = ph.t1, ph.t0
        if c_start is not None:
            certain.append(Interval(c_start, INF))
        if p_start is not None:
            possible.append(Interval(p_start, INF))
        return certain, possible

    def deaths(self, node: str) -> list[float]:
        """When the node died: its kubelet stopped and its port silent (the end of that call)."""
        out = []
        for ph in self.physics.get(node, []):
            alive_before = ph.kubelet[0] or ph.listener[0]
            if alive_before and not ph.kubelet[1] and not ph.listener[1]:
                out.append(ph.t1)
        return out

    def boots(self, node: str) -> list[float]:
        """When the node's kubelet was started again (the start of that call)."""
        return [ph.t0 for ph in self.physics.get(node, []) if not ph.kubelet[0] and ph.kubelet[1]]

    # -- Asklepios' node patches

    @cached_property
    def patches(self) -> list[NodePatch]:
        out = []
        for i, w in enumerate(self.h.writes):
            if w.resource != "nodes" or w.verb != "patch" or w.subresource or w.user not in self.users:
                continue
            meta = w.body.get("metadata") if isinstance(w.body.get("metadata"), dict) else {}
            assert isinstance(meta, dict)
            rv = str(meta.get("resourceVersion") or "")
            before = self.by_rv.get((w.name, rv)) if rv else None
            exact = before is not None
            if before is None:
                before = self.version_at(w.name, w.t)
            out.append(NodePatch(i, w.t, w.name, w.ok, w.body, before, exact, _kind(w.body, before)))
        return out

    def kickouts(self) -> list[NodePatch]:
        return [p for p in self.patches if p.ok and p.kind == "kickout"]

    # -- pods

    @cached_property
    def pod_versions(self) -> list[PodVersion]:
        return sorted(self.h.pods, key=lambda p: p.t)

    def pods_at(self, t: float) -> dict[str, PodVersion]:
        """The soak's pods (by uid) as the runner last saw them at ``t``."""
        current: dict[str, PodVersion] = {}
        for pv in self.pod_versions:
            if pv.t > t:
                break
            if pv.deleted:
                current.pop(pv.uid, None)
            else:
                current[pv.uid] = pv
        return current


def _kind(body: Mapping[str, object], before: NodeVersion | None) -> str:
    meta = body.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    annotations = annotations if isinstance(annotations, dict) else {}
    spec = body.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    if KICKOUT_ANNOTATION in annotations:
        value = annotations[KICKOUT_ANNOTATION]
        if value is None:
            return "kickin"
        new = KickoutMark.parse(str(value))
        old = KickoutMark.parse(before.kickout) if before is not None else None
        if old is None or (new is not None and old.at != new.at):
            return "kickout"
        return "record"
    if "taints" in spec or "unschedulable" in spec:
        return "repair"
    return "marks"


# ------------------------------------------------------------------ the checkers


def check_no_taint_on_live_node(h: History, tl: Timelines | None = None) -> CheckResult:
    tl = tl or Timelines(h)
    window = h.params.decision_window
    checks, races = 0, 0
    violations = []
    for p in tl.patches:
        taints = p.spec.get("taints")
        if not p.ok or not isinstance(taints, list) or not any(t.out_of_service for t in taints_of(taints)):
            continue
        checks += 1
        t, node = p.t, p.node
        life, raced = tl.lease_life(node, t)
        certain, possible = tl.listener_intervals(node)
        up = next((iv for iv in certain if t in iv), None)
        if up is not None and up.start <= t - window:
            life.append(f"its kubelet port answered since {up.start:.3f} ({t - up.start:.1f} s before the write)")
        elif any(t in iv for iv in possible):
            raced.append("its kubelet port answered from within the decision window")
        if life:
            violations.append(Violation("1", t, node, "out-of-service taint written on a live node", tuple(life)))
        elif raced:
            races += 1
    return CheckResult(
        "1", "no out-of-service taint on a node with evidence of life", checks, tuple(violations), {"races": races}
    )


def check_no_power_off_of_renewing_kubelet(h: History, tl: Timelines | None = None) -> CheckResult:
    tl = tl or Timelines(h)
    resets = [e for e in h.bmc if e.kind == "reset" and e.value == "Off"]
    violations = []
    races = 0
    for e in resets:
        life, raced = tl.lease_life(e.node, e.t)
        if life:
            violations.append(Violation("1f", e.t, e.node, "ForceOff of a node whose kubelet renews", tuple(life)))
        elif raced:
            races += 1
    return CheckResult(
        "1f", "no power-off of a node whose kubelet renews its Lease", len(resets), tuple(violations), {"races": races}
    )


def check_guard(h: History, tl: Timelines | None = None) -> CheckResult:
    tl = tl or Timelines(h)
    p = h.params
    violations = []
    kickouts = tl.kickouts()
    for k in kickouts:
        down = [n for n in p.watched if tl.notready_throughout(n, k.t - p.guard_slack, k.t)]
        if len(down) > p.max_unhealthy:
            what = f"kickout while {len(down)} watched nodes were NotReady (the guard allows {p.max_unhealthy})"
            violations.append(Violation("2", k.t, k.node, what, (f"NotReady: {', '.join(down)}",)))
    return CheckResult("2", "no kickout beyond the guard", len(kickouts), tuple(violations))


def check_foreign_state_kept(h: History, tl: Timelines | None = None) -> CheckResult:
    tl = tl or Timelines(h)
    checks, approximate, unknown = 0, 0, 0
    violations = []
    for p in tl.patches:
        if not p.ok:
            continue
        checks += 1
        if p.before is None:
            unknown += 1
            continue
        approximate += not p.exact
        before, spec = p.before, p.spec
        mark = KickoutMark.parse(before.kickout)
        problems = []
        if "taints" in spec:
            raw = spec["taints"]
            new = taints_of(raw if isinstance(raw, list) else None)
            removed = [t for t in before.taints if not t.out_of_service and t not in new]
            if removed:
                problems.append("removed taints " + ", ".join(_taint(t) for t in removed))
            if before.has_oos and not any(t.out_of_service for t in new) and (mark is None or not mark.tainted):
                problems.append("removed an out-of-service taint its kickout record does not claim")
        uncordon = "unschedulable" in spec and not spec["unschedulable"] and before.unschedulable
        if uncordon and (mark is None or not mark.cordoned):
            problems.append("uncordoned a node its kickout record does not say it cordoned")
        if problems:
            evidence = (f"decided on resourceVersion {before.rv}" + ("" if p.exact else " (approximated)"),)
            violations.append(Violation("3", p.t, p.node, "; ".join(problems), evidence))
    return CheckResult(
        "3",
        "no admin cordon or foreign taint removed",
        checks,
        tuple(violations),
        {"before-state approximated": approximate, "before-state unknown": unknown},
    )


def _taint(t: Taint) -> str:
    return f"{t.key}={t.value}:{t.effect}" if t.value else f"{t.key}:{t.effect}"


def check_one_kickout_per_period(h: History, tl: Timelines | None = None) -> CheckResult:
    tl = tl or Timelines(h)
    violations = []
    outside = 0
    kickouts = tl.kickouts()
    by_period: dict[tuple[str, float], list[NodePatch]] = defaultdict(list)
    for k in kickouts:
        periods = [iv for iv in tl.notready_periods(k.node) if iv.start <= k.t]
        if not periods:
            outside += 1
            continue
        by_period[(k.node, periods[-1].start)].append(k)
    for (node, start), ks in by_period.items():
        if len(ks) > 1:
            times = ", ".join(f"{k.t:.3f}" for k in ks)
            violations.append(
                Violation("4", ks[1].t, node, f"{len(ks)} kickouts in the NotReady period from {start:.3f}", (times,))
            )
    return CheckResult(
        "4", "one kickout per NotReady period", len(kickouts), tuple(violations), {"kickout outside a period": outside}
    )


def check_pods_recover(h: History, tl: Timelines | None = None) -> CheckResult:
    tl = tl or Timelines(h)
    p = h.params
    common = union([*tl.outages, *tl.leaderless, *tl.guard_over])
    checks, samples = 0, []
    notes: Counter[str] = Counter()
    violations = []
    for node in sorted(tl.physics):
        boots = tl.boots(node)
        for death in tl.deaths(node):
            pods = sorted({pv.name for pv in tl.pods_at(death).values() if pv.node == node and pv.app})
            if not pods:
                notes["deaths with no pod"] += 1
                continue
            back = next((b for b in boots if b > death), None)
            blocked = union([*common, *tl.no_target(node)])
            due = extended_due(death + p.grace + p.kickout + p.recovery_bound, death, blocked)
            worst = 0.0
            complete = True
            for name in pods:
                checks += 1
                moved = next(
                    (pv.t for pv in tl.pod_versions if pv.t > death and pv.name == name and pv.running and pv.node
                     and pv.node != node),
                    None,
                )  # fmt: skip
                if moved is not None and moved <= due:
                    worst = max(worst, moved - death)
                    continue
                complete = False
                if back is not None and back <= due and (moved is None or back < moved):
                    notes["node came back first"] += 1
                elif due > h.end:
                    notes["unresolved at the end"] += 1
                else:
                    late = "never" if moved is None else f"only after {moved - death:.1f} s"
                    what = f"pod {name} not Running elsewhere {due - death:.1f} s after its node died ({late})"
                    evidence = (f"node died at {death:.3f}", f"blocked {overlap(blocked, death, due):.1f} s")
                    violations.append(Violation("5", due, node, what, evidence))
            if complete:
                samples.append(worst)
    return CheckResult(
        "5", "StatefulSet pods of a dead node Running elsewhere in time", checks, tuple(violations), notes,
        tuple(samples),
    )  # fmt: skip


def check_kickin(h: History, tl: Timelines | None = None) -> CheckResult:
    tl = tl or Timelines(h)
    p = h.params
    common = union([*tl.outages, *tl.leaderless])
    kickins: dict[str, list[float]] = defaultdict(list)
    for patch in tl.patches:
        if patch.ok and patch.kind == "kickin":
            kickins[patch.node].append(patch.t)
    checks, samples = 0, []
    notes: Counter[str] = Counter()
    violations = []
    for node, versions in tl.node_versions.items():
        previous_ready = True
        for i, v in enumerate(versions):
            came_back = v.is_ready and not previous_ready and v.kickout is not None
            previous_ready = v.is_ready
            if not came_back:
                continue
            checks += 1
            back = v.t
            again = next((w.t for w in versions[i + 1 :] if not w.is_ready), None)
            mark = KickoutMark.parse(v.kickout)
            kicked = epoch(mark.at) if mark is not None else None
            lingering = _pods_from_before(tl, node, kicked, back)
            waits = [Interval(back, min(gone, back + p.kickin + p.pod_wait)) for gone in lingering]
            blocked = union([*common, *waits])
            due = extended_due(back + p.kickin + p.kickin_bound, back, blocked)
            kickin = next((t for t in kickins.get(node, []) if t >= back - 1.0), None)
            if kickin is not None and kickin <= due and (again is None or kickin <= again):
                samples.append(kickin - back)
            elif again is not None and again <= due and (kickin is None or again < kickin):
                notes["NotReady again first"] += 1
            elif due > h.end:
                notes["unresolved at the end"] += 1
            else:
                late = "never" if kickin is None else f"only after {kickin - back:.1f} s"
                what = f"not kicked in {due - back:.1f} s after it was Ready ({late})"
                evidence = (f"Ready at {back:.3f}", f"blocked {overlap(blocked, back, due):.1f} s")
                violations.append(Violation("6", due, node, what, evidence))
    return CheckResult("6", "a node back is kicked in in time", checks, tuple(violations), notes, tuple(samples))


def _pods_from_before(tl: Timelines, node: str, kicked: float | None, after: float) -> list[float]:
    """When each pod created before the kickout and still on ``node`` at ``after`` was gone."""
    if kicked is None:
        return []
    present = [pv for pv in tl.pods_at(after).values() if pv.node == node and pv.created < kicked]
    out = []
    for pv in present:
        gone = next((x.t for x in tl.pod_versions if x.t > after and x.uid == pv.uid and x.deleted), INF)
        out.append(gone)
    return out


def check_leader_only(h: History, tl: Timelines | None = None) -> CheckResult:
    tl = tl or Timelines(h)
    checks = 0
    violations = []
    for w in h.writes:
        inc = tl.users.get(w.user)
        if inc is None or w.resource == "leases" or w.resource.endswith("reviews"):
            continue
        checks += 1
        term = tl.holder_at(w.t)
        if term is not None and inc.holds(term.holder) and w.t <= (term.renew or 0.0) + term.duration:
            continue
        holder = "nobody" if term is None else f"{term.holder or '(released)'} renewed at {term.renew or 0:.3f}"
        what = f"{w.verb} {w.resource}{'/' + w.subresource if w.subresource else ''} {w.name} by {inc.pod_name}"
        violations.append(Violation("7", w.t, w.name, f"{what} while it was not the leader", (f"Lease: {holder}",)))
    return CheckResult("7", "only the leader writes", checks, tuple(violations))


def check_processes(h: History) -> CheckResult:
    violations = []
    for inc in h.incarnations:
        if inc.how == "died":
            violations.append(
                Violation("process", inc.stopped or h.end, "", f"{inc.pod_name} exited by itself ({inc.exit_code})")
            )
        elif inc.how in ("sigterm", "end") and inc.exit_code != 0:
            violations.append(
                Violation("process", inc.stopped or h.end, "", f"{inc.pod_name} exited {inc.exit_code} on SIGTERM")
            )
    return CheckResult("process", "Asklepios processes: no crash, SIGTERM exits 0", len(h.incarnations),
                       tuple(violations))  # fmt: skip


def check_settled(h: History, tl: Timelines | None = None) -> CheckResult:
    tl = tl or Timelines(h)
    problems = []
    for node in h.params.watched:
        v = tl.version_at(node, h.end)
        if v is None:
            continue
        if not v.is_ready:
            problems.append(f"{node} Ready={v.ready}")
        if v.kickout is not None or v.has_oos:
            problems.append(f"{node} still kicked out")
    running = Counter(pv.app for pv in tl.pods_at(h.end).values() if pv.running)
    for app, replicas in h.params.statefulsets:
        if running[app] < replicas:
            problems.append(f"{app}: {running[app]} of {replicas} pods Running")
    violations = tuple(Violation("settled", h.end, "", p) for p in problems)
    return CheckResult("settled", "settled after the drain: all Ready, none kicked out, all pods Running", 1,
                       violations)  # fmt: skip


def check_all(h: History) -> list[CheckResult]:
    tl = Timelines(h)
    return [
        check_no_taint_on_live_node(h, tl),
        check_no_power_off_of_renewing_kubelet(h, tl),
        check_guard(h, tl),
        check_foreign_state_kept(h, tl),
        check_one_kickout_per_period(h, tl),
        check_pods_recover(h, tl),
        check_kickin(h, tl),
        check_leader_only(h, tl),
        check_processes(h),
        check_settled(h, tl),
    ]
