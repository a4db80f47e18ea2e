"""``--insecure`` says once, in our own words, that TLS is not verified (issue #22 §8): not urllib3's
``InsecureRequestWarning`` per request, nothing under ``-q``, nothing for a registry spoken to over http."""

from __future__ import annotations

from pathlib import Path

from doras_oras.testing.registry import RegistryServer, find_tool
from tests.layout_support import cli
from tests.pull_support import payload, run, unique

WARNING = "doras-oras: warning: --insecure: the TLS certificates"


def _pushed(registry: RegistryServer, tmp_path: Path) -> str:
    ref = f"{registry.host}/{unique('insecure')}:v1"
    (tmp_path / "x.bin").write_bytes(payload(3000, 1))
    tls = ["--ca-file", str(registry.ca_file)] if registry.ca_file else ["--plain-http"]
    run(find_tool("oras"), "push", *tls, ref, "x.bin", cwd=tmp_path)
    return ref


def test_insecure_warns_once_in_our_words(oci_registry_tls: RegistryServer, tmp_path: Path) -> None:
    ref = _pushed(oci_registry_tls, tmp_path)
    proc = cli("pull", ref, "--oci-layout", str(tmp_path / "L"), "--insecure")
    assert proc.returncode == 0, proc.stderr
    assert "InsecureRequestWarning" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line] == [line for line in proc.stderr.splitlines()
                                                                   if line.startswith(WARNING)]
    assert proc.stderr.count(WARNING) == 1, proc.stderr


def test_insecure_is_silent_under_quiet(oci_registry_tls: RegistryServer, tmp_path: Path) -> None:
    ref = _pushed(oci_registry_tls, tmp_path)
    proc = cli("pull", ref, "--oci-layout", str(tmp_path / "L"), "--insecure", "-q")
    assert proc.returncode == 0 and proc.stderr == ""


def test_insecure_says_nothing_of_tls_for_an_http_registry(oci_registry: RegistryServer, tmp_path: Path) -> None:
    ref = _pushed(oci_registry, tmp_path)
    proc = cli("pull", ref, "--oci-layout", str(tmp_path / "L"), "--plain-http", "--insecure")
    assert proc.returncode == 0 and proc.stderr == ""
