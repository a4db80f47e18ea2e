"""Start the real CNCF distribution registry (Debian ``docker-registry``) on loopback.

``RegistryServer`` writes a config into a temp dir, picks a free port on
127.0.0.1, optionally turns on htpasswd basic auth and TLS (with a CA made for
the occasion), starts ``docker-registry serve CONFIG`` and waits until
``/v2/`` answers. Use it as a context manager.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import requests


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_tool(name: str) -> str:
    """Path of a test-bed tool: ``.tools/bin`` of the checkout first, then ``PATH``."""
    here = Path(__file__).resolve().parents[2] / ".tools" / "bin" / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found: run scripts/bootstrap.sh")
    return found


@dataclass
class TLSFiles:
    """A CA and a server certificate for 127.0.0.1 / localhost."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_tls(directory: Path) -> TLSFiles:
    """Make a throw-away CA and a server certificate signed by it, with openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "ext.cnf"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca_cert),
        "-days", "2", "-subj", "/CN=doras-oras test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return TLSFiles(ca_cert=ca_cert, server_cert=cert, server_key=key)


class RegistryServer:
    """A running ``docker-registry`` on 127.0.0.1.

    ``host`` is ``127.0.0.1:PORT``; ``url`` is its base URL. With
    ``username``/``password`` it requires htpasswd basic auth; with ``tls`` it
    serves HTTPS with a fresh CA in ``ca_file``. ``port`` picks the port (a free
    one by default).
    """

    def __init__(
        self,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        workdir: Path | None = None,
        delete_enabled: bool = True,
        port: int | None = None,
    ) -> None:
        self.username = username
        self.password = password
        self.tls = tls
        self.delete_enabled = delete_enabled
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="doras-oras-registry-"))
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.ca_file: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def storage(self) -> Path:
        return self.workdir / "storage"

    def _config(self) -> str:
        lines = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.storage}",
            "  delete:",
            f"    enabled: {'true' if self.delete_enabled else 'false'}",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "http:",
            f"  addr: {self.host}",
            "  secret: doras-oras-test-secret",
        ]
        if self.tls:
            tls = make_tls(self.workdir / "tls")
            self.ca_file = tls.ca_cert
            lines += ["  tls:", f"    certificate: {tls.server_cert}", f"    key: {tls.server_key}"]
        if self.username is not None:
            htpasswd = self.workdir / "htpasswd"
            out = subprocess.run(
                ["htpasswd", "-Bbn", self.username, self.password or ""],
                check=True, capture_output=True, text=True,
            ).stdout
            htpasswd.write_text(out)
            lines += ["auth:", "  htpasswd:", "    realm: doras-oras-test", f"    path: {htpasswd}"]
        return "\n".join(lines) + "\n"

    def start(self) -> RegistryServer:
        self.storage.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.yml"
        config.write_text(self._config())
        log = open(self.workdir / "registry.log", "wb")  # noqa: SIM115 - kept open for the child
        self._proc = subprocess.Popen(
            [find_tool("docker-registry"), "serve", str(config)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + 20
        verify: bool | str = str(self.ca_file) if self.ca_file else True
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"docker-registry exited: {(self.workdir / 'registry.log').read_text()[-2000:]}"
                )
            try:
                requests.get(self.url + "/v2/", timeout=1, verify=verify)
                return self
            except requests.RequestException:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("docker-registry did not start within 20 s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
