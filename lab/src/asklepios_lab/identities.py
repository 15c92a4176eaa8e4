"""Node identities: client certificates of the lab CA for ``system:node:<name>`` in ``system:nodes``.

Every kubelet holds credentials for its node's identity, and whoever owns the node owns
them. The lab's apiserver judges such an identity as a real cluster does (Node
authorizer, NodeRestriction admission), so tests can check what a compromised node can
and cannot write. The apiserver trusts the lab CA for client certificates
(``--client-ca-file``), so a certificate works for any node name at once, without a
restart (static tokens are read only at start). Keys are P-256: quick to generate.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from .pki import Pki

NODE_USER_PREFIX = "system:node:"
NODES_GROUP = "system:nodes"


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def node_client_cert(pki: Pki, node: str) -> tuple[Path, Path]:
    """(certificate, key) for user ``system:node:<node>``, group ``system:nodes``; made once."""
    d = pki.ca_cert.parent / "nodes"
    d.mkdir(parents=True, exist_ok=True)
    stem = _safe(node)
    cert, key, csr, ext = (d / f"{stem}{s}" for s in (".crt", ".key", ".csr", ".ext"))
    if cert.exists() and key.exists():
        return cert, key
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key.name, "-out", csr.name, "-subj", f"/O={NODES_GROUP}/CN={NODE_USER_PREFIX}{node}",
        cwd=d,
    )  # fmt: skip
    key.chmod(0o600)
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n"
    )
    tmp = cert.with_suffix(".tmp")
    _openssl(
        "x509", "-req", "-in", csr.name, "-CA", str(pki.ca_cert), "-CAkey", str(pki.ca_key),
        "-CAcreateserial", "-days", "3650", "-extfile", ext.name, "-out", tmp.name,
        cwd=d,
    )  # fmt: skip
    tmp.replace(cert)
    return cert, key


def write_cert_kubeconfig(server: str, pki: Pki, node: str, cert: Path, key: Path) -> Path:
    """A kubeconfig next to the node's certificate that authenticates with it."""
    user = f"{NODE_USER_PREFIX}{node}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lab", "cluster": {"server": server, "certificate-authority": str(pki.ca_cert)}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": user}}],
        "current-context": "lab",
    }
    path = cert.with_suffix(".kubeconfig")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
