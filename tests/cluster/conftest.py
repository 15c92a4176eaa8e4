"""Fixtures of the cluster tests: one real control plane per session, nodes and namespaces per test.

Every test in ``tests/cluster`` is marked ``cluster``. The binaries are built (if missing)
once, after collection and outside any test's timeout, with output shown live; a failed
build makes every cluster test fail, never skip.

Fixtures:

* ``control_plane`` (session): a started :class:`asklepios_lab.ControlPlane` of the default
  release; tests marked ``both_releases`` run once per supported release (1.37 and 1.28).
  Its apiserver audits the requests of :data:`ASKLEPIOS_USER` and :data:`UNDER_TEST_USER`.
* ``kube`` (session): :class:`asklepios_lab.Kube` (kubectl with the admin kubeconfig).
* ``nodes`` (function): :class:`NodeFactory`; nodes named after the test, removed after.
* ``namespace`` (function): a fresh namespace name, deleted after the test.
* ``asklepios`` (function): :class:`tests.cluster.runner.AsklepiosFactory`, starting
  ``python -m asklepios run`` processes as :data:`UNDER_TEST_USER` (an admin identity of
  its own, so the audit log tells Asklepios' requests from the test's); each must exit 0
  on SIGTERM at the end.
* ``asklepios_kubeconfig`` (session): kubeconfig of the static token of
  :data:`ASKLEPIOS_USER` (RBAC for it is up to the test).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from asklepios_lab import ControlPlane, Kube, StaticToken, binaries, wait_for
from tests.cluster.runner import AsklepiosFactory

HERE = Path(__file__).parent
WATCH_LABEL = "asklepios.test/id"  # each test's Asklepios watches only its own nodes
ASKLEPIOS_USER = "system:serviceaccount:kube-system:asklepios"
ASKLEPIOS_TOKEN = StaticToken(
    token=secrets.token_hex(16),
    user=ASKLEPIOS_USER,
    uid="asklepios-lab-sa",
    groups=["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
)
UNDER_TEST_USER = "asklepios-under-test"
UNDER_TEST_TOKEN = StaticToken(secrets.token_hex(16), UNDER_TEST_USER, "asklepios-under-test", ["system:masters"])
RELEASES = binaries.supported()  # default first


class _Build:
    """Outcome of the builds run after collection (see pytest_collection_finish)."""

    bin_dirs: dict[str, Path] = {}  # noqa: RUF012 - one per release, filled once
    error: BaseException | None = None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_releases: run once per supported Kubernetes release")
    config.addinivalue_line("markers", "needs_all_releases: uses binaries of every release (built first)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise the control plane by release: every release for `both_releases` tests."""
    if "control_plane" in metafunc.fixturenames:
        releases = RELEASES if metafunc.definition.get_closest_marker("both_releases") else RELEASES[:1]
        metafunc.parametrize("control_plane", releases, indirect=True, scope="session")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.cluster)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build missing binaries now: outside test timeouts, with the build log visible."""
    if session.config.option.collectonly:
        return
    if not any(item.get_closest_marker("cluster") for item in session.items):
        return
    wanted = [RELEASES[0]]
    if any(item.get_closest_marker(m) for item in session.items for m in ("both_releases", "needs_all_releases")):
        wanted = RELEASES
    capman = session.config.pluginmanager.getplugin("capturemanager")
    try:
        with capman.global_and_fixture_disabled():
            for release in wanted:  # one at a time: each build uses both cores
                _Build.bin_dirs[release] = binaries.ensure(release)
    except Exception as exc:  # reported by the control_plane fixture, i.e. as test errors
        _Build.error = exc


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    release: str = getattr(request, "param", RELEASES[0])
    if _Build.error is not None:
        raise RuntimeError("building the control-plane binaries failed") from _Build.error
    cp = ControlPlane(
        tmp_path_factory.mktemp(f"controlplane-{release}"),
        bin_dir=_Build.bin_dirs.get(release) or binaries.ensure(release),
        extra_tokens=[ASKLEPIOS_TOKEN, UNDER_TEST_TOKEN],
        audit_users=[ASKLEPIOS_USER, UNDER_TEST_USER],
    )
    with cp:
        yield cp


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> Kube:
    return Kube(control_plane.kubeconfig)


@pytest.fixture(scope="session")
def asklepios_kubeconfig(control_plane: ControlPlane) -> Path:
    return control_plane.kubeconfig_for(ASKLEPIOS_TOKEN.token, "asklepios")


def unique_id(request: pytest.FixtureRequest, length: int = 30) -> str:
    """A DNS-label-safe, unique id for the current test: ``<test name>-<4 hex>``."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().removeprefix("test_")).strip("-")
    return f"{name[:length].strip('-')}-{secrets.token_hex(2)}"


class NodeFactory:
    """Adds kwok nodes named ``<test id>-<suffix>``; removes them (and their kwok) at the end."""

    def __init__(self, cp: ControlPlane, prefix: str) -> None:
        self.cp = cp
        self.prefix = prefix
        self.names: list[str] = []

    def add(
        self,
        suffix: str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        taints: Sequence[Mapping[str, Any]] | None = None,
        control_plane: bool = False,
        wait_ready: bool = True,
    ) -> str:
        """Add one node (Ready unless ``wait_ready=False``); returns its name."""
        name = f"{self.prefix}-{suffix or len(self.names)}"
        self.names.append(name)
        self.cp.add_node(name, labels, taints, control_plane=control_plane, wait_ready=wait_ready)
        return name

    def watched(self, *suffixes: str, **kw: Any) -> list[str]:
        """Add nodes labelled so that only this test's Asklepios watches them (see checks.env)."""
        labels = {WATCH_LABEL: self.prefix, **(kw.pop("labels", None) or {})}
        return [self.add(suffix, labels=labels, **kw) for suffix in suffixes]

    def add_many(self, count: int, **kw: Any) -> list[str]:
        return [self.add(**kw) for _ in range(count)]

    def cleanup(self) -> None:
        for name in reversed(self.names):
            self.cp.remove_node(name)
        self.names.clear()


@pytest.fixture
def nodes(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[NodeFactory]:
    factory = NodeFactory(control_plane, unique_id(request))
    yield factory
    factory.cleanup()


@pytest.fixture
def namespace(control_plane: ControlPlane, nodes: NodeFactory, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount); deleted after the test.

    Depends on ``nodes`` so that it is torn down first, while the nodes' kwoks still run
    and can terminate the namespace's pods.
    """
    name = unique_id(request, 50)
    api = control_plane.api
    api.create("/api/v1/namespaces", {"metadata": {"name": name}})
    wait_for(
        lambda: api.get_or_none(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
        30,
        what=f"default ServiceAccount in {name}",
    )
    yield name
    api.delete(f"/api/v1/namespaces/{name}")


@pytest.fixture
def asklepios(control_plane: ControlPlane, tmp_path: Path) -> Iterator[AsklepiosFactory]:
    factory = AsklepiosFactory(control_plane.kubeconfig_for(UNDER_TEST_TOKEN.token, "under-test"), tmp_path)
    yield factory
    complaints = list(factory.close())
    assert not complaints, "\n".join(complaints)


@pytest.fixture
def apiserver_outage(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """For tests that stop the apiserver: afterwards the controllers are restarted, so
    their lagging informers do not leak into the next test."""
    yield control_plane
    control_plane.restart_controllers()
