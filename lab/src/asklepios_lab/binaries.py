"""Where the lab's upstream binaries live, and building them when they are missing.

The lab runs real upstream components (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok, the CSI external-attacher) pinned in ``hack/controlplane/versions.env``. They are built from
source by ``hack/controlplane/build.sh`` into a cache directory outside the repository.
This module finds that directory and, when a binary is missing, runs the build script
(under a file lock, so two test runs never compile the same binary at once).

Several Kubernetes releases can be built side by side: the default one
(``hack/controlplane/versions.env``) and one per ``hack/controlplane/v*/versions.env``
(e.g. ``v1.28/versions.env``). Every function taking ``version`` accepts ``None`` (the
default release, exactly as before), a full version (``"v1.28.15"``, ``"1.28.15"``) or a
major.minor (``"1.28"``, ``"v1.28"``); :func:`supported` lists them. Each release has its
own bin dir, ``~/.cache/asklepios/bin/<KUBERNETES_VERSION>`` (``$XDG_CACHE_HOME`` if set);
``$ASKLEPIOS_BIN_DIR`` overrides the default release's only.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
from pathlib import Path

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "csi-attacher")


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


def _read_env(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip().strip("'\"")
    return out


def _release_envs() -> list[Path]:
    """The versions.env files, the default release's first (same order as build.sh)."""
    root = repo_root() / "hack" / "controlplane"
    return [root / "versions.env", *sorted(p for p in root.glob("v*/versions.env") if p.is_file())]


def _major_minor(version: str) -> str:
    return ".".join(version.removeprefix("v").split(".")[:2])


def _env_file(version: str | None) -> Path:
    """The versions.env of release ``version`` (see the module docstring); ValueError if unknown."""
    envs = _release_envs()
    if version is None:
        return envs[0]
    want = version.strip().removeprefix("v")
    for path in envs:
        pinned = _read_env(path).get("KUBERNETES_VERSION", "").removeprefix("v")
        if want in (pinned, _major_minor(pinned)):
            return path
    raise ValueError(f"unknown Kubernetes version {version!r}; supported: {', '.join(supported())}")


def supported() -> list[str]:
    """The Kubernetes versions the lab can build (``KUBERNETES_VERSION``s), the default first."""
    return [_read_env(p)["KUBERNETES_VERSION"] for p in _release_envs()]


def default_version() -> str:
    """The default release's ``KUBERNETES_VERSION`` (what ``version=None`` means)."""
    return supported()[0]


def is_default(version: str | None) -> bool:
    """True if ``version`` selects the default release."""
    return _env_file(version) == _release_envs()[0]


def versions(version: str | None = None) -> dict[str, str]:
    """The pinned versions of a release (default: ``hack/controlplane/versions.env``)."""
    return _read_env(_env_file(version))


def bin_dir(version: str | None = None) -> Path:
    """The directory build.sh uses (same rule as the script: env override, else XDG cache).

    ``$ASKLEPIOS_BIN_DIR`` applies to the default release only, as in build.sh.
    """
    env = os.environ.get("ASKLEPIOS_BIN_DIR")
    if env and is_default(version):
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "asklepios" / "bin" / versions(version)["KUBERNETES_VERSION"]


def missing(directory: Path | None = None, version: str | None = None) -> list[str]:
    """Names of the binaries not yet present (and executable) in ``directory``.

    ``directory`` defaults to ``bin_dir(version)``.
    """
    d = directory or bin_dir(version)
    return [b for b in binaries_of(version) if not os.access(d / b, os.X_OK)]


def binaries_of(version: str | None = None) -> tuple[str, ...]:
    """The binaries build.sh makes for a release (1.28 adds an apiserver reporting v1.25)."""
    reporting = versions(version).get("APISERVER_REPORTING", "")
    return BINARIES + ((f"kube-apiserver-{reporting.rsplit('.', 1)[0]}",) if reporting else ())


def release_of(directory: Path) -> str:
    """The Kubernetes version of the binaries in ``directory`` (``kube-apiserver --version``).

    For code that is handed a bin dir and must adapt to its release (flags, controller
    names); e.g. ``"v1.28.15"``. Raises :class:`BuildError` if it cannot be read.
    """
    binary = directory / "kube-apiserver"
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(f"cannot run {binary} --version: {exc}") from exc
    match = re.search(r"\bv\d+\.\d+\.\d+\S*", out.stdout)
    if not match:
        raise BuildError(f"{binary} --version printed {out.stdout!r}")
    return match.group(0)


def ensure(version: str | None = None) -> Path:
    """Return the bin dir of a release, first running build.sh if any binary is missing.

    The build's progress (its stderr) is streamed to this process's stderr; its last
    stdout line is the bin dir. Raises :class:`BuildError` when the build fails,
    ValueError for a version that is not in :func:`supported`.
    """
    directory = bin_dir(version)
    if not missing(directory):
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building: wait for it
        if not missing(directory):
            return directory
        script = repo_root() / "hack" / "controlplane" / "build.sh"
        # the default release is built exactly as before: build.sh without an argument
        selector = [] if is_default(version) else [versions(version)["KUBERNETES_VERSION"]]
        print(f"[asklepios-lab] building missing binaries: {missing(directory)}", file=sys.stderr)
        result = subprocess.run(
            ["bash", str(script), *selector],
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
