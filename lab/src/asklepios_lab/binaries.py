"""Where the lab's upstream binaries live, and building them when they are missing.

The lab runs real upstream components (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok) pinned in ``hack/controlplane/versions.env``. They are built from
source by ``hack/controlplane/build.sh`` into a cache directory outside the repository.
This module finds that directory and, when a binary is missing, runs the build script
(under a file lock, so two test runs never compile the same binary at once).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


class BuildError(RuntimeError):
    """``hack/controlplane/build.sh`` failed or did not produce every binary."""


def repo_root() -> Path:
    """The Asklepios checkout: ``$ASKLEPIOS_REPO`` or the directory above ``lab/``."""
    env = os.environ.get("ASKLEPIOS_REPO")
    if env:
        return Path(env).resolve()
    for parent in Path(__file__).resolve().parents:
        if (parent / "hack" / "controlplane" / "build.sh").is_file():
            return parent
    raise BuildError("cannot find hack/controlplane/build.sh; set ASKLEPIOS_REPO")


def versions() -> dict[str, str]:
    """The pinned versions from ``hack/controlplane/versions.env``."""
    out: dict[str, str] = {}
    text = (repo_root() / "hack" / "controlplane" / "versions.env").read_text()
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip().strip("'\"")
    return out


def bin_dir() -> Path:
    """The directory build.sh uses (same rule as the script: env override, else XDG cache)."""
    env = os.environ.get("ASKLEPIOS_BIN_DIR")
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "asklepios" / "bin" / versions()["KUBERNETES_VERSION"]


def missing(directory: Path | None = None) -> list[str]:
    """Names of the binaries not yet present (and executable) in ``directory``."""
    d = directory or bin_dir()
    return [b for b in BINARIES if not os.access(d / b, os.X_OK)]


def ensure() -> Path:
    """Return the bin dir, first running build.sh if any binary is missing.

    The build's progress (its stderr) is streamed to this process's stderr; its last
    stdout line is the bin dir. Raises :class:`BuildError` when the build fails.
    """
    directory = bin_dir()
    if not missing(directory):
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building: wait for it
        if not missing(directory):
            return directory
        script = repo_root() / "hack" / "controlplane" / "build.sh"
        print(f"[asklepios-lab] building missing binaries: {missing(directory)}", file=sys.stderr)
        result = subprocess.run(
            ["bash", str(script)],
            stdout=subprocess.PIPE,
            stderr=None,  # inherited: the build log streams to our stderr
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BuildError(f"{script} exited with {result.returncode}")
        lines = result.stdout.strip().splitlines()
        built = Path(lines[-1]) if lines else directory
    still = missing(built)
    if still:
        raise BuildError(f"build finished but {still} are missing in {built}")
    return built
