"""The command line as an operator meets it: which kubeconfig, one-line errors, warnings, --version.

Each test runs `python -m asklepios` as a process with a clean environment (HOME in
a temporary directory, no KUBECONFIG unless the test sets one). A small HTTP server
on 127.0.0.1 stands in for the apiserver where a test needs one: it records the
requests it gets (path and bearer token), so "this kubeconfig was used" is read from
what reached the server, not from what the CLI says about itself.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from asklepios import __version__
from asklepios.config.settings import variables
from asklepios.core.preflight.settings import UNFENCED
from asklepios.kube.kubeconfig import IN_CLUSTER, KubeConfigError, KubeSource, resolve_source


class FakeApiserver(ThreadingHTTPServer):
    """Answers GET /version like a 1.37 apiserver and 404 to everything else; records each request."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str, str]] = []  # (method, path, Authorization)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeApiserver

    def _answer(self) -> None:
        self.server.seen.append((self.command, self.path, self.headers.get("Authorization", "")))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.command == "GET" and self.path == "/version":
            status, body = 200, {"gitVersion": "v1.37.2", "major": "1", "minor": "37"}
        else:
            status, body = 404, {"kind": "Status", "message": "not found here", "reason": "NotFound"}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer  # noqa: N815 - http.server's names

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def apiserver() -> Iterator[FakeApiserver]:
    server = FakeApiserver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


def kubeconfig(path: Path, server: str, token: str, context: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "{server}"}}}}]
users: [{{name: u, user: {{token: {token}}}}}]
contexts: [{{name: {context}, context: {{cluster: c, user: u}}}}]
current-context: {context}
"""
    )
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def asklepios(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m asklepios ARGS` with HOME=home, no KUBECONFIG, no ASKLEPIOS_* but `env`."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("ASKLEPIOS_", "KUBE"))}
    environment = {**keep, "HOME": str(home), "ASKLEPIOS_LOG_FORMAT": "json", **env}
    return subprocess.run(
        [sys.executable, "-m", "asklepios", *args], env=environment, capture_output=True, text=True, timeout=60
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


# --- which configuration -------------------------------------------------------------


def test_home_kube_config_is_used_when_kubeconfig_is_unset(tmp_path: Path, apiserver: FakeApiserver) -> None:
    kubeconfig(tmp_path / ".kube" / "config", apiserver.url, "token-from-home")
    done = asklepios(tmp_path, "check")
    assert done.returncode == 1, done.stderr  # the fake answers 404 to the rest: failures, not a crash
    assert ("GET", "/version", "Bearer token-from-home") in apiserver.seen
    assert done.stdout.splitlines()[0].startswith("! fencing: off: ")  # settings first, then the cluster
    assert "✔ version: Kubernetes v1.37.2" in done.stdout


def test_kubeconfig_flag_wins_over_the_variable_and_home(tmp_path: Path, apiserver: FakeApiserver) -> None:
    kubeconfig(tmp_path / ".kube" / "config", apiserver.url, "token-from-home")
    env_file = kubeconfig(tmp_path / "env.yaml", apiserver.url, "token-from-env")
    flag_file = kubeconfig(tmp_path / "flag.yaml", apiserver.url, "token-from-flag", context="other")
    asklepios(tmp_path, "check", KUBECONFIG=str(env_file))
    asklepios(tmp_path, "--kubeconfig", str(flag_file), "check", KUBECONFIG=str(env_file))
    asklepios(tmp_path, "check", "--kubeconfig", str(flag_file), "--context", "other", KUBECONFIG=str(env_file))
    tokens = [auth for method, path, auth in apiserver.seen if path == "/version"]
    assert tokens == ["Bearer token-from-env", "Bearer token-from-flag", "Bearer token-from-flag"]


def test_precedence_is_kubectls(tmp_path: Path) -> None:
    home = tmp_path / "home"
    token = tmp_path / "token"
    pod = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}  # resolved, never dialled
    config = kubeconfig(home / ".kube" / "config", "https://h:6443", "t")
    other = kubeconfig(tmp_path / "other", "https://h:6443", "t")

    def source(flag: str | None = None, context: str | None = None, **env: str) -> KubeSource:
        return resolve_source(flag, context, environ=env, home=home, token=token)

    assert source() == KubeSource(str(config))
    assert source(KUBECONFIG=f"{tmp_path}/missing:{other}") == KubeSource(f"{tmp_path}/missing:{other}")
    assert source(str(other), "ctx", KUBECONFIG=str(config)) == KubeSource(str(other), "ctx")
    token.write_text("sa-token")
    assert source(**pod) == KubeSource(str(config))  # a kubeconfig that exists wins, also in a pod
    config.unlink()
    assert source(**pod) == KubeSource(IN_CLUSTER)
    assert source(KUBECONFIG=f"{tmp_path}/missing", **pod) == KubeSource(IN_CLUSTER)  # client-go: missing is skipped
    with pytest.raises(KubeConfigError, match="only the in-cluster service account"):
        source(None, "ctx", **pod)
    token.unlink()
    with pytest.raises(KubeConfigError, match="not a pod with a service account token"):
        source(**pod)
    with pytest.raises(KubeConfigError, match=r"^--kubeconfig .*/nope: no such file$"):
        source(str(tmp_path / "nope"))


# --- one line, exit 2 / exit 1 --------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("not: [yaml", "while parsing a flow sequence"),
        ("apiVersion: v1\nkind: Config\n", "Expected key current-context"),
        ("- just\n- a list\n", "kubeconfig"),
    ],
)
def test_a_broken_kubeconfig_is_one_line_and_exit_2(tmp_path: Path, content: str, fragment: str) -> None:
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text(content)
    for command in ("check", "status", "run"):
        done = asklepios(tmp_path, command, ASKLEPIOS_HTTP_PORT="0")
        assert done.returncode == 2, (command, done.stderr)
        line = one_line(done)
        assert line.startswith(f"asklepios: kubeconfig {tmp_path}/.kube/config: "), line
        assert fragment in line, line


def test_no_kubeconfig_anywhere_and_an_unknown_context(tmp_path: Path) -> None:
    done = asklepios(tmp_path, "status")
    assert done.returncode == 2
    assert one_line(done) == (
        "asklepios: no kubeconfig: KUBECONFIG is unset and ~/.kube/config does not exist, and this is not a pod "
        "with a service account token → pass --kubeconfig FILE or set KUBECONFIG"
    )
    kubeconfig(tmp_path / ".kube" / "config", f"http://127.0.0.1:{closed_port()}", "t")
    done = asklepios(tmp_path, "check", "--context", "nope")
    assert done.returncode == 2
    assert "Expected object with name nope" in one_line(done)


def test_an_unreachable_apiserver_is_one_line_and_exit_1(tmp_path: Path) -> None:
    port = closed_port()
    kubeconfig(tmp_path / ".kube" / "config", f"http://127.0.0.1:{port}", "t")
    for command in ("check", "status"):
        done = asklepios(tmp_path, command)
        assert done.returncode == 1, done.stderr
        line = one_line(done)
        assert line.startswith("asklepios: cannot reach the apiserver: "), line
        assert f"127.0.0.1:{port}" in line
    assert asklepios(tmp_path, "check").stdout == ""


def test_a_bad_service_account_name_is_exit_2(tmp_path: Path) -> None:
    done = asklepios(tmp_path, "check", "--as-serviceaccount", "asklepios")
    assert done.returncode == 2
    assert one_line(done) == (
        "asklepios: --as-serviceaccount 'asklepios' is not allowed: "
        "expected NAMESPACE/NAME of a ServiceAccount, e.g. kube-system/asklepios"
    )


# --- warnings -------------------------------------------------------------------------


def test_a_typo_in_a_variable_is_a_warning_naming_the_right_one(tmp_path: Path, apiserver: FakeApiserver) -> None:
    kubeconfig(tmp_path / ".kube" / "config", apiserver.url, "t")
    done = asklepios(tmp_path, "check", ASKLEPIOS_KICKOUT_SECOND="5", ASKLEPIOS_BIN_DIR="/opt/bin")
    assert done.stdout.splitlines()[0] == (
        "! config: ASKLEPIOS_KICKOUT_SECOND is not an Asklepios setting and is ignored; "
        "did you mean ASKLEPIOS_KICKOUT_SECONDS? → fix the variable's name, or remove it"
    )
    assert "ASKLEPIOS_BIN_DIR" not in done.stdout  # the lab's own variable: known
    done = asklepios(tmp_path, "status", ASKLEPIOS_KICKOUT_SECOND="5")
    assert done.returncode == 1  # 404s from the fake: the warning did not stop it
    [warning] = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert warning["level"] == "warning"
    assert "did you mean ASKLEPIOS_KICKOUT_SECONDS?" in warning["msg"]


def test_run_without_fencing_logs_one_warning_saying_what_remains_possible(tmp_path: Path) -> None:
    kubeconfig(tmp_path / ".kube" / "config", f"http://127.0.0.1:{closed_port()}", "t")
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("ASKLEPIOS_", "KUBE"))}
    env = {**keep, "HOME": str(tmp_path), "ASKLEPIOS_HTTP_PORT": "0", "ASKLEPIOS_LEADER_ELECTION": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "asklepios", "run"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = json.loads(proc.stderr.readline())  # before anything else: the settings' warning
        assert (first["level"], first["check"]) == ("warning", "fencing")
        assert first["msg"] == f"fencing: {UNFENCED}"
        assert "router answering 'host unreachable'" in first["msg"]
        for line in proc.stderr:  # the start-up checks are logged once SIGTERM is handled
            if json.loads(line)["msg"] == "checks done":
                break
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=30)[1]
    assert "fencing: off" not in rest  # once
    assert proc.returncode == 0


# --- version and help -----------------------------------------------------------------


def test_version_both_ways(tmp_path: Path) -> None:
    for args in (["--version"], ["version"]):
        done = asklepios(tmp_path, *args)
        assert (done.returncode, done.stdout) == (0, f"asklepios {__version__}\n"), args


def test_help_lists_the_variables(tmp_path: Path) -> None:
    top = asklepios(tmp_path, "--help")
    assert top.returncode == 0
    assert "`asklepios run --help` lists them" in " ".join(top.stdout.split())
    for flag in ("--kubeconfig", "--context", "--version"):
        assert flag in top.stdout
    run = asklepios(tmp_path, "run", "--help").stdout
    for name, default in variables():
        assert any(line.split() == [name, default or "(empty)"] for line in run.splitlines()), name
    check = asklepios(tmp_path, "check", "--help").stdout
    assert "--as-serviceaccount" in check
    assert "--kubeconfig" in check
