"""The soak: random overlapping faults, invariants checked from the system's own records.

    python -m bench soak --minutes 3 --seed 1

Modules: :mod:`.runner` (the cluster, the records, the run), :mod:`.faults` (the
seeded plan and the injector), :mod:`.lab` (the lab with a physics log, the runner's
watches, Asklepios' replicas), :mod:`.model` (what is recorded), :mod:`.invariants`
(pure checkers over it), :mod:`.report` (JSON, SOAK.md).
"""
