"""Which configuration reaches the apiserver: a kubeconfig, or the pod's service account.

It is decided in kubectl's (client-go's) order: `--kubeconfig FILE`; else
`KUBECONFIG` (a `:`-separated list, missing files skipped, the rest merged); else
`~/.kube/config`; when none of these names a file that exists, the in-cluster
service account (`KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT` set and
the token file present). A configuration that cannot be used raises
`KubeConfigError`: one line, before any request (the CLI exits 2 with it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from asklepios.kube import k8s

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
IN_CLUSTER = "in-cluster"


class KubeConfigError(Exception):
    """No usable configuration to reach the apiserver; str() is the one line to print (exit 2)."""


@attrs.frozen
class KubeSource:
    """Where the connection's configuration comes from: kubeconfig file(s), or IN_CLUSTER."""

    kubeconfig: str  # a path, a `:`-separated KUBECONFIG list, or IN_CLUSTER
    context: str = ""  # "": the kubeconfig's current-context

    @property
    def in_cluster(self) -> bool:
        return self.kubeconfig == IN_CLUSTER


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _home() -> Path:
    """$HOME; a container user without one (no HOME, no passwd entry) has no ~/.kube/config."""
    try:
        return Path.home()
    except RuntimeError:
        return Path("/nonexistent")


def in_cluster_possible(environ: Mapping[str, str], token: Path = SERVICE_ACCOUNT_TOKEN) -> bool:
    """client-go's rule: both service variables set and the token file present."""
    return (
        bool(environ.get("KUBERNETES_SERVICE_HOST"))
        and bool(environ.get("KUBERNETES_SERVICE_PORT"))
        and token.is_file()
    )


def resolve_source(
    kubeconfig: str | None = None,
    context: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
    token: Path = SERVICE_ACCOUNT_TOKEN,
) -> KubeSource:
    """Choose the configuration as kubectl does (see the module docstring); raise KubeConfigError."""
    env = os.environ if environ is None else environ
    context = context or ""
    if kubeconfig is not None:
        if not Path(kubeconfig).expanduser().is_file():
            raise KubeConfigError(f"--kubeconfig {kubeconfig}: no such file")
        return KubeSource(kubeconfig, context)
    listed = env.get("KUBECONFIG", "")
    if listed:
        if any(Path(p).expanduser().is_file() for p in listed.split(os.pathsep) if p):
            return KubeSource(listed, context)
    else:
        default = (home if home is not None else _home()) / ".kube" / "config"
        if default.is_file():
            return KubeSource(str(default), context)
    if in_cluster_possible(env, token):
        if context:
            raise KubeConfigError(f"--context {context}: there is no kubeconfig, only the in-cluster service account")
        return KubeSource(IN_CLUSTER)
    where = f"KUBECONFIG={listed}: no such file" if listed else "KUBECONFIG is unset and ~/.kube/config does not exist"
    raise KubeConfigError(
        f"no kubeconfig: {where}, and this is not a pod with a service account token "
        "→ pass --kubeconfig FILE or set KUBECONFIG"
    )


@attrs.frozen
class Loaded:
    """A configuration loaded (and so checked) before the first request: `connect` takes it as is."""

    source: KubeSource
    configuration: Any  # k8s.Configuration


async def load(source: KubeSource) -> Loaded:
    """`source` loaded: KubeConfigError (one line) when it cannot be used."""
    return Loaded(source, await load_configuration(source))


async def load_configuration(source: KubeSource) -> k8s.Configuration:
    """The client configuration of `source`; KubeConfigError (one line) when it cannot be used."""
    configuration = k8s.Configuration()
    try:
        if source.in_cluster:
            k8s.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            await k8s.load_kube_config(
                config_file=source.kubeconfig, context=source.context or None, client_configuration=configuration
            )
    except Exception as exc:  # yaml, missing keys, a context not found, a broken exec plugin: all one line
        where = "in-cluster config" if source.in_cluster else f"kubeconfig {source.kubeconfig}"
        raise KubeConfigError(f"{where}: {_one_line(exc)}") from None
    if not str(configuration.host or "").startswith(("https://", "http://")):
        raise KubeConfigError(f"kubeconfig {source.kubeconfig}: no usable server address ({configuration.host!r})")
    return configuration
