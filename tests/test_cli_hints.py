"""Errors that name the fix (issue #15): the command says its flags, the library its Python API.

Each case is the real situation against the real peers (plain-HTTP, htpasswd and TLS
registries, the test Doras server), checked on stderr, in the ``--json`` object and in
the library's own wording.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from doras_oras.cli.output import CLI_HINTS, describe, hint
from doras_oras.errors import CorruptLayoutError, Fix, RegistryAuthError
from doras_oras.layout import OCILayout
from doras_oras.testing.pytest_plugin import REGISTRY_PASSWORD, REGISTRY_USER, DorasServerFactory
from doras_oras.testing.registry import RegistryServer
from tests.layout_support import cli
from tests.pull_support import oras_push_file, payload, snapshot, unique

#: What a message for command-line users must never contain (Python API words).
PYTHON_WORDS = re.compile(r"allow_http|allow_insecure_auth|tls_verify|plain_http|=True|=False|rebuild_index\(\)"
                          r"|ca_file|lock_timeout|max_size|deadline_s|registry_configs|set_basic_auth")


def failed(proc: subprocess.CompletedProcess[str], code: int = 1) -> dict[str, object]:
    """A failure: the exit code, one error line on stderr, one JSON object, no Python words."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("doras-oras: error: ")]
    assert len(errors) == 1, proc.stderr
    assert not PYTHON_WORDS.search(proc.stderr), proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    obj: dict[str, object] = json.loads(lines[0])
    assert obj["status"] == "error" and obj["exit_code"] == code
    assert not PYTHON_WORDS.search(str(obj["message"])) and obj["message"] == errors[0].removeprefix(
        "doras-oras: error: ")
    return obj


def test_every_fix_has_flag_words_and_python_words() -> None:
    assert set(CLI_HINTS) == set(Fix)
    for fix in Fix:
        words = hint(fix)
        assert words is not None and ("--" in words or "`doras-oras" in words), fix
        assert not PYTHON_WORDS.search(str(words)), (fix, words)
        assert "--" not in fix.hint, (fix, fix.hint)  # the library does not name the command's flags
    error = RegistryAuthError("GET x answered 401", status=401, fix=Fix.REGISTRY_CREDENTIALS)
    assert str(error) == f"GET x answered 401; {Fix.REGISTRY_CREDENTIALS.hint}"
    assert error.detail == "GET x answered 401" and error.status == 401
    assert describe(error).startswith("GET x answered 401; give credentials with -u USER")


@pytest.fixture
def pushed(oci_registry: RegistryServer, tmp_path: Path) -> str:
    repo = unique("hints")
    oras_push_file(oci_registry.host, f"{repo}:v1", tmp_path / "p1", "x.bin", payload(3000, 1))
    oras_push_file(oci_registry.host, f"{repo}:v2", tmp_path / "p2", "x.bin", payload(3000, 2))
    return repo


def test_credentials_over_plain_http_name_allow_insecure_auth(oci_registry_auth: RegistryServer,
                                                              tmp_path: Path) -> None:
    registry = oci_registry_auth
    repo = unique("hints-auth")
    ref = f"{registry.host}/{repo}:v1"
    subprocess.run([_oras(), "push", "--plain-http", "-u", REGISTRY_USER, "-p", REGISTRY_PASSWORD, ref, "x.bin"],
                   cwd=_file(tmp_path), check=True, capture_output=True)
    layout = tmp_path / "L"
    given = cli("pull", ref, "--oci-layout", str(layout), "--plain-http", "-u", REGISTRY_USER,
                "--password-stdin", "--json", input_text=REGISTRY_PASSWORD + "\n")
    obj = failed(given)
    assert "asks for credentials over plain HTTP; refused; add --allow-insecure-auth" in given.stderr
    assert obj["fix"] == "insecure-auth" and "--allow-insecure-auth" in str(obj["hint"])
    assert not layout.exists()  # a failed pull into a new path leaves no layout behind

    none = cli("pull", ref, "--oci-layout", str(layout), "--plain-http", "--json")
    obj = failed(none)
    assert obj["fix"] == "registry-credentials"
    for words in ("answered 401", "-u USER", "--password-stdin", "--registry-config FILE",
                  f"oras login {registry.host}"):
        assert words in none.stderr, (words, none.stderr)
    wrong = cli("pull", ref, "--oci-layout", str(layout), "--plain-http", "--allow-insecure-auth", "-u",
                REGISTRY_USER, "--password-stdin", "--json", input_text="wrong\n")
    assert failed(wrong)["fix"] == "credentials-refused"
    right = cli("pull", ref, "--oci-layout", str(layout), "--plain-http", "--allow-insecure-auth", "-u",
                REGISTRY_USER, "--password-stdin", input_text=REGISTRY_PASSWORD + "\n")
    assert right.returncode == 0, right.stderr


def test_a_refused_password_says_the_registry_refused_that_user(oci_registry_auth: RegistryServer,
                                                                tmp_path: Path) -> None:
    registry = oci_registry_auth
    ref = f"{registry.host}/{unique('hints-refused')}:v1"
    subprocess.run([_oras(), "push", "--plain-http", "-u", REGISTRY_USER, "-p", REGISTRY_PASSWORD, ref, "x.bin"],
                   cwd=_file(tmp_path), check=True, capture_output=True)
    wrong = cli("pull", ref, "--oci-layout", str(tmp_path / "L"), "--plain-http", "--allow-insecure-auth", "-u",
                REGISTRY_USER, "--password-stdin", "--json", input_text="wrong\n")
    obj = failed(wrong)
    assert f"{registry.host} refused the credentials of user {REGISTRY_USER!r}" in wrong.stderr, wrong.stderr
    assert "give credentials" not in wrong.stderr and "check the password" in wrong.stderr
    assert obj["fix"] == "credentials-refused"


def test_a_wrong_tag_says_not_found_with_a_hint(oci_registry: RegistryServer, pushed: str, tmp_path: Path) -> None:
    ref = f"{oci_registry.host}/{pushed}:nope"
    missing = cli("pull", ref, "--oci-layout", str(tmp_path / "L"), "--plain-http", "--json")
    obj = failed(missing)
    assert f"doras-oras: error: {ref}: not found" in missing.stderr, missing.stderr
    assert "{" not in missing.stderr  # not the registry's raw JSON
    assert obj["fix"] == "not-found" and f"oras repo tags {oci_registry.host}/{pushed}" in str(obj["hint"])


def test_credentials_to_a_plain_http_doras_server_name_allow_insecure_auth(
        oci_registry_tls: RegistryServer, doras_server_factory: DorasServerFactory, tmp_path: Path) -> None:
    server = doras_server_factory(oci_registry_tls)
    assert oci_registry_tls.ca_file is not None
    proc = cli("pull", f"{oci_registry_tls.host}/{unique('x')}:v1", "--oci-layout", str(tmp_path / "L"),
               "--ca-file", str(oci_registry_tls.ca_file), "--server", server.url, "-u", "user",
               "--password-stdin", "--json", input_text="secret\n")
    obj = failed(proc)
    assert obj["fix"] == "insecure-auth"
    assert f"would go to the Doras server {server.url} over plain HTTP; refused; add --allow-insecure-auth" \
        in proc.stderr
    assert "allow plain HTTP" not in proc.stderr and "secret" not in proc.stderr + proc.stdout


def test_tls_against_a_plain_http_registry_names_plain_http(oci_registry: RegistryServer, pushed: str,
                                                            tmp_path: Path) -> None:
    proc = cli("pull", f"{oci_registry.host}/{pushed}:v1", "--oci-layout", str(tmp_path / "L"), "--json")
    obj = failed(proc)
    assert obj["fix"] == "plain-http" and obj["error"] == "ConnectError"
    assert f"TLS with the registry at https://{oci_registry.host} failed: it answers plain HTTP" in proc.stderr
    assert "add --plain-http" in proc.stderr


def test_tls_without_the_ca_names_ca_file_and_insecure(oci_registry_tls: RegistryServer, tmp_path: Path) -> None:
    ref = f"{oci_registry_tls.host}/{unique('tls')}:v1"
    proc = cli("pull", ref, "--oci-layout", str(tmp_path / "L"), "--json")
    obj = failed(proc)
    assert obj["fix"] == "tls-registry"
    assert "unable to get local issuer certificate" in proc.stderr or "certificate verify failed" in proc.stderr
    assert "--ca-file FILE" in proc.stderr and "--insecure" in proc.stderr


def test_tls_against_the_doras_server_names_the_server(oci_registry: RegistryServer, pushed: str,
                                                       doras_server_factory: DorasServerFactory,
                                                       tmp_path: Path) -> None:
    server = doras_server_factory()
    layout = tmp_path / "L"
    assert cli("pull", f"{oci_registry.host}/{pushed}:v1", "--oci-layout", str(layout), "--plain-http").returncode == 0
    https = server.url.replace("http://", "https://")
    proc = cli("pull", f"{oci_registry.host}/{pushed}:v2", "--oci-layout", str(layout), "--plain-http",
               "--server", https, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["status"], result["reason_code"], result["fix"]) == ("full", "server-unreachable",
                                                                        "server-speaks-http")
    assert "TLS with the Doras server at " + https in result["reason"]
    assert result["hint"] == f"the Doras server speaks plain HTTP: give --server {server.url}"
    assert "CA file" not in proc.stderr and "registry's" not in result["reason"]
    assert not PYTHON_WORDS.search(proc.stderr + proc.stdout)
    other = str(tmp_path / "other")
    assert cli("pull", f"{oci_registry.host}/{pushed}:v1", "--oci-layout", other, "--plain-http").returncode == 0
    text = cli("pull", f"{oci_registry.host}/{pushed}:v2", "--oci-layout", other, "--plain-http",
               "--server", https)
    assert text.returncode == 0 and f"give --server {server.url}" in text.stdout, text.stdout


def test_unreachable_peers_keep_their_cause(tmp_path: Path) -> None:
    refused = cli("pull", "127.0.0.1:9/app:v1", "--oci-layout", str(tmp_path / "L"), "--plain-http",
                  "--deadline", "1.5", "--json")
    obj = failed(refused)
    assert "GET http://127.0.0.1:9/v2/app/manifests/v1: connection refused" in refused.stderr, refused.stderr
    assert "Max retries" not in refused.stderr and obj["fix"] is None
    unknown = cli("pull", "nosuchhost.invalid/app:v1", "--oci-layout", str(tmp_path / "L"), "--plain-http",
                  "--deadline", "1.5", "--json")
    failed(unknown)
    assert "cannot resolve host nosuchhost.invalid" in unknown.stderr, unknown.stderr
    assert "Failed to resolv" not in unknown.stderr
    assert not (tmp_path / "L").exists()


def test_a_corrupt_index_names_gc_rebuild_which_recovers(oci_registry: RegistryServer, pushed: str,
                                                         tmp_path: Path) -> None:
    layout = tmp_path / "L"
    ref = f"{oci_registry.host}/{pushed}:v1"
    assert cli("pull", ref, "--oci-layout", str(layout), "--plain-http").returncode == 0
    (layout / "index.json").write_text('{"schemaVersion": 2, "manifests": [')
    proc = cli("list", "--oci-layout", str(layout), "--json")  # (a pull rebuilds it by itself: test_fleet_ops)
    obj = failed(proc)
    assert obj["fix"] == "rebuild-index" and obj["error"] == "CorruptLayoutError"
    assert f"run `doras-oras gc --rebuild --oci-layout {layout}`" in proc.stderr
    with pytest.raises(CorruptLayoutError, match=r"rebuild_index\(\) recreates it"):
        OCILayout.open(layout).images()
    rebuilt = cli("gc", "--rebuild", "--oci-layout", str(layout), "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    summary = json.loads(rebuilt.stdout)
    assert summary["rebuilt"] is True and len(summary["recovered_images"]) == 1
    assert (layout / "index.json.corrupt").read_text().startswith('{"schemaVersion": 2')
    again = cli("gc", "--rebuild", "--oci-layout", str(layout))
    assert again.returncode == 0 and "nothing to rebuild" in again.stdout
    # the recovered image (tag recovered-..., written without a source) still serves the pull
    up = cli("pull", ref, "--oci-layout", str(layout), "--plain-http", "--json")
    assert up.returncode == 3, up.stderr
    (layout / "index.json").unlink()
    missing = cli("list", "--oci-layout", str(layout))
    assert missing.returncode == 1 and "gc --rebuild" in missing.stderr
    assert cli("gc", "--rebuild", "--keep", "1", "--oci-layout", str(layout)).returncode == 0
    assert cli("pull", ref, "--oci-layout", str(layout), "--plain-http").returncode == 3


def test_a_held_lock_names_lock_timeout(oci_registry: RegistryServer, pushed: str, tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "L")
    before = snapshot(layout.root)
    with layout.lock():
        proc = cli("pull", f"{oci_registry.host}/{pushed}:v1", "--oci-layout", str(layout.root), "--plain-http",
                   "--lock-timeout", "0", "--json")
    obj = failed(proc)
    assert obj["fix"] == "lock-timeout" and "wait longer with --lock-timeout S" in proc.stderr
    assert snapshot(layout.root) == before


def test_limits_name_their_flags(oci_registry: RegistryServer, pushed: str, tmp_path: Path) -> None:
    ref = f"{oci_registry.host}/{pushed}:v1"
    big = cli("pull", ref, "--oci-layout", str(tmp_path / "L"), "--plain-http", "--max-size", "1K", "--json")
    assert failed(big)["fix"] == "max-size" and "raise --max-size" in big.stderr
    over = cli("pull", ref, "--oci-layout", str(tmp_path / "L"), "--plain-http", "--budget", "1K/1d", "--json")
    assert failed(over)["fix"] == "budget" and "raise --budget" in over.stderr


def test_a_doras_server_that_wants_credentials(oci_registry: RegistryServer, pushed: str,
                                               doras_server_factory: DorasServerFactory, tmp_path: Path) -> None:
    server = doras_server_factory(require_client_auth=True)
    layout = tmp_path / "L"
    host = oci_registry.host
    assert cli("pull", f"{host}/{pushed}:v1", "--oci-layout", str(layout), "--plain-http").returncode == 0
    proc = cli("pull", f"{host}/{pushed}:v2", "--oci-layout", str(layout), "--plain-http", "--server", server.url,
               "--json", env={"DOCKER_CONFIG": str(tmp_path / "no-docker")})
    result = json.loads(proc.stdout)
    assert (proc.returncode, result["reason_code"], result["fix"]) == (0, "server-error", "server-credentials")
    assert "-u USER with --password-stdin" in result["hint"]
    manifest = json.loads(subprocess.run(
        [_oras(), "manifest", "fetch", "--plain-http", f"{host}/{pushed}:v1", "--descriptor"],
        capture_output=True, text=True, check=True).stdout)
    asked = cli("delta", "--from", f"{host}/{pushed}@{manifest['digest']}", "--to", f"{host}/{pushed}:v2",
                "--server", server.url, "--json", env={"DOCKER_CONFIG": str(tmp_path / "no-docker")})
    obj = failed(asked)
    assert obj["fix"] == "server-credentials" and obj["http_status"] == 401
    assert "--token-stdin" in asked.stderr


def _oras() -> str:
    from doras_oras.testing.registry import find_tool

    return find_tool("oras")


def _file(tmp_path: Path) -> Path:
    folder = tmp_path / "push"
    folder.mkdir()
    (folder / "x.bin").write_bytes(payload(2000, 7))
    return folder
