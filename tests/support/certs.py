"""Throwaway certificates made with openssl: a self-signed one for the gateway's TLS
listeners, and a CA with a certificate it signed for TLS upstreams."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_cert(directory: Path, cn: str = "localhost") -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-subj", f"/CN={cn}", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-days", "2", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return cert, key


def make_ca_and_cert(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for `name` (and 127.0.0.1) signed by it."""
    ca_key, ca, key, csr, cert = (directory / f for f in
                                  ("ca.key", "ca.pem", "dot.key", "dot.csr", "dot.pem"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *args: subprocess.run(["openssl", *args], check=True,  # noqa: E731
                                       capture_output=True)
    run("req", "-x509", *ec, "-subj", "/CN=SafeGate test CA", "-days", "2",
        "-addext", "basicConstraints=critical,CA:TRUE", "-keyout", str(ca_key), "-out", str(ca))
    run("req", "-new", *ec, "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr))
    ext = directory / "ext.cnf"
    ext.write_text(f"subjectAltName=DNS:{name},IP:127.0.0.1\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert))
    return ca, cert, key
