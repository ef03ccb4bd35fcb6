"""Test certificates made with the `openssl` command: a CA, a server certificate for
127.0.0.1 and localhost, a client certificate, and a client certificate from another CA.

    pki = make_pki(tmp_dir)
    pki.ca, pki.server_cert, pki.server_key, pki.client_cert, pki.client_key, pki.rogue_cert, pki.rogue_key

EC P-256 keys (fast to make), valid for two days. Nothing is downloaded.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate signed by a CA the server does not trust
    rogue_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(out: Path, name: str) -> tuple[Path, Path]:
    key, cert = out / f"{name}.key", out / f"{name}.pem"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        key.name,
        "-out",
        cert.name,
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=out,
    )
    return cert, key


def _leaf(out: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    key, csr, cert, ext = out / f"{name}.key", out / f"{name}.csr", out / f"{name}.pem", out / f"{name}.ext"
    ext.write_text(extensions)
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        key.name,
        "-out",
        csr.name,
        "-subj",
        f"/CN={name}",
        cwd=out,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        csr.name,
        "-CA",
        ca[0].name,
        "-CAkey",
        ca[1].name,
        "-CAcreateserial",
        "-out",
        cert.name,
        "-days",
        "2",
        "-extfile",
        ext.name,
        cwd=out,
    )
    return cert, key


def make_pki(out: Path) -> Pki:
    if shutil.which("openssl") is None:
        raise RuntimeError("the `openssl` command is needed to make test certificates")
    out.mkdir(parents=True, exist_ok=True)
    ca = _ca(out, "test-ca")
    rogue_ca = _ca(out, "rogue-ca")
    server = _leaf(
        out,
        "server",
        ca,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyAgreement\nextendedKeyUsage=serverAuth\n",
    )
    client_ext = (
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyAgreement\nextendedKeyUsage=clientAuth\n"
    )
    client = _leaf(out, "client", ca, client_ext)
    rogue = _leaf(out, "rogue-client", rogue_ca, client_ext)
    return Pki(ca[0], server[0], server[1], client[0], client[1], rogue[0], rogue[1])
