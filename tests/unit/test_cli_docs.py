"""What the README and docs/install.md tell an operator, checked against the code and each other.

The variable table against the settings the code reads, the support matrix against
the preflight's version rule and the releases the lab tests, the uninstall steps
(the same in both files), the `site/` overlay docs/install.md writes (rendered by
kubectl kustomize with the registry's image), and no words that only make sense
inside this project.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from asklepios.config.settings import variables
from asklepios.core.preflight import Status, version_finding
from asklepios_lab import binaries

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
INSTALL = (ROOT / "docs" / "install.md").read_text()


def table_rows(text: str, first_header: str) -> dict[str, list[str]]:
    """The rows of the Markdown table whose header starts with `first_header`, by first cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        rows[cells[0]] = cells[1:]
    return rows


def section(text: str, heading: str) -> str:
    match = re.search(rf"^#+ {re.escape(heading)}\n(.*?)(?=^#+ |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert match, heading
    return match.group(1)


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def test_the_readme_lists_every_setting_with_its_default() -> None:
    rows = table_rows(README, "variable")
    for name, default in variables():
        assert f"`{name}`" in rows, name
        shown = rows[f"`{name}`"][0]
        if name == "ASKLEPIOS_NAMESPACE":
            assert shown == "`POD_NAMESPACE`, else `kube-system`"
        elif name == "ASKLEPIOS_CONFIG_FILE":
            assert shown == "unset"
        elif default == "":
            assert shown == "empty (all)", name
        else:
            assert shown == f"`{default}`", name
    assert "`0` is rejected (exit 2)" in rows["`ASKLEPIOS_MAX_UNHEALTHY`"][1]
    for name in ("ASKLEPIOS_FLAP_MAX_KICKOUTS", "ASKLEPIOS_FLAP_WINDOW_SECONDS", "ASKLEPIOS_FENCING_POWER_ON"):
        assert f"`{name}`" in rows, name
    assert "`<node>.url`" in rows["`ASKLEPIOS_FENCING_SECRET`"][1]


def test_the_support_matrix_is_the_same_everywhere_and_matches_the_code() -> None:
    matrix = table_rows(README, "Kubernetes")
    assert matrix == table_rows(INSTALL, "Kubernetes")
    tested = sorted(release.removeprefix("v") for release in binaries.supported())
    assert matrix["1.28 and later"] == [f"supported; tested on {' and '.join(tested)}"]
    assert version_finding("v1.28.0").status is Status.OK
    assert version_finding("v1.27.9").status is Status.WARNING
    assert version_finding("v1.26.0").status is Status.WARNING
    old = version_finding("v1.25.16")
    assert (old.status, old.blocks_start) == (Status.FAILURE, True)
    assert "refuses to start" in matrix["below 1.26"][0]
    assert "1.24" not in INSTALL and "1.25 " not in INSTALL  # no instructions for versions it refuses


def test_uninstall_is_the_same_in_both_and_scales_to_zero_first() -> None:
    [readme] = code_blocks(section(README, "Uninstall"))
    install = code_blocks(section(INSTALL, "Uninstall"))[0]
    assert readme == install
    assert readme.splitlines()[0] == "kubectl -n kube-system scale deployment asklepios --replicas=0"


def test_the_site_overlay_of_install_md_renders_with_the_registry_image(tmp_path: Path) -> None:
    heredoc = re.findall(r"cat > site/kustomization.yaml <<'EOF'\n(.*?)^EOF", INSTALL, re.MULTILINE | re.DOTALL)[0]
    site = tmp_path / "site"
    site.mkdir()
    (tmp_path / "k8s").symlink_to(ROOT / "k8s")  # `../k8s` as in a clone (kustomize wants relative paths)
    (site / "kustomization.yaml").write_text(heredoc)
    kubectl = Path(sys.executable).parent / "kubectl"
    done = subprocess.run([kubectl, "kustomize", site], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [deployment] = [d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/infra/asklepios:0.1.0"


@pytest.mark.parametrize("phrase", ["the seed", "the contract", "additions", "addition:"])
def test_the_readme_has_no_internal_words(phrase: str) -> None:
    assert phrase not in README.lower()


def test_the_readme_keeps_the_two_commands_and_its_length() -> None:
    blocks = "".join(code_blocks(README))
    assert "bash hack/demo.sh" in blocks
    assert "bash hack/test.sh" in blocks
    assert len(README.splitlines()) <= 240
