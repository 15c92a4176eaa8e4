"""Key material of a lab cluster: a CA, the apiserver's serving cert, the SA signing key.

Generated with the ``openssl`` CLI (the ``cryptography`` package is not a dependency).
The apiserver could self-sign its serving certificate, but clients would then have to
skip TLS verification, and urllib3's InsecureRequestWarning is an error under
``-W error``. So the lab issues a real CA and a serving certificate for 127.0.0.1,
localhost and the in-cluster ``kubernetes`` service names; kubeconfigs carry the CA.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    """Paths of the generated files."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    sa_key: Path  # RSA private key: signs service-account tokens
    sa_pub: Path  # its public half: verifies them

    @classmethod
    def at(cls, d: Path) -> Pki:
        """The file layout under directory ``d`` (nothing is generated)."""
        return cls(
            ca_cert=d / "ca.crt",
            ca_key=d / "ca.key",
            serving_cert=d / "apiserver.crt",
            serving_key=d / "apiserver.key",
            sa_key=d / "sa.key",
            sa_pub=d / "sa.pub",
        )


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def generate(pki: Pki, service_ip: str) -> Pki:
    """Create the CA, serving cert/key and SA key pair at the paths of ``pki``."""
    d = pki.ca_cert.parent
    d.mkdir(parents=True, exist_ok=True)
    days = "3650"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", days,
        "-keyout", pki.ca_key.name, "-out", pki.ca_cert.name,
        "-subj", "/CN=asklepios-lab-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip
    sans = ",".join(
        [
            "IP:127.0.0.1",
            f"IP:{service_ip}",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]
    )
    issue_serving_cert(pki, "kube-apiserver", sans, pki.serving_cert, pki.serving_key)
    _openssl("genrsa", "-out", pki.sa_key.name, "2048", cwd=d)
    _openssl("rsa", "-in", pki.sa_key.name, "-pubout", "-out", pki.sa_pub.name, cwd=d)
    for key in (pki.ca_key, pki.serving_key, pki.sa_key):
        key.chmod(0o600)
    return pki


def issue_serving_cert(pki: Pki, common_name: str, sans: str, cert: Path, key: Path) -> tuple[Path, Path]:
    """Sign a TLS serving certificate for ``sans`` (like ``IP:127.0.0.1``) with the lab CA."""
    d = cert.parent
    d.mkdir(parents=True, exist_ok=True)
    csr, ext = d / f"{cert.stem}.csr", d / f"{cert.stem}.ext"
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", f"/CN={common_name}",
        cwd=d,
    )  # fmt: skip
    ext.write_text(
        f"subjectAltName={sans}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(pki.ca_cert), "-CAkey", str(pki.ca_key),
        "-CAcreateserial", "-days", "3650", "-extfile", str(ext), "-out", str(cert),
        cwd=d,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key
