"""Write the PrometheusRule of the prometheus-operator overlay from k8s/monitoring/rules.yaml.

kustomize cannot wrap a plain Prometheus rule file (top level `groups:`, nothing
else allowed) into a custom resource, so the overlay keeps a generated copy. The
copy is the rule file's text from `groups:` on, indented under `spec:`, so its
comments survive. tests/unit/test_monitoring.py fails while the rendered
PrometheusRule's groups differ from the rule file's.

    python hack/monitoring/sync-prometheusrule.py           # rewrite the copy
    python hack/monitoring/sync-prometheusrule.py --check   # exit 1 if it is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "k8s" / "monitoring" / "rules.yaml"
TARGET = ROOT / "k8s" / "overlays" / "prometheus-operator" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from k8s/monitoring/rules.yaml by hack/monitoring/sync-prometheusrule.py:
# edit the rule file, then run the script. Each alert's runbook is in docs/runbook.md.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: asklepios
spec:
"""


def render(rules_text: str) -> str:
    lines = rules_text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("groups:")), None)
    if start is None:
        raise SystemExit(f"{RULES}: no top-level `groups:` line")
    body = "\n".join(f"  {line}" if line else "" for line in lines[start:])
    return HEADER + body + "\n"


def main(argv: list[str]) -> int:
    wanted = render(RULES.read_text())
    if argv == ["--check"]:
        if TARGET.read_text() != wanted:
            print(f"{TARGET.relative_to(ROOT)} is out of date: run {Path(__file__).relative_to(ROOT)}")
            return 1
        return 0
    if argv:
        print(__doc__)
        return 2
    TARGET.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
