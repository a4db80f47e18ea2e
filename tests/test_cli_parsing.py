"""The command line as oras and skopeo users type it (issue #15): flags anywhere, no abbreviations,
numbers in range, obvious reference mistakes refused, one error format, one JSON object.

No server is contacted: every case is refused before (the references name 127.0.0.1:9).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from doras_oras.errors import InvalidReferenceError
from doras_oras.reference import Reference, names_registry
from tests.layout_support import cli

NOWHERE = "127.0.0.1:9/app:v1"  # port 9 (discard): nothing listens, and nothing is sent to it


def usage(proc: subprocess.CompletedProcess[str], *named: str) -> None:
    """A usage error: exit 2, the one prefix, what was wrong named, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "doras-oras: error: " in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    for text in named:
        assert text in proc.stderr, (text, proc.stderr)


def json_error(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    obj: dict[str, object] = json.loads(lines[0])
    assert obj["status"] == "error" and obj["exit_code"] == proc.returncode, obj
    return obj


def test_log_flags_are_accepted_after_the_subcommand_too(tmp_path: Path) -> None:
    for argv in (["-v", "gc"], ["gc", "-v"], ["gc", "-vv"], ["gc", "-q"], ["-q", "gc", "--verbose"]):
        proc = cli(*argv, "--oci-layout", str(tmp_path / "none"), "--keep", "1")
        # the layout does not exist: a usage error, but the flags themselves parsed
        usage(proc, "does not exist")
        assert "unrecognized" not in proc.stderr
    verbose = cli("apply", "-v", "--base", __file__, "--delta", __file__, "--output", str(tmp_path / "out"),
                  "--allow-unverified")
    assert "doras-oras: info:" in verbose.stderr or "doras-oras: error:" in verbose.stderr


def test_unknown_and_abbreviated_flags_print_the_subcommand_usage(tmp_path: Path) -> None:
    for flag in ("--bogus", "--no-progres", "--oci", "--jso"):
        proc = cli("pull", NOWHERE, "--oci-layout", str(tmp_path / "L"), flag)
        usage(proc, f"unrecognized arguments: {flag}")
        assert proc.stderr.startswith("usage: doras-oras pull "), proc.stderr  # not the top-level usage
    before = cli("--bogus", "gc", "--oci-layout", str(tmp_path / "L"), "--keep", "1")
    usage(before, "unrecognized arguments: --bogus")
    assert not (tmp_path / "L").exists()


def test_an_argument_refused_after_parsing_prints_the_subcommand_usage(tmp_path: Path) -> None:
    """docs/cli.md: a usage error prints the subcommand's usage first, also one a command finds (exit 2)."""
    proc = cli("pull", NOWHERE, "--oci-layout", str(tmp_path / "L"), "--accept", "bsdiff")  # without --server
    usage(proc, "only apply with --server")
    assert proc.stderr.startswith("usage: doras-oras pull "), proc.stderr


def test_usage_errors_print_one_json_object_with_json(tmp_path: Path) -> None:
    """Every outcome gives one JSON object, also flags argparse refuses."""
    for argv, named in (
        (["pull", NOWHERE, "--oci-layout", str(tmp_path / "L"), "--json", "--bogus"], "--bogus"),
        (["pull", NOWHERE, "--json"], "--oci-layout"),
        (["pull", NOWHERE, "--oci-layout", str(tmp_path / "L"), "--json", "--timeout", "nan"], "--timeout"),
        (["gc", "--oci-layout", str(tmp_path), "--keep", "x", "--json"], "--keep"),
        (["apply", "--json", "--base"], "--base"),
    ):
        proc = cli(*argv)
        usage(proc, named)
        obj = json_error(proc)
        assert obj["error"] == "UsageError" and named in str(obj["message"]), obj
    assert cli("pull", NOWHERE, "--bogus").stdout == ""  # without --json stdout stays empty


@pytest.mark.parametrize(("flag", "value"), [
    ("--timeout", "0"), ("--timeout", "-1"), ("--timeout", "nan"), ("--timeout", "inf"),
    ("--wait-timeout", "-5"), ("--lock-timeout", "-1"), ("--lock-timeout", "nan"), ("--lock-timeout", "inf"),
    ("--connect-timeout", "0"), ("--read-timeout", "nan"), ("--deadline", "-1"), ("--deadline", "inf"),
    ("--max-size", "nan"), ("--max-size", "-1"), ("--max-size", "inf"), ("--max-size", "10X"),
    ("--budget", "1M/nan"), ("--budget", "1M/0"), ("--budget", "1M/-1d"), ("--budget", "nan/1d"),
    ("--budget", "1M/infd"),
])
def test_every_numeric_flag_of_pull_is_checked(tmp_path: Path, flag: str, value: str) -> None:
    extra = ["--server", "http://127.0.0.1:9"] if flag in ("--timeout", "--wait-timeout") else []
    proc = cli("pull", NOWHERE, "--oci-layout", str(tmp_path / "L"), *extra, f"{flag}={value}")
    usage(proc, flag)
    assert not (tmp_path / "L").exists()


def test_numeric_flags_of_the_other_commands(tmp_path: Path) -> None:
    usage(cli("gc", "--oci-layout", str(tmp_path), "--keep", "-1"), "--keep")
    usage(cli("gc", "--oci-layout", str(tmp_path), "--keep", "1", "--lock-timeout", "nan"), "--lock-timeout")
    usage(cli("apply", "--base", __file__, "--delta", __file__, "--output", str(tmp_path / "o"),
              "--expect-size", "-1"), "--expect-size")
    usage(cli("delta", "--from", "127.0.0.1:9/a@sha256:" + "a" * 64, "--to", "127.0.0.1:9/a:v2",
              "--server", "http://127.0.0.1:9", "--timeout", "0"), "--timeout")


def test_delta_flags_without_server_are_a_usage_error(tmp_path: Path) -> None:
    layout = str(tmp_path / "L")
    for extra, named in ((["--async"], "--async"), (["--accept", "bsdiff"], "--accept"),
                         (["--timeout", "5"], "--timeout"), (["--from", "v0"], "--from"),
                         (["--on-timeout", "pending"], "--on-timeout"), (["--allow-unverified"], "--allow-unverified"),
                         (["--async", "--accept", "zstd"], "--accept, --async")):
        usage(cli("pull", NOWHERE, "--oci-layout", layout, *extra), named, "only apply with --server")
    usage(cli("pull", NOWHERE, "--oci-layout", layout, "--server", ""), "--server", "empty URL")
    assert not (tmp_path / "L").exists()


def test_paths_that_are_files_are_usage_errors(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    usage(cli("pull", NOWHERE, "--oci-layout", str(a_file)), f"--oci-layout {a_file}: not a directory")
    usage(cli("pull", NOWHERE, "--oci-layout", str(tmp_path / "L"), "-o", str(a_file)),
          f"--output {a_file}: not a directory")
    usage(cli("gc", "--oci-layout", str(a_file), "--keep", "1"), "not a directory")
    usage(cli("list", "--oci-layout", str(a_file)), "not a directory")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    usage(cli("pull", NOWHERE, "--oci-layout", str(other)), "not an OCI image layout", "notes.txt")
    assert a_file.read_text() == "not a directory" and not (tmp_path / "L").exists()


def test_obvious_reference_mistakes_fail_fast(tmp_path: Path) -> None:
    layout = str(tmp_path / "L")
    for text, named in (("127.0.0.1:5000", "names a registry but no repository"),
                        ("localhost:5000", "write localhost:5000/REPOSITORY"),
                        ("registry.example:443", "no repository"),
                        ("http://127.0.0.1:5000/app:v1", "a URL; write it without http://"),
                        ("App:V1", "bad repository")):
        proc = cli("pull", text, "--oci-layout", layout, "--json")
        usage(proc, named)
        assert json_error(proc)["error"] == "InvalidReferenceError"
    assert not (tmp_path / "L").exists()


def test_a_reference_without_registry_says_what_it_means(tmp_path: Path) -> None:
    """``app:v1`` means docker.io/library/app:v1: said before anything is sent (here refused at once)."""
    proc = cli("pull", "app:v1", "--oci-layout", str(tmp_path / "L"), "--ca-file", str(tmp_path / "none"))
    usage(proc, "--ca-file")
    proc = cli("pull", "app:v1", "--oci-layout", str(tmp_path / "L"), "--deadline", "0.5",
               "--connect-timeout", "0.2")
    assert "app:v1 names no registry host: understood as docker.io/library/app:v1" in proc.stderr
    quiet = cli("pull", "app:v1", "--oci-layout", str(tmp_path / "L"), "-q", "--deadline", "0.5",
                "--connect-timeout", "0.2")
    assert "understood as" not in quiet.stderr


def test_relative_from_references() -> None:
    target = Reference.parse("127.0.0.1:5000/fleet/app:v2")
    digest = "sha256:" + "ab" * 32
    assert Reference.parse_relative("v1", target) == Reference("127.0.0.1:5000", "fleet/app", "v1")
    assert Reference.parse_relative(digest, target) == Reference("127.0.0.1:5000", "fleet/app", None, digest)
    assert Reference.parse_relative("@" + digest, target).digest == digest
    assert Reference.parse_relative("v1@" + digest, target) == Reference("127.0.0.1:5000", "fleet/app", "v1",
                                                                          digest)
    assert Reference.parse_relative("127.0.0.1:5000/fleet/app:v0", target).tag == "v0"
    assert Reference.parse_relative("other/app:v1", target).registry == "docker.io"
    with pytest.raises(InvalidReferenceError):
        Reference.parse_relative("sha256:XYZ", target)
    assert names_registry("127.0.0.1:5000/app") and names_registry("registry.example/app:v1")
    assert not names_registry("app:v1") and not names_registry("library/app")


def test_from_in_another_repository_is_named_as_understood(tmp_path: Path) -> None:
    proc = cli("pull", NOWHERE, "--oci-layout", str(tmp_path / "L"), "--server", "http://127.0.0.1:9",
               "--from", "127.0.0.1:9/other:v1")
    usage(proc, "--from 127.0.0.1:9/other:v1 is not in the repository of 127.0.0.1:9/app:v1")


def test_help_names_exit_codes_and_scopes() -> None:
    pull = cli("pull", "--help")
    assert pull.returncode == 0
    text = " ".join(pull.stdout.split())
    assert "130 interrupted" in text and "3 up to date" in text
    assert "do not verify the TLS certificates of the registry and the Doras server" in text
    assert "CA bundle to verify the TLS certificates of the registry and the Doras server" in text
    delta = " ".join(cli("delta", "--help").stdout.split())
    assert "do not verify the TLS certificates of the Doras server" in delta
    assert "allow sending credentials to an http:// --server" in delta and "--plain-http" not in delta
    gc = " ".join(cli("gc", "--help").stdout.split())
    assert "seconds to wait while another process writes the layout (default 300; 0: do not wait)" in gc
    assert "--rebuild" in gc
    top = cli("--help")
    assert all(name in top.stdout for name in ("pull", "delta", "apply", "gc", "list"))


@pytest.mark.parametrize("part, whole, text", [
    (2560, 6 << 20, "0.041%"),       # 2.5 KiB of 6 MiB: not 0.0%
    (23144, 1049170, "2.2%"),
    (388, 1049170, "0.037%"),
    (0, 1000, "0%"),
    (370, 1000, "37%"),
    (1000, 1000, "100%"),
])
def test_the_share_of_a_full_pull_has_two_significant_digits(part: int, whole: int, text: str) -> None:
    from doras_oras.cli.pull import share_text

    assert share_text(part, whole) == text


@given(st.integers(1, 1 << 40), st.integers(1, 1 << 40))
def test_a_share_of_some_bytes_is_never_shown_as_zero(part: int, extra: int) -> None:
    from doras_oras.cli.pull import share_text

    assert float(share_text(part, part + extra).rstrip("%")) > 0


def test_publish_delta_takes_sizes_as_pull_does(tmp_path: Path) -> None:
    """``--max-size`` has one syntax in every command: ``1K`` passes parsing (the registry named does not exist,
    so the command then fails at the network, exit 1), ``10X`` is a usage error."""
    args = ["publish-delta", "--to", "127.0.0.1:9/a:v2", "--from", "v1", "--plain-http", "--json",
            "--connect-timeout", "1", "--deadline", "5"]
    usage(cli(*args, "--max-size", "10X"), "--max-size")
    proc = cli(*args, "--max-size", "1K")
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["error"] != "InvalidArgumentError"
