"""Bad configuration: exit 2, one line naming the variable and the value, no API call."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from asklepios.config import ConfigError, load_settings
from asklepios.config.settings import unknown_variables, variables

BAD = [
    ("ASKLEPIOS_KICKOUT_SECONDS", "0"),
    ("ASKLEPIOS_KICKOUT_SECONDS", "sixty"),
    ("ASKLEPIOS_KICKOUT_SECONDS", "-5"),
    ("ASKLEPIOS_KICKOUT_SECONDS", "1.5"),
    ("ASKLEPIOS_KICKIN_SECONDS", "0"),
    ("ASKLEPIOS_KICKIN_SECONDS", ""),
    ("ASKLEPIOS_RESYNC_SECONDS", "0"),
    ("ASKLEPIOS_RESYNC_SECONDS", "10s"),
    ("ASKLEPIOS_NODE_SELECTOR", "role in (a"),
    ("ASKLEPIOS_NODE_SELECTOR", "a=b=c"),
    ("ASKLEPIOS_NODE_SELECTOR", "!role in (x)"),
    ("ASKLEPIOS_MAX_UNHEALTHY", "half"),
    ("ASKLEPIOS_MAX_UNHEALTHY", "150%"),
    ("ASKLEPIOS_MAX_UNHEALTHY", "-1"),
    ("ASKLEPIOS_MAX_UNHEALTHY", "0"),  # rejected, not silently 1: it would hold every kickout
    ("ASKLEPIOS_MAX_UNHEALTHY", "0%"),
    ("ASKLEPIOS_BALANCER", "maybe"),
    ("ASKLEPIOS_BALANCER_SELECTOR", "app in ()"),
    ("ASKLEPIOS_BALANCER_NAMESPACES", "openstack,Bad_NS"),
    ("ASKLEPIOS_DRY_RUN", "ja"),
    ("ASKLEPIOS_HTTP_PORT", "70000"),
    ("ASKLEPIOS_HTTP_PORT", "http"),
    ("ASKLEPIOS_LEADER_ELECTION", "2"),
    ("ASKLEPIOS_NAMESPACE", "Kube_System"),
    ("ASKLEPIOS_LOG_FORMAT", "xml"),
    ("ASKLEPIOS_LOG_LEVEL", "verbose"),
    ("ASKLEPIOS_CONFIG_FILE", "/nonexistent/config.yaml"),
    ("ASKLEPIOS_LEASE_RENEW_SECONDS", "20"),
    ("ASKLEPIOS_LEASE_RETRY_SECONDS", "10"),
    ("ASKLEPIOS_LIVENESS_PROBE_PORTS", "kubelet"),
    ("ASKLEPIOS_LIVENESS_PROBE_PORTS", "10250,70000"),
    ("ASKLEPIOS_FENCING", "ipmi"),
    ("ASKLEPIOS_FENCING_SECRET", "Bad_Name"),
    ("ASKLEPIOS_FENCING_TIMEOUT_SECONDS", "0"),
    ("ASKLEPIOS_FENCING_POWER_ON", "maybe"),
    ("ASKLEPIOS_FENCING_INSECURE", "sure"),
    ("ASKLEPIOS_KICKIN_POD_WAIT_SECONDS", "-1"),
    ("ASKLEPIOS_BALANCER_MAX_MOVES_PER_HOUR", "0"),
    ("ASKLEPIOS_FORCE_DELETE", "2"),
]


@pytest.fixture
def silent_apiserver(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    """A kubeconfig pointing at a socket we own, to prove no request is ever made."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"""
    )
    yield listener, kubeconfig
    listener.close()


@pytest.mark.parametrize(("name", "value"), BAD)
def test_bad_value_exits_2_naming_it(name: str, value: str, silent_apiserver: tuple[socket.socket, Path]) -> None:
    listener, kubeconfig = silent_apiserver
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASKLEPIOS_")}
    env.update({"ASKLEPIOS_HTTP_PORT": "0", "KUBECONFIG": str(kubeconfig), name: value})
    done = subprocess.run(
        [sys.executable, "-m", "asklepios", "run"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert name in lines[0]
    assert repr(value) in lines[0]
    assert "expected" in lines[0]
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody connected: no API call was made


def test_defaults_match_the_contract() -> None:
    s = load_settings({})
    assert (s.kickout_seconds, s.kickin_seconds, s.resync_seconds) == (60, 60, 10)
    assert str(s.node_selector) == "node-role.kubernetes.io/control-plane"
    assert str(s.max_unhealthy) == "50%"
    assert (s.balancer, s.dry_run, s.leader_election) == (False, False, True)
    assert str(s.balancer_selector) == "asklepios.io/balance=true"
    assert s.balancer_namespaces == ()
    assert (s.http_port, s.namespace, s.log_format, s.log_level) == (8080, "kube-system", "json", "info")
    assert s.liveness_probe_ports == (10250,)
    assert (s.fencing, s.fencing_secret, s.fencing_timeout_seconds) == ("off", "asklepios-bmc", 60)
    assert (s.fencing_power_on, s.fencing_insecure, s.force_delete) == (True, False, True)
    assert (s.kickin_pod_wait_seconds, s.balancer_max_moves_per_hour) == (300, 6)


def test_probe_ports_parse_and_empty_turns_the_probe_off() -> None:
    assert load_settings({"ASKLEPIOS_LIVENESS_PROBE_PORTS": "10250, 22,10250"}).liveness_probe_ports == (10250, 22)
    assert load_settings({"ASKLEPIOS_LIVENESS_PROBE_PORTS": ""}).liveness_probe_ports == ()


def test_namespace_falls_back_to_pod_namespace() -> None:
    assert load_settings({"POD_NAMESPACE": "ops"}).namespace == "ops"
    assert load_settings({"POD_NAMESPACE": "ops", "ASKLEPIOS_NAMESPACE": "x"}).namespace == "x"


def test_legacy_config_file_and_environment_wins(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("kickout: 120\nkickin: 30\nbalancer: true\nsleep: 5\n")
    s = load_settings({"ASKLEPIOS_CONFIG_FILE": str(path), "ASKLEPIOS_KICKIN_SECONDS": "45"})
    assert (s.kickout_seconds, s.kickin_seconds, s.balancer, s.resync_seconds) == (120, 45, True, 5)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("kickout: [1\n", "YAML"),
        ("- 1\n", "mapping"),
        ("nap: 3\n", "unknown key 'nap'"),
        ("kickout: 0\n", "KICKOUT"),
    ],
)
def test_bad_legacy_file(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=fragment):
        load_settings({"ASKLEPIOS_CONFIG_FILE": str(path)})


def test_max_unhealthy_zero_names_what_to_do_instead() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"ASKLEPIOS_MAX_UNHEALTHY": "0"})
    assert "0 would hold every kickout" in str(caught.value)
    assert "asklepios pause" in str(caught.value)
    assert load_settings({"ASKLEPIOS_MAX_UNHEALTHY": "1"}).max_unhealthy.limit(3) == 1


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("ASKLEPIOS_KICKOUT_SECOND", "ASKLEPIOS_KICKOUT_SECONDS"),
        ("ASKLEPIOS_KICKIN_SECS", "ASKLEPIOS_KICKIN_SECONDS"),
        ("ASKLEPIOS_MAXUNHEALTHY", "ASKLEPIOS_MAX_UNHEALTHY"),
        ("ASKLEPIOS_FENCE", "ASKLEPIOS_FENCING"),
        ("ASKLEPIOS_FLAP_MAX_KICKOUT", "ASKLEPIOS_FLAP_MAX_KICKOUTS"),
    ],
)
def test_an_unknown_variable_names_the_closest_known_one(typo: str, meant: str) -> None:
    assert unknown_variables({typo: "5", "ASKLEPIOS_KICKOUT_SECONDS": "5"}) == [
        f"{typo} is not an Asklepios setting and is ignored; did you mean {meant}?"
    ]


def test_known_and_tool_variables_are_not_warned_about() -> None:
    env = {name: default for name, default in variables()}
    env |= {"ASKLEPIOS_BIN_DIR": "/x", "ASKLEPIOS_REPO": "/y", "ASKLEPIOS_BENCH_LOCK": "/z", "PATH": "/bin"}
    env |= {"ASKLEPIOS_FLAP_MAX_KICKOUTS": "3", "ASKLEPIOS_FLAP_WINDOW_SECONDS": "3600"}
    assert unknown_variables(env) == []
    [far] = unknown_variables({"ASKLEPIOS_ZZZ": "1"})
    assert far.endswith("see `asklepios run --help` for the ASKLEPIOS_* variables")


def test_every_setting_is_listed_with_its_contract_default() -> None:
    listed = dict(variables())
    assert listed["ASKLEPIOS_KICKOUT_SECONDS"] == "60"
    assert listed["ASKLEPIOS_MAX_UNHEALTHY"] == "50%"
    assert listed["ASKLEPIOS_FENCING"] == "off"
    assert len(listed) == len(attrs_fields_of_settings())


def attrs_fields_of_settings() -> list[str]:
    import attrs

    from asklepios.config import Settings

    return [f.name for f in attrs.fields(Settings)]
