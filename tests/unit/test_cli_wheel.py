"""The CLI on a workstation, as the README installs it: hack/build-wheel.sh, then `pipx install`.

Runs the real commands: the wheel is built from this checkout, pipx comes from the
package index into a throwaway venv, and pipx installs the wheel with its
dependencies (pip's cache makes that quick after the first time). The installed
`asklepios` must answer `--version` and, with no kubeconfig anywhere, say so in one
line with exit 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from asklepios import __version__

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-4000:])
    return done.stdout


def installed_cli_works(binary: Path, home: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ASKLEPIOS_", "KUBE"))}
    env = {**clean, "HOME": str(home)}
    assert run(binary, "--version", env=env) == f"asklepios {__version__}\n"
    done = subprocess.run([binary, "check"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("asklepios: no kubeconfig: KUBECONFIG is unset and ~/.kube/config does not exist")


@pytest.mark.timeout(900)
def test_wheel_then_pipx_install(tmp_path: Path) -> None:
    wheel = Path(run("bash", ROOT / "hack" / "build-wheel.sh", tmp_path / "dist").strip())
    assert wheel.name == f"asklepios-{__version__}-py3-none-any.whl"
    tools = tmp_path / "tools"
    run(sys.executable, "-m", "venv", tools)
    run(tools / "bin" / "pip", "install", "--quiet", "pipx")
    env = {**os.environ, "PIPX_HOME": str(tmp_path / "pipx"), "PIPX_BIN_DIR": str(tmp_path / "bin")}
    env["PIPX_MAN_DIR"] = str(tmp_path / "man")
    run(tools / "bin" / "pipx", "install", "--python", sys.executable, wheel, env=env)
    installed_cli_works(tmp_path / "bin" / "asklepios", tmp_path / "home")

    # the other way docs/install.md shows: a venv of its own
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "pip", "install", "--quiet", wheel)
    installed_cli_works(venv / "bin" / "asklepios", tmp_path / "home")
