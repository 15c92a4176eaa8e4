"""Render the kustomize tree k8s/ from the Helm chart charts/asklepios: the one source of truth.

The chart holds every manifest and setting; k8s/ is what `helm template` renders with the
chart's defaults (k8s/base), with values-burrito.yaml (k8s/overlays/burrito), and with the
balancer or fencing turned on (k8s/components/{balancer,fencing}, kustomize Components that
add those settings' RBAC). Why this direction: the chart must grant RBAC per setting, which
kustomize cannot express without Components anyway, and Helm is the richer language.

What changes on the way (docs/helm.md), and nothing else:
- the settings ConfigMap becomes a configMapGenerator (kustomize's hashed name rolls the
  pods, as the chart's checksum/settings annotation does, which is dropped);
- the Helm-only labels (app.kubernetes.io/instance, app.kubernetes.io/managed-by,
  helm.sh/chart) are dropped: kustomize, not Helm, manages what k8s/ applies;
- an overlay or component holds only what its render adds to the base's: new objects,
  and the settings that differ (`behavior: merge`). Any other difference is an error.
The templates' comments are kept.

    python hack/render-k8s.py            # rewrite the generated files of k8s/
    python hack/render-k8s.py --check    # exit 1 if k8s/ differs from a fresh render

helm comes from hack/helm/build.sh (built from the pinned module the first time), or
$ASKLEPIOS_HELM. k8s/kustomization.yaml, k8s/monitoring/ and
k8s/overlays/prometheus-operator/ are not generated (tests/unit/test_chart.py compares
that overlay with the chart's monitoring objects).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "asklepios"
RELEASE, NAMESPACE = "asklepios", "kube-system"
SETTINGS = "asklepios-settings"
GENERATED = "# GENERATED from charts/asklepios by hack/render-k8s.py: edit the chart, then run it.\n"
# Lines of the chart's output that k8s/ does not carry (see the docstring).
HELM_ONLY = re.compile(r"^\s+(app\.kubernetes\.io/(instance|managed-by)|helm\.sh/chart|checksum/settings): .*\n", re.M)
SOURCE = re.compile(r"^---\n# Source: asklepios/templates/(\S+)\n", re.M)
# (directory, kind, helm arguments, what it is)
VARIANTS = [
    (
        "overlays/burrito",
        "Kustomization",
        ["-f", str(CHART / "values-burrito.yaml")],
        "The original Burrito setup: the balancer moving MariaDB and RabbitMQ pods of\n"
        "# openstack back (the image from the genesis registry: docs/install.md, Burrito)",
    ),
    ("components/balancer", "Component", ["--set", "settings.balancer=true"], "A kustomize Component: the balancer on"),
    (
        "components/fencing",
        "Component",
        ["--set", "settings.fencing=redfish"],
        "A kustomize Component: fencing through Redfish BMCs on",
    ),
]
NAMESPACE_TRANSFORMER = """\
# Everything lives in kube-system, except the node-Lease Role and its binding, which
# must be in kube-node-lease: so the namespace is only set where a resource has none
# (the generated ConfigMap; an overlay may set another namespace the same way).
transformers:
  - |-
    apiVersion: builtin
    kind: NamespaceTransformer
    metadata:
      name: asklepios-namespace
      namespace: kube-system
    unsetOnly: true
    setRoleBindingSubjects: none
"""


def helm() -> str:
    if os.environ.get("ASKLEPIOS_HELM"):
        return os.environ["ASKLEPIOS_HELM"]
    out = subprocess.run(["bash", str(ROOT / "hack/helm/build.sh")], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"hack/helm/build.sh failed:\n{out.stderr}")
    return out.stdout.strip().splitlines()[-1]


class Doc:
    """One rendered object: its template file, its text (Helm-only lines dropped), parsed."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.text = HELM_ONLY.sub("", text).rstrip() + "\n"
        self.obj: dict[str, Any] = yaml.safe_load(self.text)

    @property
    def key(self) -> tuple[str, str, str]:
        meta = self.obj["metadata"]
        return self.obj["kind"], meta.get("namespace", ""), meta["name"]


def template(*args: str) -> list[Doc]:
    out = subprocess.run(
        [helm(), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--skip-tests", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"helm template failed:\n{out.stderr}")
    parts = SOURCE.split(out.stdout)
    return [Doc(source, text) for source, text in zip(parts[1::2], parts[2::2], strict=True) if text.strip()]


def literals(doc: Doc, only: set[str] | None = None) -> str:
    """The ConfigMap's data as configMapGenerator literals, with its comments (all of them
    for the base; an overlay gets the lines of the keys it changes)."""
    body = doc.text.split("\ndata:\n", 1)[1].splitlines()
    out, comments = [], []
    for line in body:
        stripped = line.strip()
        if stripped.startswith("#"):
            comments.append(f"      {stripped}")
            continue
        key, _, value = stripped.partition(": ")
        if only is None or key in only:
            out += [*comments, f"      - {key}={yaml.safe_load(value)}"]
        comments = []
    if only is None:
        out += comments
    return "\n".join(out) + "\n"


def leading_comments(doc: Doc) -> str:
    return (
        "".join(line + "\n" for line in doc.text.splitlines() if line.startswith("#"))
        if doc.text.startswith("#")
        else ""
    )


def write_objects(docs: list[Doc], directory: Path, files: dict[Path, str]) -> list[str]:
    """The docs grouped by template file, in render order; returns the file names."""
    by_source: dict[str, list[Doc]] = {}
    for doc in docs:
        by_source.setdefault(doc.source, []).append(doc)
    for source, group in by_source.items():
        files[directory / source] = GENERATED + "---\n".join(d.text for d in group)
    return list(by_source)


def render() -> dict[Path, str]:
    """Every generated file of k8s/, by path."""
    files: dict[Path, str] = {}
    base = template()
    [settings] = [d for d in base if d.key[0] == "ConfigMap"]
    objects = [d for d in base if d is not settings]
    labels = yaml.safe_dump({"labels": settings.obj["metadata"]["labels"]}, sort_keys=True)
    resources = write_objects(objects, ROOT / "k8s/base", files)
    files[ROOT / "k8s/base/kustomization.yaml"] = (
        GENERATED
        + "# Asklepios, kustomize base (k8s/kustomization.yaml and the overlays use it).\n"
        + "# See docs/install.md for setting the image and changing settings.\n"
        + "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        + NAMESPACE_TRANSFORMER
        + "\nresources:\n"
        + "".join(f"  - {name}\n" for name in resources)
        + "\n"
        + leading_comments(settings)
        + "# Change a value in an overlay with `behavior: merge` (as overlays/burrito does):\n"
        + "# the generated name changes with the content, so the Deployment rolls.\n"
        + f"configMapGenerator:\n  - name: {SETTINGS}\n    options:\n"
        + "".join(f"      {line}\n" for line in labels.splitlines())
        + "    literals:\n"
        + literals(settings)
    )
    base_by_key = {d.key: d for d in base}
    for directory, kind, args, what in VARIANTS:
        docs = template(*args)
        added = [d for d in docs if d.key not in base_by_key]
        missing = base_by_key.keys() - {d.key for d in docs}
        changed = [  # the settings are compared key by key below
            d.key for d in docs if d.key in base_by_key and d.key != settings.key and d.obj != base_by_key[d.key].obj
        ]
        [new_settings] = [d for d in docs if d.key == settings.key]
        if missing or changed:
            raise SystemExit(
                f"{directory}: may only add objects and change settings; removed {missing}, changed {changed}"
            )
        new, old = new_settings.obj["data"], settings.obj["data"]
        if new.keys() != old.keys():
            raise SystemExit(f"{directory}: the settings' keys differ from the base's: {new.keys() ^ old.keys()}")
        differ = {k for k in new if new[k] != old[k]}
        out_dir = ROOT / "k8s" / directory
        names = write_objects(added, out_dir, files)
        up = "../" * len(Path(directory).parts)
        api = "kustomize.config.k8s.io/" + ("v1beta1" if kind == "Kustomization" else "v1alpha1")
        resources_block = "".join(f"  - {name}\n" for name in ([] if kind == "Component" else [f"{up}base"]) + names)
        shown = " ".join(a.replace(str(ROOT) + "/", "") for a in args)
        files[out_dir / "kustomization.yaml"] = (
            GENERATED
            + f"# {what}.\n# What `helm template` adds to k8s/base with {shown}.\n"
            + (
                f"#   kubectl apply --server-side -k k8s/{directory}/\n"
                if kind == "Kustomization"
                else f"# Use it from your overlay: components: [<path to>/k8s/{directory}]\n"
            )
            + f"apiVersion: {api}\nkind: {kind}\n"
            + (f"\nresources:\n{resources_block}" if resources_block else "")
            + f"\nconfigMapGenerator:\n  - name: {SETTINGS}\n    behavior: merge\n    literals:\n"
            + literals(new_settings, differ)
        )
    return files


def generated_now() -> set[Path]:
    """Files of k8s/ that carry the GENERATED header (to find ones a render no longer makes)."""
    return {p for p in (ROOT / "k8s").rglob("*.yaml") if p.read_text().startswith(GENERATED)}


def main(argv: list[str]) -> int:
    if argv not in ([], ["--check"]):
        print(__doc__)
        return 2
    files = render()
    stale = generated_now() - files.keys()
    if argv == ["--check"]:
        wrong = sorted(str(p.relative_to(ROOT)) for p, text in files.items() if not p.exists() or p.read_text() != text)
        wrong += sorted(f"{p.relative_to(ROOT)} (no longer rendered)" for p in stale)
        if wrong:
            print("k8s/ differs from the chart's render: run python hack/render-k8s.py\n  " + "\n  ".join(wrong))
            return 1
        return 0
    for path in stale:
        path.unlink()
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as tmp:
            tmp.write(text)
        Path(tmp.name).chmod(0o644)
        Path(tmp.name).replace(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
