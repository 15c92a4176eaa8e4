"""`asklepios check` (and `run`'s start-up check) against the real apiserver, as an operator runs it.

Each test runs `python -m asklepios check` as a process with KUBECONFIG and the
settings in its environment, and reads its stdout lines and exit status: a green
cluster as the ServiceAccount bound by k8s/, an identity missing one verb (a fresh
ServiceAccount with a TokenRequest token), the same ServiceAccount's rights checked
by the admin with `--as-serviceaccount` (and by an identity that may not ask), a
selector matching nothing, a DaemonSet
that tolerates everything, a BMC with the wrong password, and a second kube-apiserver
reporting v1.25.16 (the lab's v1.28.15 apiserver linked with other version ldflags) that
`run` refuses to start against.
"""

from __future__ import annotations

import base64
import copy
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from asklepios_lab import ControlPlane, Kube, binaries, wait_for
from asklepios_lab.api import Api, write_kubeconfig
from asklepios_lab.procs import Proc, free_port, wait_until
from tests.cluster.checks import SEL, env
from tests.cluster.conftest import NodeFactory
from tests.cluster.runner import AsklepiosFactory
from tests.cluster.test_install import REPO, apply_k8s, rendered

JSON = dict[str, Any]
OLD_APISERVER = "kube-apiserver-v1.25"  # built with the oldest release (see the module docstring)
OLDEST = binaries.supported()[-1]
OLD_VERSION = "v1.25.16"


HOSTNAME = "kubernetes.io/hostname"
UNFENCED = "! fencing: off: "  # the first line whenever fencing is off


def run_asklepios(
    command: str, kubeconfig: Path, settings: Mapping[str, str], timeout: float = 90, args: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ASKLEPIOS_")},
        "KUBECONFIG": str(kubeconfig),
        "ASKLEPIOS_NAMESPACE": "kube-system",
        "ASKLEPIOS_LOG_FORMAT": "json",
        "NO_PROXY": "*",  # the lab's BMC is on 127.0.0.1
        "no_proxy": "*",
        **settings,
    }
    return subprocess.run(
        [sys.executable, "-m", "asklepios", command, *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def check(kubeconfig: Path, settings: Mapping[str, str], *args: str) -> tuple[int, list[str]]:
    done = run_asklepios("check", kubeconfig, settings, args=args)
    print(done.stdout, done.stderr, sep="\n")  # shown when a test fails (and with -s)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, done.stdout.splitlines()


def lines_of(lines: list[str], symbol: str, check_name: str = "") -> list[str]:
    return [line for line in lines if line.startswith(f"{symbol} {check_name}")]


@pytest.fixture
def k8s_rbac(kube: Kube) -> None:
    """k8s/ applied (RBAC for the ServiceAccount), without its Deployment (fake pods are noise here)."""
    apply_k8s(kube)
    kube.kubectl("delete", "-n", "kube-system", "deployment/asklepios", "--ignore-not-found", "--wait=false")


@pytest.mark.timeout(120)
def test_green_cluster(nodes: NodeFactory, asklepios_kubeconfig: Path, k8s_rbac: None) -> None:
    names = nodes.watched("a", "b", "c")
    code, lines = check(asklepios_kubeconfig, env(nodes.prefix))
    assert code == 0, lines
    assert [line.split(":")[0] for line in lines] == [
        "! fencing",  # off: what remains possible, a warning (exit 0)
        "✔ version",
        "✔ rbac",
        "✔ nodes",
        "✔ max-unhealthy",
        "✔ pods",
        "✔ node-leases",
        "✔ volumes",
    ], lines
    assert lines[0].startswith(UNFENCED) and "only fencing closes that" in lines[0]
    assert lines[1].startswith("✔ version: Kubernetes v1.")
    assert "permissions these settings need are granted" in lines[2]
    assert f"3 nodes match '{SEL}={nodes.prefix}'" in lines[3]
    assert "3 watched nodes: kickouts held while more than 1 is NotReady" in lines[4]
    assert len(names) == 3


def bind_without_patch_nodes(api: Api, namespace: str, account: str) -> list[str]:
    """k8s/'s roles minus `patch nodes`, bound to a new ServiceAccount; returns what to delete after."""
    api.create(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": account}})
    subject = [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]
    created: list[str] = []
    for manifest in rendered():
        if manifest["kind"] not in ("ClusterRole", "Role"):
            continue
        role = copy.deepcopy(manifest)
        name = f"{namespace[:30]}-{role['metadata']['name']}"  # at most 30 + 1 + 25
        where = role["metadata"].get("namespace")
        role["metadata"] = {"name": name, **({"namespace": where} if where else {})}
        for rule in role["rules"]:
            if rule["resources"] == ["nodes"]:
                rule["verbs"] = [v for v in rule["verbs"] if v != "patch"]
        binding = {
            "metadata": dict(role["metadata"]),
            "subjects": subject,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role["kind"], "name": name},
        }
        base = "/apis/rbac.authorization.k8s.io/v1"
        prefix = f"{base}/namespaces/{where}/" if where else f"{base}/cluster"
        for plural, body in ((f"{prefix}roles", role), (f"{prefix}rolebindings", binding)):
            created.append(f"{plural}/{name}")
            api.create(plural, body)
    return created


@pytest.mark.timeout(180)
def test_a_missing_verb_is_named(
    control_plane: ControlPlane, nodes: NodeFactory, namespace: str, k8s_rbac: None
) -> None:
    """k8s/'s rules minus `patch nodes`, bound to a fresh ServiceAccount: exactly that verb fails."""
    cp, api = control_plane, control_plane.api
    nodes.watched("a", "b", "c")
    account = "limited"
    created: list[str] = []
    try:
        created = bind_without_patch_nodes(api, namespace, account)
        token = api.create(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 600}},
        )["status"]["token"]
        limited = cp.client(token)
        try:
            wait_for(lambda: all(_allowed(limited, **a) for a in PROBES), 30, what="the new bindings in effect")
        finally:
            limited.close_all()
        kubeconfig = cp.kubeconfig_for(token, f"limited-{namespace}")
        code, lines = check(kubeconfig, env(nodes.prefix))
    finally:
        for path in reversed(created):
            api.delete(path)
    assert code == 1, lines
    failures = lines_of(lines, "✘")
    assert len(failures) == 1, lines
    assert failures[0].startswith("✘ rbac: missing: patch nodes (all namespaces)"), failures
    assert "README 'RBAC'" in failures[0]
    assert [line for line in lines_of(lines, "!") if not line.startswith(UNFENCED)] == [], lines


@pytest.mark.timeout(180)
def test_as_serviceaccount_checks_its_rights_not_the_callers(
    control_plane: ControlPlane, nodes: NodeFactory, namespace: str, asklepios_kubeconfig: Path, k8s_rbac: None
) -> None:
    """The admin may patch nodes; the ServiceAccount may not: `--as-serviceaccount` reports the latter."""
    cp, api = control_plane, control_plane.api
    nodes.watched("a", "b", "c")
    account = f"{namespace}/limited"
    created: list[str] = []
    try:
        created = bind_without_patch_nodes(api, namespace, "limited")
        wait_for(
            lambda: _subject_allowed(api, namespace, "limited", verb="watch", resource="nodes"),
            30,
            what="the new bindings in effect",
        )
        assert _allowed(api, verb="patch", resource="nodes")  # the caller has it
        code, lines = check(cp.kubeconfig, env(nodes.prefix), "--as-serviceaccount", account)
        assert code == 1, lines
        failures = lines_of(lines, "✘")
        assert failures == [line for line in lines if line.startswith("✘ rbac: ")], lines
        assert len(failures) == 1, lines
        assert failures[0].startswith(
            f"✘ rbac: ServiceAccount {account} is missing: patch nodes (all namespaces), needed for: kickout"
        ), failures

        # the ServiceAccount bound by k8s/: every permission, said of it
        code, lines = check(cp.kubeconfig, env(nodes.prefix), "--as-serviceaccount", "kube-system/asklepios")
        assert code == 0, lines
        [granted] = lines_of(lines, "✔", "rbac")
        assert granted.endswith("permissions these settings need are granted to ServiceAccount kube-system/asklepios")

        # an identity that may not create SubjectAccessReviews (k8s/'s own ServiceAccount): said so, a failure
        code, lines = check(asklepios_kubeconfig, env(nodes.prefix), "--as-serviceaccount", account)
        assert code == 1, lines
        [failure] = lines_of(lines, "✘")
        assert failure.startswith(
            f"✘ rbac: cannot check the rights of ServiceAccount {account}: you may not create subjectaccessreviews"
        ), failure
        assert "system:auth-delegator" in failure
    finally:
        for path in reversed(created):
            api.delete(path)


def readme_words(marker: str) -> list[str]:
    """The README's shell command containing `marker` (continuations joined, comment cut), as words."""
    joined = (REPO / "README.md").read_text().replace("\\\n", " ")
    [line] = [line for line in joined.splitlines() if marker in line and not line.lstrip().startswith("#")]
    return shlex.split(line.split(" # ")[0])


@pytest.mark.timeout(120)
def test_the_readme_preflight_as_written(control_plane: ControlPlane, kube: Kube, nodes: NodeFactory) -> None:
    """The README's two preflight lines, run as written (only the node selector is this test's)."""
    nodes.watched("a", "b", "c")
    apply = readme_words("kubectl apply --server-side -f k8s/base/serviceaccount.yaml")
    kube.kubectl(*(str(REPO / word) if word.startswith("k8s/") else word for word in apply[1:]))
    words = readme_words("asklepios check --as-serviceaccount")
    assert words[:2] == ["asklepios", "check"], words
    code, lines = check(control_plane.kubeconfig, env(nodes.prefix), *words[2:])
    assert code == 0, lines
    [rbac] = lines_of(lines, "✔", "rbac")
    assert rbac.endswith("permissions these settings need are granted to ServiceAccount kube-system/asklepios")


@pytest.mark.timeout(180)
def test_the_readme_uninstall_as_written(control_plane: ControlPlane, kube: Kube, nodes: NodeFactory) -> None:
    """The README's uninstall lines in order, `site/` being k8s/ here; `asklepios release` is the release tests'.

    Before: k8s/ applied, an older settings ConfigMap, the Lease, and a node with the
    kickout annotation. After: the listing named that node, and nothing of Asklepios is
    left in kube-system.
    """
    api = control_plane.api
    apply_k8s(kube)
    old = {"metadata": {"name": "asklepios-settings-old", "labels": {"app.kubernetes.io/name": "asklepios"}}}
    api.create("/api/v1/namespaces/kube-system/configmaps", old)
    leases = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"
    if api.get_or_none(f"{leases}/asklepios") is None:
        api.create(leases, {"metadata": {"name": "asklepios"}, "spec": {"holderIdentity": "asklepios-x"}})
    [kicked] = nodes.watched("kicked")
    record = '{"at": "2026-01-01T00:00:00Z", "cordoned": false, "tainted": false}'
    api.patch(f"/api/v1/nodes/{kicked}", {"metadata": {"annotations": {"asklepios.io/kickout": record}}})
    readme = (REPO / "README.md").read_text()
    block = readme.split("### Uninstall", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    listed = ""
    for line in block.splitlines():
        words = shlex.split(line.split(" # ")[0])
        if words[0] == "asklepios":
            continue
        assert words[0] == "kubectl", line
        out = kube.kubectl(*(str(REPO / "k8s") if word == "site/" else word for word in words[1:]))
        if "jsonpath" in line:
            listed = out
    assert kicked in listed.split(), listed
    assert api.get_or_none("/apis/apps/v1/namespaces/kube-system/deployments/asklepios") is None
    assert api.get_or_none(f"{leases}/asklepios") is None
    left = api.get(
        "/api/v1/namespaces/kube-system/configmaps", query={"labelSelector": "app.kubernetes.io/name=asklepios"}
    )
    assert left["items"] == []


def _subject_allowed(admin: Api, namespace: str, account: str, **attributes: str) -> bool:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "resourceAttributes": attributes,
            "user": f"system:serviceaccount:{namespace}:{account}",
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
        },
    }
    return bool(admin.create("/apis/authorization.k8s.io/v1/subjectaccessreviews", review)["status"].get("allowed"))


# One permission from each of the copied ClusterRole and Roles.
PROBES = [
    {"verb": "watch", "resource": "nodes"},
    {
        "verb": "update",
        "group": "coordination.k8s.io",
        "resource": "leases",
        "namespace": "kube-system",
        "name": "asklepios",
    },
    {"verb": "list", "group": "coordination.k8s.io", "resource": "leases", "namespace": "kube-node-lease"},
    {"verb": "get", "resource": "configmaps", "namespace": "kube-system", "name": "asklepios-records"},
]


def _allowed(client: Api, **attributes: str) -> bool:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attributes},
    }
    return bool(
        client.create("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review)["status"].get("allowed")
    )


@pytest.mark.timeout(120)
def test_a_selector_matching_nothing_fails(nodes: NodeFactory, asklepios_kubeconfig: Path, k8s_rbac: None) -> None:
    nodes.watched("a")
    selector = f"{SEL}={nodes.prefix}-nobody"
    code, lines = check(asklepios_kubeconfig, env(nodes.prefix, ASKLEPIOS_NODE_SELECTOR=selector))
    assert code == 1, lines
    [failure] = lines_of(lines, "✘")
    assert failure.startswith(f"✘ nodes: no node matches ASKLEPIOS_NODE_SELECTOR='{selector}'"), failure
    assert "fix ASKLEPIOS_NODE_SELECTOR" in failure


@pytest.mark.timeout(120)
def test_a_catch_all_toleration_is_named_by_owner(
    control_plane: ControlPlane,
    nodes: NodeFactory,
    namespace: str,
    asklepios_kubeconfig: Path,
    k8s_rbac: None,
    asklepios: AsklepiosFactory,
) -> None:
    cp = control_plane
    names = nodes.watched("a", "b", "c")
    labels = {"app": "agent"}
    daemonset = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {SEL: nodes.prefix},
                    "tolerations": [{"operator": "Exists"}],  # everything, the out-of-service taint too
                    "containers": [{"name": "agent", "image": "registry.local/agent:1"}],
                },
            },
        },
    }
    cp.api.create(f"/apis/apps/v1/namespaces/{namespace}/daemonsets", daemonset)

    def placed() -> bool:
        pods = cp.api.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
        return sorted(p["spec"].get("nodeName", "") for p in pods) == sorted(names)

    wait_for(placed, 60, what="one agent pod on each watched node")
    code, lines = check(asklepios_kubeconfig, env(nodes.prefix))
    assert code == 0, lines  # a warning only
    [warning] = lines_of(lines, "!", "pods")
    assert warning.startswith("! pods: 3 pods on watched nodes tolerate the out-of-service taint"), warning
    assert f"DaemonSet {namespace}/agent: 3 pods" in warning

    # `asklepios run` runs the same checks at start-up and logs the warning once, then heals as usual.
    healer = asklepios(env(nodes.prefix))  # started: /readyz answered
    # /readyz answers 200 before the first watch registers (nothing required yet), so it can
    # come before the start-up checks are logged: wait for their last line
    healer.wait_log(lambda r: r.get("logger") == "asklepios.check" and r.get("msg") == "checks done", 30, "checks")
    logged = healer.find(lambda r: r.get("logger") == "asklepios.check" and "result" in r)
    assert [(r["level"], r["check"], r["result"]) for r in logged] == [("warning", "pods", "warning")], logged
    assert f"DaemonSet {namespace}/agent: 3 pods" in logged[0]["detail"]
    assert "toleration" in logged[0]["todo"]


@pytest.mark.timeout(120)
def test_a_statefulset_on_a_local_volume_is_named(
    control_plane: ControlPlane, nodes: NodeFactory, namespace: str, asklepios_kubeconfig: Path, k8s_rbac: None
) -> None:
    """A local PV (node affinity on one hostname), bound to a StatefulSet's claim: its pod cannot move."""
    cp = control_plane
    first, _ = nodes.watched("a", "b")
    pv_name = f"{namespace}-local"[:63]
    claim = "data-db-0"
    cp.api.create(
        "/api/v1/persistentvolumes",
        {
            "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": "1G"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "local": {"path": "/mnt/disks/db"},
                "claimRef": {"namespace": namespace, "name": claim},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": HOSTNAME, "operator": "In", "values": [first]}]}
                        ]
                    }
                },
            },
        },
    )
    try:
        size = {"requests": {"storage": "1G"}}
        volume = {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "resources": size}
        pvc = {"metadata": {"name": claim}, "spec": {**volume, "volumeName": pv_name}}
        cp.api.create(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", pvc)
        labels = {"app": "db"}
        statefulset = {
            "metadata": {"name": "db"},
            "spec": {
                "serviceName": "db",
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "nodeName": first,  # where its volume is (no scheduler needed)
                        "containers": [
                            {
                                "name": "db",
                                "image": "registry.local/db:1",
                                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                            }
                        ],
                    },
                },
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": volume}],
            },
        }
        cp.api.create(f"/apis/apps/v1/namespaces/{namespace}/statefulsets", statefulset)
        wait_for(
            lambda: cp.api.get_or_none(f"/api/v1/namespaces/{namespace}/pods/db-0"), 30, what="the StatefulSet's pod"
        )
        code, lines = check(asklepios_kubeconfig, env(nodes.prefix))
        assert code == 0, lines  # a warning only
        [warning] = lines_of(lines, "!", "volumes")
        assert warning.startswith("! volumes: 1 StatefulSet has volumes bound to one node"), warning
        assert f"{namespace}/db (on {first})" in warning and "a kickout only deletes them" in warning
    finally:
        cp.api.delete(f"/api/v1/persistentvolumes/{pv_name}")


@pytest.mark.timeout(180)
def test_fencing_with_a_wrong_password_fails(
    control_plane: ControlPlane, nodes: NodeFactory, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The BMCs answer with the right password (✔) and refuse the wrong one (✘ with the BMC's error)."""
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "*")
    cp = control_plane
    bmc = cp.bmc()
    names = nodes.watched("a", "b", "c")
    secret_path = f"/api/v1/namespaces/{namespace}/secrets"

    def secret(password: str) -> JSON:
        data = {**bmc.inventory(names), "password": password}
        return {
            "metadata": {"name": "asklepios-bmc"},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }

    cp.api.create(secret_path, secret(bmc.password))
    # The admin identity and the test's namespace: RBAC is not what this test is about.
    settings = env(nodes.prefix, ASKLEPIOS_FENCING="redfish", ASKLEPIOS_NAMESPACE=namespace)
    code, lines = check(cp.kubeconfig, settings)
    assert code == 0, lines
    [fencing] = lines_of(lines, "✔", "fencing")
    assert "3 of 3 BMCs asked answered (PowerState: On 3)" in fencing

    cp.api.call("PUT", f"{secret_path}/asklepios-bmc", secret("not-the-password"))
    code, lines = check(cp.kubeconfig, settings)
    assert code == 1, lines
    failures = lines_of(lines, "✘")
    assert len(failures) == 3, lines
    for failure, name in zip(failures, sorted(names), strict=True):
        assert failure.startswith(f"✘ fencing: the BMC of {name} did not answer: {bmc.system_url(name)}"), failure
        assert "401" in failure or "AccessError" in failure, failure
        assert "credentials in the Secret" in failure


@pytest.mark.timeout(180)
def test_the_inventory_is_checked_against_the_nodes(
    control_plane: ControlPlane, nodes: NodeFactory, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row naming another machine's BMC (its UUID differs), a node without a row, an http URL: ✘;
    a leftover asklepios.io/bmc annotation: !; each line says what to do."""
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "*")
    cp = control_plane
    bmc = cp.bmc()
    a, b, c, d, e = nodes.watched("a", "b", "c", "d", "e")
    inventory = bmc.inventory([a, b, c])
    inventory[f"{a}.url"] = inventory[f"{b}.url"]  # a's row names b's BMC
    inventory[f"{e}.url"] = inventory[f"{c}.url"].replace("https://", "http://")
    cp.api.create(
        f"/api/v1/namespaces/{namespace}/secrets", {"metadata": {"name": "asklepios-bmc"}, "stringData": inventory}
    )
    cp.api.patch(f"/api/v1/nodes/{c}", {"metadata": {"annotations": {"asklepios.io/bmc": inventory[f"{c}.url"]}}})
    settings = env(nodes.prefix, ASKLEPIOS_FENCING="redfish", ASKLEPIOS_NAMESPACE=namespace)
    code, lines = check(cp.kubeconfig, settings)
    assert code == 1, lines
    failures = lines_of(lines, "✘", "fencing")
    [missing] = [f for f in failures if "no NODE.url" in f]
    assert f"1 of 5 watched nodes has no NODE.url in the Secret {namespace}/asklepios-bmc" in missing
    assert f"(no BMC): {d} → add each node's Redfish System URL: kubectl -n {namespace} patch secret" in missing
    [http] = [f for f in failures if "bad URLs" in f]
    assert f"{e}.url='http://" in http
    [other] = [f for f in failures if "names another machine" in f]
    assert f"reports System UUID {bmc.system_uuid(b)}, but {a} reports systemUUID {bmc.system_uuid(a)}" in other
    [leftover] = lines_of(lines, "!", "fencing: 1 node still has the asklepios.io/bmc annotation")
    assert f"fencing Secret): {c} → put each URL into the fencing Secret as NODE.url" in leftover


@pytest.fixture
def old_apiserver(control_plane: ControlPlane) -> Iterator[Path]:
    """A second kube-apiserver reporting v1.25.16, with the lab's certificates, tokens and flags.

    1.31+ apiservers refuse a version below their emulation floor (1.31), so the binary
    is the lab's other release, kube-apiserver v1.28.15, linked with v1.25.16 version
    ldflags. It uses the lab's etcd under a key prefix of its own: a 1.28 apiserver
    writing into the 1.37 cluster's keys would rewrite its APIServices and FlowSchemas.
    Returns an admin kubeconfig for it.
    """
    cp = control_plane
    binary = binaries.bin_dir(OLDEST) / OLD_APISERVER  # built by `hack/controlplane/build.sh 1.28`
    assert binary.is_file(), f"{binary} is missing: run hack/controlplane/build.sh {OLDEST}"
    port = free_port()
    argv = [str(binary), "--etcd-prefix=/registry-v1.25"]
    for arg in cp._apiserver.argv[1:]:
        if arg.startswith("--audit-"):
            continue  # one writer per audit log
        argv.append(f"--secure-port={port}" if arg.startswith("--secure-port=") else arg)
    proc = Proc("kube-apiserver-v1.25", argv, cp.log_dir / "kube-apiserver-v1.25.log")
    server = f"https://127.0.0.1:{port}"
    client = Api(server, cp.admin_token, cp.pki.ca_cert)

    def ready() -> bool:
        try:
            status, _ = client.request("GET", "/readyz", timeout=5)
        except OSError:
            return False
        return status == 200

    proc.start()
    try:
        wait_until(ready, 90, "the v1.25 kube-apiserver /readyz", interval=0.25, alive=[proc])
        for name in ("old-a", "old-b", "old-c"):  # something to watch in its own (empty) cluster
            client.create("/api/v1/nodes", {"metadata": {"name": name, "labels": {SEL: "old"}}})
        yield write_kubeconfig(
            cp.workdir / "kubeconfigs" / "old.kubeconfig", server, cp.pki.ca_cert, cp.admin_token, "old"
        )
    finally:
        client.close_all()
        proc.stop(grace=3.0)


@pytest.mark.needs_all_releases
@pytest.mark.timeout(180)
def test_an_apiserver_older_than_1_26(old_apiserver: Path) -> None:
    settings = env("old", ASKLEPIOS_HTTP_PORT="0", ASKLEPIOS_LEADER_ELECTION="false")
    code, lines = check(old_apiserver, settings)
    assert code == 1, lines
    assert lines[0].startswith(UNFENCED), lines
    assert lines[1].startswith(f"✘ version: Kubernetes {OLD_VERSION} is too old"), lines
    assert "upgrade the control plane to 1.28 or later" in lines[1]
    assert len(lines_of(lines, "✘")) == 1, lines  # nothing else is wrong there

    done = run_asklepios("run", old_apiserver, settings)
    assert done.returncode == 2, (done.stdout, done.stderr)
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"asklepios: Kubernetes {OLD_VERSION} is too old"), line
    assert done.stdout == ""
