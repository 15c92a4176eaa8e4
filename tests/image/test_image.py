"""The Containerfile really builds from the lock file, and the image is what we say it is.

No registry and no Docker engine are reachable here, so `hack/build-image.sh` makes
the base image from a Debian rootfs (debootstrap) and builds with buildah (installed
by hack/test.sh from Debian's packages). One build (with --save, so the archive and the
SBOM beside it are checked too); then: UID 65532 and the entrypoint, 120 MB or less,
no shell or package manager inside, bytecode for every module (a read-only root
filesystem compiles nothing), the SBOM naming exactly what `pip list` finds in the
image's venv, and `asklepios run` in the image reaching /readyz against the lab's
apiserver (the time it took is printed: docs/image.md has the figure).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from asklepios import __version__
from asklepios_lab import ControlPlane, binaries
from asklepios_lab.api import write_kubeconfig
from asklepios_lab.procs import free_port

REPO = Path(__file__).resolve().parents[2]
IMAGE = f"localhost/asklepios:{__version__}"
LIMIT_BYTES = 120_000_000  # 120 MB, the goal of the image's size
VENV = "opt/asklepios"
SITE = f"{VENV}/lib/python3.11/site-packages"
# Whichever test comes first builds the image (the module's fixture): up to minutes.
pytestmark = pytest.mark.timeout(1500)


def buildah(*args: str, timeout: float = 120) -> str:
    out = subprocess.run(
        ["buildah", "--storage-driver", "vfs", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert out.returncode == 0, f"buildah {' '.join(args)}: {out.stderr}"
    return out.stdout.strip()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    saved = tmp_path_factory.mktemp("image") / f"asklepios-{__version__}.tar"
    done = subprocess.run(
        ["bash", str(REPO / "hack" / "build-image.sh"), "--save", str(saved)],
        capture_output=True,
        text=True,
        timeout=1400,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"asklepios {__version__}" in done.stdout + done.stderr  # the script ran it in the image
    return saved


@pytest.fixture(scope="module")
def rootfs(archive: Path) -> Iterator[Path]:
    """The image's filesystem, mounted read-only from a working container."""
    container = buildah("from", "--pull=never", IMAGE)
    try:
        yield Path(buildah("mount", container))
    finally:
        buildah("rm", container)


def test_the_image_runs_as_65532_with_asklepios_as_entrypoint(archive: Path) -> None:
    config = buildah(
        "inspect", "--format", "{{.OCIv1.Config.User}} {{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.Cmd}}", IMAGE
    )
    assert config == "65532:65532 [asklepios] [run]"


def test_the_image_is_120_mb_or_less(archive: Path) -> None:
    size = archive.stat().st_size  # the docker-archive: the layer uncompressed, plus config
    print(f"image archive: {size / 1e6:.1f} MB; buildah images: {buildah('images', '--format', '{{.Size}}', IMAGE)}")
    assert size <= LIMIT_BYTES, size


def test_no_shell_and_no_package_manager(rootfs: Path) -> None:
    for name in ("sh", "bash", "dash", "busybox", "apt", "apt-get", "dpkg", "pip", "pip3"):
        for directory in ("bin", "usr/bin", "sbin", "usr/sbin", f"{VENV}/bin"):
            assert not (rootfs / directory / name).exists(), f"/{directory}/{name}"
    assert not list((rootfs / SITE).glob("pip-*.dist-info"))
    container = buildah("from", "--pull=never", IMAGE)
    try:
        shell = subprocess.run(
            [
                "buildah",
                "--storage-driver",
                "vfs",
                "run",
                "--isolation",
                "chroot",
                container,
                "--",
                "/bin/sh",
                "-c",
                "true",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert shell.returncode != 0  # nothing to run it with
    finally:
        buildah("rm", container)


def test_every_module_has_its_bytecode(rootfs: Path) -> None:
    """Read-only root filesystem: nothing may need compiling (or writing) at start."""
    missing = []
    for top in (rootfs / "usr/lib/python3.11", rootfs / VENV):
        for source in top.rglob("*.py"):
            if not Path(importlib.util.cache_from_source(str(source))).is_file():
                missing.append(str(source.relative_to(rootfs)))
    assert missing == []


def test_the_sbom_lists_exactly_what_pip_list_finds_in_the_image(archive: Path, rootfs: Path) -> None:
    sbom = json.loads(archive.with_name(f"asklepios-{__version__}.cdx.json").read_text())
    assert sbom["bomFormat"] == "CycloneDX"
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "list", "--format", "json", "--path", str(rootfs / SITE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    in_image = {(canonical(p["name"]), p["version"]) for p in json.loads(listed.stdout)}
    in_sbom = {(canonical(c["name"]), c["version"]) for c in sbom["components"]}
    assert in_sbom == in_image
    assert ("asklepios", __version__) in in_sbom
    assert len(in_image) > 20


def test_the_venv_is_the_lock(rootfs: Path) -> None:
    """Every package of requirements/runtime.lock at its pinned version (pip and setuptools
    are removed from the venv on purpose), and nothing else but asklepios."""
    locked = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (REPO / "requirements/runtime.lock").read_text(), re.M))
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "list", "--format", "json", "--path", str(rootfs / SITE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(listed.stdout)}
    wanted = {k.lower().replace("_", "-"): v for k, v in locked.items() if k not in ("setuptools", "pip")}
    assert found == wanted | {"asklepios": __version__}


def test_asklepios_run_in_the_image_gets_ready(archive: Path, tmp_path: Path) -> None:
    """`asklepios run` as UID 65532 in the image, against the lab's apiserver, until /readyz."""
    with ControlPlane(tmp_path / "cp", bin_dir=binaries.ensure(binaries.supported()[0])) as cp:
        shared = tmp_path / "shared"
        shared.mkdir(mode=0o755)
        ca = shared / "ca.crt"
        ca.write_bytes(Path(cp.pki.ca_cert).read_bytes())
        kubeconfig = write_kubeconfig(shared / "kubeconfig", cp.server, ca, cp.admin_token, "admin")
        for path in (kubeconfig, ca):
            path.chmod(0o644)  # readable by the image's user
        port = free_port()
        container = buildah("from", "--pull=never", IMAGE)
        settings = {
            "KUBECONFIG": str(kubeconfig),
            "ASKLEPIOS_HTTP_PORT": str(port),
            "ASKLEPIOS_LEADER_ELECTION": "false",
            "ASKLEPIOS_NAMESPACE": "kube-system",
        }
        env_args = [arg for k, v in settings.items() for arg in ("--env", f"{k}={v}")]
        log_path = tmp_path / "asklepios.log"
        log = log_path.open("wb")
        start = time.monotonic()
        proc = subprocess.Popen(
            [
                "buildah",
                "--storage-driver",
                "vfs",
                "run",
                "--isolation",
                "chroot",
                "--user",
                "65532:65532",
                "--volume",
                f"{shared}:{shared}:ro",
                *env_args,
                container,
                "--",
                "asklepios",
                "run",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        try:
            ready = None
            while time.monotonic() - start < 60 and proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
                        if answer.status == 200:
                            ready = time.monotonic() - start
                            break
                except OSError:
                    time.sleep(0.05)
            assert ready is not None, log_path.read_text()[-4000:]
            print(f"asklepios run in the image: /readyz 200 after {ready:.2f}s (from `buildah run`)")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            buildah("rm", container)
