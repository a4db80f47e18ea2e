"""Start-up (issue #24): the command imports only what the path taken needs.

An up-to-date poll (``doras-oras pull`` of the image the layout holds) is where most runs
of a device end; it needs the HTTP stack, the layout's index and the pull's decision, and
none of: jsonschema (its validators compile only for a document no plain check accepts), the
codecs, the blob writer, extraction, the other commands, cryptography, oras-py. A delta pull adds
the codecs and the blob writer, and still no validator (its manifests pass the plain check). What the poll loads is
read from ``sys.modules`` of a real run against the real registry, so a heavy import that
creeps back into the path fails here. docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from doras_oras.cli.main import COMMANDS, command
from doras_oras.testing.registry import RegistryServer
from tests.delta_bed import make_bed
from tests.layout_support import REPO_ROOT, cli
from tests.pull_support import oras_push_file, unique

#: What an up-to-date poll must not load (prefixes of module names).
HEAVY = ("jsonschema", "referencing", "rpds", "attrs", "doras_oras.codecs", "doras_oras.layout.writer",
         "doras_oras._writeback", "doras_oras.extract", "doras_oras.edgeapi", "doras_oras.trust",
         "doras_oras.signatures", "doras_oras.cli.apply", "doras_oras.cli.delta", "doras_oras.cli.gc",
         "doras_oras.cli.fsck", "doras_oras.cli.verify", "doras_oras.cli.listing", "doras_oras.cli.watch",
         "doras_oras.cli.publish", "doras_oras.watch", "doras_oras.publish", "doras_oras.sdnotify", "cryptography", "oras",
         "numpy", "zstandard", "tarfile")

_RUN = """
import json, sys
from doras_oras.cli.main import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as out:
    json.dump({"code": code, "modules": sorted(sys.modules)}, out)
"""


def loaded_by(tmp_path: Path, *args: str) -> tuple[int, set[str]]:
    """The exit code of ``doras-oras ARGS`` run in a fresh interpreter, and the modules it loaded."""
    report = tmp_path / "modules.json"
    proc = subprocess.run([sys.executable, "-c", _RUN, str(report), *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO_ROOT)
    assert report.exists(), proc.stderr
    found = json.loads(report.read_text())
    return int(found["code"]), set(found["modules"])


def heavy(modules: set[str], allowed: tuple[str, ...] = ()) -> list[str]:
    return sorted(m for m in modules if m.startswith(HEAVY) and not m.startswith(allowed)
                  and (m in HEAVY or m.startswith(tuple(h + "." for h in HEAVY))))


@pytest.fixture(scope="module")
def held(oci_registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A reference and a layout that already holds it (pulled once by the command)."""
    work = tmp_path_factory.mktemp("startup")
    ref = f"{oci_registry.host}/{unique('startup')}:v1"
    oras_push_file(oci_registry.host, ref.split("/", 1)[1], work / "push", "x.bin", b"small update\n" * 40)
    layout = work / "L"
    first = cli("pull", ref, "--oci-layout", str(layout), "--plain-http")
    assert first.returncode == 0, first.stderr
    return ref, layout


def test_an_up_to_date_poll_loads_no_heavy_module(held: tuple[str, Path], tmp_path: Path) -> None:
    ref, layout = held
    code, modules = loaded_by(tmp_path, "pull", ref, "--oci-layout", str(layout), "--plain-http", "--json")
    assert code == 3
    assert heavy(modules) == []
    assert "requests" in modules  # the floor: the poll does talk HTTP


def test_an_up_to_date_poll_with_a_server_loads_only_the_edge_client_more(held: tuple[str, Path],
                                                                          tmp_path: Path) -> None:
    """The Doras server is not asked (the layout holds the target); its client is built before
    anything is sent, so that a server URL or credentials it must refuse are refused first."""
    ref, layout = held
    code, modules = loaded_by(tmp_path, "pull", ref, "--oci-layout", str(layout), "--plain-http",
                              "--server", "http://127.0.0.1:9")
    assert code == 3
    assert heavy(modules, allowed=("doras_oras.edgeapi",)) == []


#: What a delta pull of a file loads beyond a poll: the codecs (bsdiff, zstd), the blob writer, the
#: stored-delta lookup and the delta manifest's checks. Not the validators: its manifests pass the
#: plain check (``schemas._plain_manifest``), as the poll's ``index.json`` does.
DELTA_PATH = ("doras_oras.codecs", "doras_oras.layout.writer", "doras_oras._writeback", "doras_oras.edgeapi",
              "zstandard")


def test_a_delta_pull_loads_no_validator_and_nothing_of_another_path(oci_registry: RegistryServer,
                                                                    tmp_path: Path) -> None:
    with make_bed(oci_registry, tmp_path) as bed:
        bed.publish()  # the delta stored in the registry: what the pull finds first
        code, modules = loaded_by(tmp_path, "pull", bed.target, "--oci-layout", str(bed.layout),
                                  "--plain-http", "--json")
    assert code == 0
    assert "doras_oras.codecs.bsdiff" in modules  # it did apply a delta
    assert heavy(modules, allowed=DELTA_PATH) == []


def test_the_version_loads_no_command_and_no_http(tmp_path: Path) -> None:
    code, modules = loaded_by(tmp_path, "--version")
    assert code == 0
    assert not {m for m in modules if m.startswith(("requests", "urllib3", "doras_oras.cli.pull"))}
    assert heavy(modules) == []


def test_every_command_module_has_the_name_it_is_listed_under() -> None:
    assert {name: command(name).NAME for name in COMMANDS} == {name: name for name in COMMANDS}
