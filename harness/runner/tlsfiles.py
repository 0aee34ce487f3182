"""Throwaway TLS material for one run: a CA and a server certificate, made with the
openssl CLI inside the run directory (never anywhere else, never committed)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.errors import CapabilityError, TargetError

TLS_VERSIONS = ("1.2", "1.3")
# The targets connect to 127.0.0.1 (or ::1) and verify the server by that address.
SUBJECT_ALT_NAMES = "DNS:localhost,IP:127.0.0.1,IP:::1"
CERT_DAYS = "2"


@dataclass(frozen=True)
class TlsFiles:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def key(self) -> Path:
        return self.dir / "server.key"

    def keylog(self, role: str) -> Path:
        return self.dir / f"{role}.keylog"


def _openssl(args: list[str], cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise CapabilityError("the openssl command is missing (Debian: apt-get install openssl)")
    proc = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    if proc.returncode != 0:
        said = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise TargetError(f"openssl {args[0]} failed making the run's TLS files: {said}")


def make_tls_files(directory: Path) -> TlsFiles:
    """A P-256 CA and a server certificate it signed, for localhost, 127.0.0.1 and ::1."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", CERT_DAYS,
              "-subj", "/CN=probebench throwaway CA",
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"], directory)  # fmt: skip
    _openssl(["req", *ec, "-keyout", "server.key", "-out", "server.csr",
              "-subj", "/CN=localhost"], directory)  # fmt: skip
    (directory / "server.ext").write_text(
        f"subjectAltName={SUBJECT_ALT_NAMES}\nextendedKeyUsage=serverAuth\n"
        "basicConstraints=CA:FALSE\n"
    )
    _openssl(["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
              "-CAcreateserial", "-out", "server.pem", "-days", CERT_DAYS,
              "-extfile", "server.ext"], directory)  # fmt: skip
    return TlsFiles(directory)
