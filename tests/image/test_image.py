"""The Containerfile really builds, and the image runs `asklepios version` as UID 65532.

No registry and no Docker engine are reachable here, so `hack/build-image.sh` makes
the base image from a Debian rootfs (debootstrap) and builds with buildah (installed
by hack/test.sh from Debian's packages).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from asklepios import __version__

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
