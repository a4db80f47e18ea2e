"""``python -m doras_oras.testing``: run the test bed by hand.

- ``serve``: start a registry (docker-registry) and the Doras-compatible
  server on loopback, print their addresses as one JSON object on stdout,
  run until Ctrl-C (or SIGTERM).
- ``demo``: the whole story of the README's main job: start both, publish
  v1 and v2 of a file and of a directory with the oras CLI, pull v1 into an
  OCI layout (one per repository) with ``doras-oras pull``, then delta-pull
  v2, print what was received against what a full pull costs, and check the
  result: skopeo reads every image by its own name as the registry's bytes,
  and the extracted files hash to what was published. Logs go to a file
  (shown on failure); ``--keep`` keeps the work directory. ``--sign`` signs
  what it publishes (as ``cosign sign --key`` does) and pulls with ``--verify-key``.
- ``sign``: sign an artifact already in a registry, as ``cosign sign --key
  K --tlog-upload=false`` would (:mod:`.signing`; a key pair is made in
  ``--key-dir`` when there is none), so scripts can be tried with signed
  artifacts without cosign.
- ``delta-demo``: start both, push two versions of a file with the oras CLI,
  request the delta (202 while it is built, then 200), print the server's
  answer and the delta manifest.

This is a command-line module: results go to stdout, logs to stderr.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import requests

from ..errors import DorasOrasError
from ..layout import OCILayout, layout_name, verify_layout
from ..trust import parse_annotation
from .registry import RegistryServer, find_tool
from .server import DorasServer
from .signing import MODES, SigningKey, sign

log = logging.getLogger("doras_oras.testing")

DEMO_USER = "doras"
DEMO_PASSWORD = "s3cret"


def _registry(args: argparse.Namespace) -> RegistryServer:
    auth = getattr(args, "auth", False)
    return RegistryServer(
        username=DEMO_USER if auth else None,
        password=DEMO_PASSWORD if auth else None,
        tls=getattr(args, "tls", False),
        port=getattr(args, "registry_port", None),
    )


def _server(args: argparse.Namespace, registry: RegistryServer) -> DorasServer:
    return DorasServer(
        registry.url,
        ca_file=registry.ca_file,
        require_client_auth=getattr(args, "require_client_auth", False),
        build_delay_s=args.build_delay,
        registry_auth=(DEMO_USER, DEMO_PASSWORD) if getattr(args, "auth", False) else None,
        port=getattr(args, "port", 0) or 0,
    )


def serve(args: argparse.Namespace) -> int:
    """Start the pair and wait for Ctrl-C."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with _registry(args) as registry, _server(args, registry) as server:
        info: dict[str, Any] = {
            "registry": registry.url,
            "registry_host": registry.host,
            "doras": server.url,
            "ca_file": str(registry.ca_file) if registry.ca_file else None,
            "username": registry.username,
            "password": registry.password,
            "require_client_auth": server.require_client_auth,
        }
        print(json.dumps(info), flush=True)
        log.info("running; Ctrl-C to stop")
        while not stop.wait(0.5):
            pass
    return 0


def _demo_files(workdir: Path) -> tuple[Path, Path]:
    rng = random.Random(20261126)
    v1 = bytearray(rng.randbytes(256 * 1024))
    v2 = bytearray(v1)
    for offset in range(0, len(v2), 32 * 1024):
        v2[offset : offset + 16] = b"version 2 edit!!"
    v2 += b"appended in version 2\n"
    paths = []
    for name, data in (("v1", v1), ("v2", v2)):
        folder = workdir / name
        folder.mkdir()
        (folder / "payload.bin").write_bytes(bytes(data))
        paths.append(folder)
    return paths[0], paths[1]


def delta_demo(args: argparse.Namespace) -> int:
    """Push v1 and v2 with the oras CLI, ask for the delta, print the answer and its manifest."""
    oras = find_tool("oras")
    with tempfile.TemporaryDirectory(prefix="doras-oras-demo-") as tmp, \
            RegistryServer() as registry, _server(args, registry) as server:
        v1_dir, v2_dir = _demo_files(Path(tmp))
        repo = f"{registry.host}/demo/payload"
        digests = {}
        for tag, folder in (("v1", v1_dir), ("v2", v2_dir)):
            subprocess.run([oras, "push", "--plain-http", f"{repo}:{tag}", "payload.bin"],
                           cwd=folder, check=True, capture_output=True, timeout=60)
            head = requests.head(f"{registry.url}/v2/demo/payload/manifests/{tag}", timeout=10,
                                 headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
            head.raise_for_status()
            digests[tag] = head.headers["Docker-Content-Digest"]
            print(f"pushed {repo}:{tag} -> {digests[tag]}")
        query = [("from_digest", f"{repo}@{digests['v1']}"), ("to_tag", f"{repo}:v2")]
        query += [("accepted_algorithm", name) for name in args.accept]
        print(f"asking {server.url}/api/v1/delta/ for {query[0][1]} -> {query[1][1]}")
        deadline = time.monotonic() + args.timeout
        while True:
            response = requests.get(server.url + "/api/v1/delta/", params=query, timeout=30)
            print(f"  {response.status_code} {response.text}")
            if response.status_code != 202:
                break
            if time.monotonic() > deadline:
                print("the delta was not ready in time", file=sys.stderr)
                return 1
            time.sleep(0.2)
        if response.status_code != 200:
            return 1
        answer = response.json()
        delta_digest = answer["delta_image"].split("@", 1)[1]
        manifest = requests.get(f"{registry.url}/v2/demo/payload/manifests/{delta_digest}", timeout=10,
                                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        manifest.raise_for_status()
        print("server answer:")
        print(json.dumps(answer, indent=2))
        print("delta manifest:")
        print(json.dumps(manifest.json(), indent=2))
        layer = manifest.json()["layers"][0]
        full = (v2_dir / "payload.bin").stat().st_size
        print(f"delta {layer['mediaType']}: {layer['size']} bytes for a {full}-byte target")
    return 0


def _publish_versions(oras: str, repo_host: str, workdir: Path) -> None:
    """Push v1 and v2 of a file (demo/firmware) and of a directory (demo/config) with the oras CLI."""
    rng = random.Random(6)
    firmware = bytearray(rng.randbytes(4 << 20))
    tree = {f"etc/app/{i:03d}.conf": b"value = " + rng.randbytes(2048).hex().encode() + b"\n"
            for i in range(200)}
    for version in (1, 2):
        folder = workdir / f"v{version}"
        (folder / "config").mkdir(parents=True)
        if version == 2:  # scattered small edits, as a firmware update makes them
            for _ in range(200):
                at = rng.randrange(len(firmware) - 8)
                firmware[at : at + 8] = rng.randbytes(8)
            for name in list(tree)[::50]:
                tree[name] = tree[name].replace(b"value", b"VALUE", 1)
        (folder / "firmware.bin").write_bytes(bytes(firmware))
        for name, data in tree.items():
            path = folder / "config" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        for repo, what in (("demo/firmware", "firmware.bin"), ("demo/config", "config")):
            subprocess.run([oras, "push", "--plain-http", f"{repo_host}/{repo}:v{version}", what],
                           cwd=folder, check=True, capture_output=True, timeout=120)
            print(f"published {repo_host}/{repo}:v{version} ({what})")


REPOSITORIES = (("demo/firmware", "firmware.bin"), ("demo/config", "config"))
"""The demo's artifacts: a file and a directory, each in its own repository (and layout)."""


class DemoFailure(Exception):
    """A step of the demo failed (its message says which); the logs are shown."""


def _sign_versions(registry: RegistryServer, key: SigningKey) -> None:
    """Sign v1 and v2 of both demo repositories with ``key`` (legacy ``.sig`` tags)."""
    for repo, _what in REPOSITORIES:
        for version in ("v1", "v2"):
            head = requests.head(f"{registry.url}/v2/{repo}/manifests/{version}", timeout=10,
                                 headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
            head.raise_for_status()
            signature = sign(registry.url, repo, head.headers["Docker-Content-Digest"], key)
            print(f"signed {registry.host}/{repo}:{version} (signature manifest {signature[:19]}...)")


def _pull(ref: str, layout: Path, server: str, output: Path, log_file: Path,
          key: Path | None = None) -> dict[str, Any]:
    """``doras-oras pull REF --json`` (with ``--verify-key`` when signed); its stderr goes to the log file."""
    command = [sys.executable, "-m", "doras_oras", "pull", ref, "--oci-layout", str(layout),
               "--server", server, "--plain-http", "--output", str(output), "--json"]
    if key is not None:
        command += ["--verify-key", str(key)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    with log_file.open("a") as log_out:
        log_out.write(f"$ doras-oras pull {ref} ...\n{done.stderr}")
    if done.returncode not in (0, 3):
        raise DemoFailure(f"doras-oras pull {ref} failed with exit code {done.returncode}:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _digests(root: Path) -> dict[str, str]:
    """sha256 of a file, or of every regular file below a directory, by relative path."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(path.relative_to(root.parent if root.is_file() else root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in files}


def _size(n: int) -> str:
    from ..cli.output import human_size

    return human_size(n)


def share_text(part: int, whole: int) -> str:
    from ..cli.pull import share_text as share

    return share(part, whole)


def _holds_the_tar_of(layout: Path, stored: bytes, published: bytes) -> bool:
    """Whether ``stored`` is ``published`` rewritten for a tar-diff result (docs/layout.md): the same
    config and annotations, the layer a gzip of the tar whose digest the original layer declares."""
    mine, theirs = json.loads(stored), json.loads(published)
    if len(mine.get("layers", [])) != 1 or len(theirs.get("layers", [])) != 1:
        return False
    layer, original = mine["layers"][0], theirs["layers"][0]
    declared = original.get("annotations", {}).get("io.deis.oras.content.digest")
    blob = layout / "blobs" / "sha256" / str(layer["digest"]).split(":")[-1]
    tar = "sha256:" + hashlib.sha256(gzip.decompress(blob.read_bytes())).hexdigest() if blob.is_file() else None
    return bool(mine["config"] == theirs["config"] and declared and tar == declared
                and layer.get("annotations") == original.get("annotations"))


def _check(registry: RegistryServer, work: Path) -> list[str]:
    """What proves the demo: skopeo reads each image by its own name as the registry's bytes, and
    every extracted file hashes to what was published. Returns the problems (none: all good)."""
    problems: list[str] = []
    skopeo = find_tool("skopeo")
    for repo, what in REPOSITORIES:
        name = repo.split("/")[1]
        layout = work / "device" / "oci" / name
        for tag in ("v1", "v2"):
            image = layout_name(f"{registry.host}/{repo}", tag)
            raw = subprocess.run([skopeo, "inspect", "--raw", f"oci:{layout}:{image}"], capture_output=True,
                                 timeout=60)
            published = requests.get(f"{registry.url}/v2/{repo}/manifests/{tag}", timeout=10,
                                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
            digest = published.headers.get("Docker-Content-Digest", "?")
            where = f"oci:device/oci/{name}:{image}"
            if raw.returncode == 0 and raw.stdout == published.content:
                print(f"  skopeo reads {where} as {repo}:{tag}, byte for byte ({digest[:19]})")
            elif raw.returncode == 0 and _holds_the_tar_of(layout, raw.stdout, published.content):
                print(f"  skopeo reads {where} as {repo}:{tag} rewritten for a tar-diff result (its layer "
                      "unpacks to the tar whose digest the registry's layer declares in io.deis.oras.content.digest)")
            else:
                problems.append(f"skopeo inspect --raw oci:{layout}:{image} does not give {repo}:{tag} ({digest}) "
                                f"{raw.stderr.decode(errors='replace').strip()}")
        try:
            opened = OCILayout.open(layout, create=False)
            images = verify_layout(opened)
            kept = len(opened.attachments())
            print(f"  the layout device/oci/{name} verifies: {len(images)} images"
                  + (f" and {kept} signature manifests" if kept else "") + ", every blob matches its digest")
        except DorasOrasError as exc:
            problems.append(f"the layout {layout} does not verify: {exc}")
        sent = _digests(work / "publish" / "v2" / what)
        got = _digests(work / "device" / "files" / name / what)
        if not sent or sent != got:
            differ = sorted(set(sent.items()) ^ set(got.items()))[:3]
            problems.append(f"the files of {repo}:v2 differ from what was published: {differ}")
        else:
            print(f"  the {len(got)} extracted file(s) of {repo}:v2 have the sha256 of what was published")
    return problems


def demo(args: argparse.Namespace) -> int:
    """The README's main job, end to end on loopback; logs go to a file, shown on failure."""
    work = Path(tempfile.mkdtemp(prefix="doras-oras-demo-"))
    log_file = work / "logs" / "demo.log"
    log_file.parent.mkdir(parents=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler], force=True)
    try:
        code = _demo(args, work, log_file)
    except (DemoFailure, subprocess.CalledProcessError, OSError, RuntimeError) as exc:
        detail = getattr(exc, "stderr", None)
        print(f"\ndemo failed: {exc}" + (f"\n{detail.decode(errors='replace')}" if isinstance(detail, bytes) else ""),
              file=sys.stderr)
        code = 1
    finally:
        handler.close()
    if code != 0 and log_file.exists():
        print(f"--- the last lines of {log_file}:", file=sys.stderr)
        print("\n".join(log_file.read_text(errors="replace").splitlines()[-40:]), file=sys.stderr)
    if args.keep or code != 0:
        print(f"\nkept {work}: device/oci/* (the layouts), device/files/* (the files), logs/demo.log"
              + ("" if args.keep else " (kept because the demo failed)"))
    else:
        shutil.rmtree(work, ignore_errors=True)
    return code


def _demo(args: argparse.Namespace, work: Path, log_file: Path) -> int:
    oras = find_tool("oras")
    with RegistryServer() as registry, _server(args, registry) as server:
        # the log is named only when it stays (--keep; a failure keeps it too and shows its end)
        logs = f"logs: {log_file}" if args.keep else "its log is shown if a step fails; --keep keeps it"
        print(f"registry {registry.url}, Doras server {server.url} ({logs})")
        _publish_versions(oras, registry.host, work / "publish")
        key = None
        if args.sign:
            signing = SigningKey.generate(work / "keys")
            _sign_versions(registry, signing)
            key = signing.public_path
        rows = []
        for repo, _what in REPOSITORIES:
            name = repo.split("/")[1]
            for version in ("v1", "v2"):
                result = _pull(f"{registry.host}/{repo}:{version}", work / "device" / "oci" / name, server.url,
                               work / "device" / "files" / name, log_file, key)
                if key is not None:
                    signature = (result.get("trust") or {}).get("signature") or {}
                    print(f"verified {repo}:{version} with {signature.get('key', {}).get('name')} "
                          f"({signature.get('found_via')} {signature.get('location')})")
                rows.append(result)
                print(f"pulled {repo}:{version}: {result['status']}"
                      + (f" ({result['algorithm']})" if result.get("algorithm") else "")
                      + f", {_size(result['bytes_received'])} received"
                      + f" for a {_size(result['full_size'])} artifact"
                      + (f" [{result['reason']}]" if result["status"] == "full" else ""))
        print()
        print(f"{'image':<22} {'how':<18} {'received':>12} {'full pull':>12} {'share':>7}")
        for result in rows:
            name = result["reference"].split("/", 1)[1]
            how = result["status"] + (f" {result['algorithm']}" if result.get("algorithm") else "")
            share = share_text(result["bytes_received"], max(1, result["full_size"]))
            print(f"{name:<22} {how:<18} {_size(result['bytes_received']):>12} {_size(result['full_size']):>12} "
                  f"{share:>7}")
        print("\nchecks:")
        problems = _check(registry, work)
        if [r["status"] for r in rows] != ["full", "delta", "full", "delta"]:
            problems.append("expected a full pull of each v1 and a delta for each v2: "
                            + ", ".join(f"{r['reference']}: {r['status']}" for r in rows))
    for problem in problems:
        print(f"  FAILED: {problem}", file=sys.stderr)
    if problems:
        return 1
    print("all checks passed")
    return 0


def sign_command(args: argparse.Namespace) -> int:
    """Sign REF (``host:port/repository@sha256:...``, or a tag, resolved first) in the registry."""
    key = SigningKey.load_or_generate(args.key_dir)
    scheme = "http" if args.plain_http else "https"
    host, _, rest = args.reference.partition("/")
    repository, _, digest = rest.partition("@")
    url = f"{scheme}://{host}"
    auth = (args.username, args.password or "") if args.username else None
    if not digest:
        repository, _, tag = repository.partition(":")
        head = requests.head(f"{url}/v2/{repository}/manifests/{tag or 'latest'}", timeout=10, auth=auth,
                             verify=args.ca_file or True,
                             headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                                                "application/vnd.oci.image.index.v1+json"})
        head.raise_for_status()
        digest = head.headers["Docker-Content-Digest"]
    annotations = dict(parse_annotation(item) for item in args.annotation)
    signature = sign(url, repository, digest, key, annotations=annotations, mode=args.mode, auth=auth,
                     ca_file=args.ca_file)
    print(json.dumps({"signed": f"{host}/{repository}@{digest}", "signature_manifest": signature,
                      "mode": args.mode, "public_key": str(key.public_path)}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m doras_oras.testing",
                                     description="The doras-oras test bed: a registry and a Doras server.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs on stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run a registry and a Doras server until Ctrl-C")
    p_serve.add_argument("--auth", action="store_true",
                         help=f"registry with htpasswd basic auth ({DEMO_USER}/{DEMO_PASSWORD}); "
                              "the server uses these credentials when a client sends none")
    p_serve.add_argument("--tls", action="store_true", help="registry over HTTPS with a fresh CA")
    p_serve.add_argument("--require-client-auth", action="store_true",
                         help="answer 401 to delta requests without an Authorization header")
    p_serve.add_argument("--port", type=int, default=0, help="port of the Doras server (default: free)")
    p_serve.add_argument("--registry-port", type=int, default=None,
                         help="port of the registry (default: free)")
    p_serve.add_argument("--build-delay", type=float, default=0.0, metavar="SECONDS",
                         help="wait this long before building each delta")
    p_serve.set_defaults(run=serve)
    p_story = sub.add_parser("demo", help="publish v1 and v2, pull v1, delta-pull v2, print the savings")
    p_story.add_argument("--build-delay", type=float, default=0.0, metavar="SECONDS",
                         help="server build delay (default 0)")
    p_story.add_argument("--sign", action="store_true",
                         help="sign what is published (as cosign sign --key does) and pull with --verify-key")
    p_story.add_argument("--keep", action="store_true",
                         help="keep the work directory (the layouts, the files, the logs) and print its path")
    p_story.set_defaults(run=demo)
    p_sign = sub.add_parser("sign", help="sign an artifact in a registry as `cosign sign --key` does")
    p_sign.add_argument("reference", metavar="HOST:PORT/REPOSITORY[:TAG|@DIGEST]")
    p_sign.add_argument("--key-dir", required=True, type=Path,
                        help="where the key pair is (cosign.pub, testbed.key); made when missing")
    p_sign.add_argument("-a", "--annotation", action="append", default=[], metavar="KEY=VALUE",
                        help="an annotation of the signed payload (repeatable)")
    p_sign.add_argument("--mode", choices=MODES, default="tag",
                        help="tag: the legacy sha256-<hex>.sig tag (default); referrers: an OCI 1.1 referrer")
    p_sign.add_argument("--plain-http", action="store_true", help="the registry speaks plain HTTP")
    p_sign.add_argument("--ca-file", help="CA bundle of the registry's TLS certificate")
    p_sign.add_argument("-u", "--username")
    p_sign.add_argument("-p", "--password")
    p_sign.set_defaults(run=sign_command)
    p_demo = sub.add_parser("delta-demo", help="push two versions and request their delta")
    p_demo.add_argument("--accept", action="append", default=[], metavar="ALGO",
                        help="accepted algorithm (bsdiff, tardiff, gzip, zstd); repeatable")
    p_demo.add_argument("--build-delay", type=float, default=0.5, metavar="SECONDS",
                        help="server build delay, to show the 202s (default 0.5)")
    p_demo.add_argument("--timeout", type=float, default=120.0, help="give up after SECONDS")
    p_demo.set_defaults(run=delta_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="doras-testbed: %(levelname)s: %(message)s")
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
