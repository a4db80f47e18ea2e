"""Every command in docs/cli.md and docs/quickstart.md, run as written (issue #15).

- The synopses of docs/cli.md: every flag they show is a flag of that subcommand, and every flag
  of a subcommand is documented in its section.
- The command lines (``sh`` blocks) run in bash against the real registry and the test Doras
  server on loopback. Only the example names are replaced: ``registry.example:5000`` by the
  registry, ``https://doras.example:8080`` by the test server (plain HTTP on loopback), the
  paths by temporary ones; ``doras-oras`` is ``python -m doras_oras`` and, for ``pull``, adds
  ``--plain-http`` (the loopback registry speaks plain HTTP). ``systemctl`` and ``logger`` of
  the quick start's cron script are recorded instead of run.
- The exit code written after a command (``# 3 (up to date)``) is checked.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from doras_oras.cli.main import build_parser
from doras_oras.testing.pytest_plugin import DorasServerFactory
from doras_oras.testing.registry import RegistryServer
from tests.docs_support import blocks
from tests.layout_support import REPO_ROOT
from tests.pull_support import edit, oras_push_file, payload

DOCS = REPO_ROOT / "docs"


def sections(path: Path) -> dict[str, str]:
    """``## name`` sections of a Markdown file by name."""
    parts = re.split(r"^## ", path.read_text(), flags=re.M)
    return {part.split("\n", 1)[0].strip(): part for part in parts[1:]}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def _flags(text: str) -> set[str]:
    found = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*[a-z]|-[a-zA-Z]+)(?![\w-])", text))
    return {"-v" if re.fullmatch(r"-v+", flag) else flag for flag in found}


def test_synopses_name_only_real_flags_and_every_flag_is_documented() -> None:
    commands = _subparsers()
    text = sections(DOCS / "cli.md")
    synopses = [body for body in blocks(DOCS / "cli.md", "") if body.startswith("doras-oras ")]
    seen = set()
    for synopsis in synopses:
        name = synopsis.split()[1]
        if name.startswith("["):  # the top-level line
            assert _flags(synopsis) <= {"-v", "-q"}, synopsis
            continue
        seen.add(name)
        known = set(commands[name]._option_string_actions)
        assert _flags(synopsis) <= known, (name, _flags(synopsis) - known)
    assert seen == set(commands), seen
    for name, parser in commands.items():
        documented = text[name] + text.get("pull", "") * (name in ("delta", "watch"))
        for action in parser._actions:
            if not action.option_strings or "-h" in action.option_strings or action.dest.endswith("_after"):
                continue
            assert any(flag in documented for flag in action.option_strings), (name, action.option_strings)


def _commands(block: str) -> list[tuple[str, int | None]]:
    """The command lines of a block (continuations joined) with the exit code noted after them."""
    lines: list[tuple[str, int | None]] = []
    current = ""
    for raw in block.splitlines():
        body, _hash, comment = raw.partition("  # ")
        current += body.rstrip().removesuffix("\\") + " "
        if body.rstrip().endswith("\\"):
            continue
        code = re.match(r"\s*(\d+)", comment)
        lines.append((current.strip(), int(code.group(1)) if code else None))
        current = ""
    return [(line, code) for line, code in lines if line]


class Device:
    """The shell the documented lines run in: the example names replaced, doras-oras as python -m."""

    def __init__(self, tmp_path: Path, registry: RegistryServer, server_url: str) -> None:
        self.tmp = tmp_path
        self.record = tmp_path / "record.txt"
        self.names = {
            "registry.example:5000": registry.host,
            "https://doras.example:8080": server_url,
            "/var/lib/fleet/oci": str(tmp_path / "oci"),
            "/opt/fleet": str(tmp_path / "files"),
            "/run/update.json": str(tmp_path / "update.json"),
        }
        self.prelude = (
            f'doras-oras() {{ if [ "$1" = pull ] || [ "$2" = pull ]; then {shlex.quote(sys.executable)} '
            f'-m doras_oras "$@" --plain-http; else {shlex.quote(sys.executable)} -m doras_oras "$@"; fi; }}\n'
            f'systemctl() {{ echo "systemctl $*" >> {shlex.quote(str(self.record))}; }}\n'
            f'logger() {{ echo "logger $*" >> {shlex.quote(str(self.record))}; }}\n'
        )

    def localize(self, text: str) -> str:
        for name, value in self.names.items():
            text = text.replace(name, value)
        return text

    def run(self, text: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", self.prelude + self.localize(text)], capture_output=True, text=True,
                              cwd=REPO_ROOT, timeout=300, env={**os.environ, **(env or {})})


@pytest.fixture
def firmware(oci_registry: RegistryServer, tmp_path: Path) -> str:
    """``fleet/firmware`` v1 and v2 in the registry (a fresh repository name per test is not possible:
    the docs name it; the tags are pushed again, so the test owns them)."""
    data = payload(40 << 10, 51)
    oras_push_file(oci_registry.host, "fleet/firmware:v1", tmp_path / "p1", "firmware.bin", data)
    oras_push_file(oci_registry.host, "fleet/firmware:v2", tmp_path / "p2", "firmware.bin",
                   edit(data, 9, int.from_bytes(os.urandom(4), "big")))
    return "fleet/firmware"


def test_the_session_of_cli_md_runs_as_written(oci_registry: RegistryServer, firmware: str, tmp_path: Path,
                                                doras_server_factory: DorasServerFactory) -> None:
    server = doras_server_factory(build_delay_s=1.0)
    device = Device(tmp_path, oci_registry, server.url)
    [session] = [body for body in blocks(DOCS / "cli.md", "sh") if "--oci-layout /var/lib/fleet/oci" in body]
    commands = _commands(session)
    assert len(commands) >= 10
    for line, code in commands:
        assert code is not None, line
        done = device.run(line)
        assert done.returncode == code, (line, done.returncode, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        if "--json" in line:
            json.loads(done.stdout)
    assert (tmp_path / "files" / "firmware.bin").is_file()


def test_the_quickstart_runs_as_written(oci_registry: RegistryServer, firmware: str, tmp_path: Path,
                                        doras_server_factory: DorasServerFactory) -> None:
    server = doras_server_factory(build_delay_s=1.0)
    device = Device(tmp_path, oci_registry, server.url)
    shell = blocks(DOCS / "quickstart.md", "sh")
    assert shell[0].strip() == "./scripts/demo.sh"
    demo = device.run(shell[0])
    assert demo.returncode == 0 and "all checks passed" in demo.stdout, demo.stdout + demo.stderr

    serve_line = shell[1].split("#", 1)[0].strip()
    assert serve_line == ".venv/bin/python -m doras_oras.testing serve"
    serve = subprocess.Popen(shlex.split(serve_line), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert serve.stdout is not None
        info = json.loads(serve.stdout.readline())
        assert {"registry", "doras"} <= set(info)
    finally:
        serve.send_signal(signal.SIGINT)
        assert serve.wait(timeout=30) == 0

    [first, second] = _commands(shell[2])
    assert device.run(first[0]).returncode == 0
    updated = device.run(second[0])
    assert updated.returncode == 0 and "by delta" in updated.stdout, updated.stdout + updated.stderr
    assert (tmp_path / "files" / "firmware.bin").is_file()

    cron = shell[3]
    assert "case $?" in cron

    def cron_run(ref: str, layout: str) -> list[str]:
        device.record.unlink(missing_ok=True)
        done = device.run(cron, env={"REF": ref, "LAYOUT": layout, "DORAS": server.url})
        assert done.returncode == 0, done.stderr
        return device.record.read_text().splitlines() if device.record.exists() else []

    layout = str(tmp_path / "cron-oci")
    host = oci_registry.host
    assert cron_run(f"{host}/{firmware}:v1", layout) == ["systemctl restart app"]  # the first pull
    oras_push_file(host, f"{firmware}:v3", tmp_path / "p3", "firmware.bin", payload(40 << 10, 52))
    assert cron_run(f"{host}/{firmware}:v3", layout) == []  # 4: the server builds the delta
    server.wait_idle()
    assert cron_run(f"{host}/{firmware}:v3", layout) == ["systemctl restart app"]  # 0: updated
    assert cron_run(f"{host}/{firmware}:v3", layout) == []  # 3: nothing new
    [logged] = cron_run(f"{host}/{firmware}:nope", layout)
    assert logged.startswith("logger update failed: {")
    failure = json.loads(logged.removeprefix("logger update failed: "))
    assert failure["status"] == "error" and failure["exit_code"] == 1 and "404" in failure["message"]


def test_docs_point_only_to_files_of_the_repository() -> None:
    """No "DESIGN.md §N": that file is not in the repository (issue #22 §8)."""
    for path in (REPO_ROOT / "README.md", *sorted(DOCS.glob("*.md"))):
        assert not re.search(r"DESIGN(\.md)?\s*(§|notes)", path.read_text()), path


def test_testing_docs_say_how_to_build_the_go_server() -> None:
    text = " ".join((DOCS / "testing.md").read_text().split())
    assert "cannot be installed" not in text
    assert "`go build ./cmd/doras-server`" in text and "`v0.20.2`" in text and "unbasical/doras" in text
