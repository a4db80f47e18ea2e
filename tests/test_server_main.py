"""``python -m doras_oras.testing`` (serve, demo) and the server with artifacts pushed by the oras CLI."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import requests
from server_helpers import ask, ask_until_ready, get_blob, get_manifest, unique_repo
from tardiff_apply import apply as tardiff_apply

from doras_oras.testing.registry import RegistryServer
from doras_oras.testing.server import DorasServer

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{ROOT / '.tools' / 'bin'}:{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def test_serve_prints_urls_and_stops_on_ctrl_c() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "doras_oras.testing", "serve", "--require-client-auth"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert requests.get(info["registry"] + "/v2/", timeout=10).status_code == 200
        ping = requests.get(info["doras"] + "/api/v1/ping", timeout=10)
        assert ping.text == '{"message":"pong"}'
        assert info["require_client_auth"] is True
        denied = requests.get(info["doras"] + "/api/v1/delta/", timeout=10,
                              params={"from_digest": f"{info['registry_host']}/a@sha256:{'0' * 64}",
                                      "to_tag": f"{info['registry_host']}/a:v2"})
        assert denied.status_code == 401
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_delta_demo_pushes_two_versions_and_prints_the_delta() -> None:
    result = subprocess.run([sys.executable, "-m", "doras_oras.testing", "delta-demo"], capture_output=True,
                            text=True, env=_env(), cwd=ROOT, timeout=180)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.strip() == "202" for line in lines)  # 202 while the delta is built
    assert any(line.strip().startswith("200 {\"target_image\"") for line in lines)
    assert '"mediaType": "application/bsdiff+zstd"' in result.stdout
    assert '"com.unbasical.doras.delta.from"' in result.stdout


def test_oras_cli_directory_gets_a_tardiff(oras_cli: str, doras_server: DorasServer,
                                           oci_registry: RegistryServer, tmp_path: Path) -> None:
    """A directory pushed by the oras CLI (tar+gzip, unpack and content digest) gets a tar-diff
    whose result has the digest the CLI recorded."""
    repo = unique_repo("oras-dir")
    ref = f"{oci_registry.host}/{repo}"
    for tag, extra in (("v1", b""), ("v2", b"changed\n")):
        work = tmp_path / tag
        (work / "payload" / "sub").mkdir(parents=True)
        (work / "payload" / "big.bin").write_bytes(bytes(range(256)) * 1000 + extra)
        (work / "payload" / "sub" / "same.txt").write_text("unchanged\n")
        subprocess.run([oras_cli, "push", "--plain-http", f"{ref}:{tag}", "payload"], cwd=work,
                       check=True, capture_output=True, timeout=60)
    from_manifest = get_manifest(oci_registry.url, repo, "v1")
    to_manifest = json.loads(get_manifest(oci_registry.url, repo, "v2"))
    from_digest = "sha256:" + hashlib.sha256(from_manifest).hexdigest()
    query = [("from_digest", f"{ref}@{from_digest}"), ("to_tag", f"{ref}:v2")]
    assert ask(doras_server.url, query).status_code == 202
    response, _ = ask_until_ready(doras_server.url, query)
    delta_manifest = json.loads(get_manifest(oci_registry.url, repo, response.json()["delta_image"].split("@")[1]))
    layer = delta_manifest["layers"][0]
    assert layer["mediaType"] == "application/tardiff"
    delta = get_blob(oci_registry.url, repo, layer["digest"])
    old_layer = get_blob(oci_registry.url, repo, json.loads(from_manifest)["layers"][0]["digest"])
    new_layer = get_blob(oci_registry.url, repo, to_manifest["layers"][0]["digest"])
    result = tardiff_apply(old_layer, delta)
    assert result == gzip.decompress(new_layer)
    assert "sha256:" + hashlib.sha256(result).hexdigest() == \
        to_manifest["layers"][0]["annotations"]["io.deis.oras.content.digest"]
    assert len(delta) < 1_000  # 256 kB of unchanged content is copied, not sent
