"""The Containerfile really builds from the lock file, and the image is what we say it is.

No registry and no Docker engine are reachable here, so `hack/build-image.sh` makes
the base image from a Debian rootfs (debootstrap) and builds with buildah (installed
by hack/test.sh from Debian's packages). One build (with --save, so the archive and the
SBOM beside it are checked too); then: UID 65532 and the entrypoint, 120 MB or less,
no shell or package manager inside, bytecode for every module (a read-only root
filesystem compiles nothing), the SBOM naming exactly what `pip list` finds in the
image's venv, `asklepios run` in the image reaching /readyz against the lab's
apiserver (the time it took is printed: docs/image.md has the figure), and the README's
in-cluster `check` in the image's terms (ENTRYPOINT plus the pod's args).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asklepios import __version__
from asklepios_lab import ControlPlane, Kube, StaticToken, binaries
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


# --- the README's in-cluster preflight, in the image's terms ---------------------------

README = REPO / "README.md"


def readme_command(marker: str) -> list[str]:
    """The README's shell command containing `marker` (continuation lines joined), as words."""
    joined = README.read_text().replace("\\\n", " ")
    [line] = [line for line in joined.splitlines() if marker in line and not line.lstrip().startswith("#")]
    return shlex.split(line.split(" # ")[0])


def container_config(container: str, key: str) -> Any:
    """A key of the OCI image config (`Entrypoint`, `User`) of a buildah working container."""
    command = ["buildah", "--storage-driver", "vfs", "inspect", "--type", "container", container]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)["OCIv1"]["config"].get(key)


def run_in_cluster(
    container: str,
    entrypoint: list[str],
    args: list[str],
    env: dict[str, str],
    token: StaticToken,
    namespace: str,
    tmp: Path,
) -> subprocess.CompletedProcess[str]:
    """ENTRYPOINT + args in `container`, as a pod of `token`'s ServiceAccount sees a lab apiserver.

    The container gets what a pod gets: the service variables, and the token and CA at
    the usual path. The RBAC comes from the README's own apply line, run first.
    """
    user = container_config(container, "User")
    release = binaries.supported()[0]
    with ControlPlane(tmp / "lab", bin_dir=binaries.ensure(release), extra_tokens=[token]) as cp:
        apply_words = readme_command("kubectl apply --server-side -f k8s/base/serviceaccount.yaml")
        Kube(cp.kubeconfig).kubectl(*apply_words[1:])  # the ServiceAccount and its RBAC, before the check
        mount = tmp / "serviceaccount"
        mount.mkdir()
        (mount / "token").write_text(token.token)
        (mount / "ca.crt").write_text(cp.pki.ca_cert.read_text())
        (mount / "namespace").write_text(namespace)
        for path in (mount, *mount.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
        host, port = cp.server.removeprefix("https://").rsplit(":", 1)
        flags = ["--isolation", "chroot", "--network", "host", "--user", user]
        # where the kubelet mounts it (the image is FROM scratch: no /var/run -> /run symlink to mind)
        flags += ["-v", f"{mount}:/var/run/secrets/kubernetes.io/serviceaccount:ro"]
        flags += ["-e", f"KUBERNETES_SERVICE_HOST={host}", "-e", f"KUBERNETES_SERVICE_PORT={port}"]
        for key, value in env.items():
            flags += ["-e", f"{key}={value}"]
        return subprocess.run(
            ["buildah", "--storage-driver", "vfs", "run", *flags, container, "--", *entrypoint, *args],
            capture_output=True,
            text=True,
            timeout=300,
        )


def test_the_readme_in_cluster_check_runs_with_the_images_entrypoint(archive: Path, tmp_path: Path) -> None:
    """`kubectl run ... -- check`: the pod's args go to ENTRYPOINT ["asklepios"], as the pod's identity.

    A lab apiserver stands in for the cluster (kwok nodes run no pods), the image is the
    one the README's `--save` wrote.
    """
    run_words = readme_command(" run asklepios-check ")
    args = run_words[run_words.index("--") + 1 :]
    assert args[0] == "check", args  # not `asklepios check`: the ENTRYPOINT is asklepios
    env = dict(word.removeprefix("--env=").split("=", 1) for word in run_words if word.startswith("--env="))
    [overrides] = [w.removeprefix("--overrides=") for w in run_words if w.startswith("--overrides=")]
    account = json.loads(overrides)["spec"]["serviceAccountName"]
    [namespace] = [w.removeprefix("--namespace=") for w in run_words if w.startswith("--namespace=")] or [
        run_words[run_words.index("-n") + 1]
    ]
    user = f"system:serviceaccount:{namespace}:{account}"
    token = StaticToken(secrets.token_hex(16), user, "readme-check", ["system:serviceaccounts", "system:authenticated"])

    with tarfile.open(archive) as tar:
        manifest = tar.extractfile("manifest.json")
        assert manifest is not None
        [entry] = json.load(manifest)
    # the name the README's `ctr -n k8s.io images tag` starts from
    assert f"docker.io/library/asklepios:{__version__}" in entry["RepoTags"], entry["RepoTags"]
    # A container from the saved archive, not from the tag: the image storage is shared, and
    # another build may retag localhost/asklepios (or remove a container of the default name) meanwhile.
    container = subprocess.run(
        [
            "buildah",
            "--storage-driver",
            "vfs",
            "from",
            "--name",
            f"asklepios-readme-{secrets.token_hex(4)}",
            f"docker-archive:{archive}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.strip()
    try:
        entrypoint = container_config(container, "Entrypoint")
        assert entrypoint == ["asklepios"]
        done = run_in_cluster(container, entrypoint, args, env, token, namespace, tmp_path)
    finally:
        subprocess.run(["buildah", "--storage-driver", "vfs", "rm", container], capture_output=True, timeout=60)
    release = binaries.supported()[0]
    print(done.stdout, done.stderr, sep="\n")
    assert "invalid choice" not in done.stderr
    assert done.returncode in (0, 1), done.stderr  # 1: the lab has no control-plane node to watch
    lines = done.stdout.splitlines()
    assert any(line.startswith(f"✔ version: Kubernetes {release}") for line in lines), lines
    # the in-cluster identity is the ServiceAccount, and the README's RBAC grants it everything
    [rbac] = [line for line in lines if line.startswith(("✔ rbac", "✘ rbac", "! rbac"))]
    assert rbac.startswith("✔ rbac: all ") and rbac.endswith("permissions these settings need are granted"), rbac
