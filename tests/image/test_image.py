"""The Containerfile really builds, and the image runs `asklepios version` as UID 65532;
the README's in-cluster `check` runs in the image's terms (ENTRYPOINT plus the pod's args).

No registry and no Docker engine are reachable here, so `hack/build-image.sh` makes
the base image from a Debian rootfs (debootstrap) and builds with buildah (installed
by hack/test.sh from Debian's packages).
"""

from __future__ import annotations

import json
import secrets
import shlex
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from asklepios import __version__
from asklepios_lab import ControlPlane, Kube, StaticToken, binaries

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(1500)
def test_containerfile_builds_and_the_image_runs() -> None:
    done = subprocess.run(
        ["bash", str(REPO / "hack" / "build-image.sh")], capture_output=True, text=True, timeout=1400, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"asklepios {__version__}" in done.stdout + done.stderr
    inspect = subprocess.run(
        [
            "buildah",
            "--storage-driver",
            "vfs",
            "inspect",
            "--format",
            "{{.OCIv1.Config.User}}",
            f"localhost/asklepios:{__version__}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert inspect.stdout.strip() == "65532:65532"


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
        # /var/run/secrets/... as the kubelet mounts it; the image's /var/run is a symlink to /run, and
        # buildah mounts a fresh /run after a mount that names /var/run, so it is named by its real path
        flags += ["-v", f"{mount}:/run/secrets/kubernetes.io/serviceaccount:ro"]
        flags += ["-e", f"KUBERNETES_SERVICE_HOST={host}", "-e", f"KUBERNETES_SERVICE_PORT={port}"]
        for key, value in env.items():
            flags += ["-e", f"{key}={value}"]
        return subprocess.run(
            ["buildah", "--storage-driver", "vfs", "run", *flags, container, "--", *entrypoint, *args],
            capture_output=True,
            text=True,
            timeout=300,
        )


@pytest.mark.timeout(1800)
def test_the_readme_in_cluster_check_runs_with_the_images_entrypoint(tmp_path: Path) -> None:
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

    archive = tmp_path / f"asklepios-{__version__}.tar"  # the README's --save: what `ctr images import` reads
    build = subprocess.run(
        ["bash", str(REPO / "hack" / "build-image.sh"), "--no-verify", "--save", str(archive)],
        capture_output=True,
        text=True,
        timeout=1400,
    )
    assert build.returncode == 0, build.stderr[-4000:]
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
