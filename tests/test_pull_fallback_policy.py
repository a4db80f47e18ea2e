"""No silent full downloads (issue #22 part 1): ``fallback="never"`` / ``--fallback never`` and ``--async``
refuse a full download that would replace a delta, with the reason code, having downloaded nothing but
manifests and changed nothing; a first install still pulls in full; the text says why a pull was full."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from doras_oras.cli.main import main
from doras_oras.errors import FallbackRefusedError, InvalidArgumentError
from doras_oras.layout import OCILayout
from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.pytest_plugin import DorasServerFactory
from doras_oras.testing.registry import RegistryServer
from doras_oras.testing.server import DorasServer
from tests.delta_bed import Bed, behind, free_port, make_bed
from tests.layout_support import layout_problems
from tests.pull_support import check_layout


@pytest.fixture
def bed(oci_registry: RegistryServer, tmp_path: Path) -> Iterator[Bed]:
    with make_bed(oci_registry, tmp_path) as made:
        yield made


def cli(bed: Bed, *extra: str) -> list[str]:
    return ["pull", bed.target, "--oci-layout", str(bed.layout), "--plain-http", *extra]


def test_never_with_the_server_stopped_downloads_nothing_but_manifests(
        bed: Bed, doras_server_factory: DorasServerFactory) -> None:
    server = doras_server_factory()
    url = server.url
    server.stop()
    before = bed.snapshot()
    with pytest.raises(FallbackRefusedError) as refused:
        bed.pull(url, fallback="never")
    assert refused.value.reason_code == "server-unreachable"
    assert f"the Doras server at {url} is unreachable" in refused.value.reason
    assert bed.blob_requests() == []
    assert bed.snapshot() == before


Misconfigured = Callable[[Bed, DorasServerFactory, ExitStack], str]


def _stopped(bed: Bed, factory: DorasServerFactory, stack: ExitStack) -> str:
    server = factory()
    url = server.url
    server.stop()
    return url


def _wrong_port(bed: Bed, factory: DorasServerFactory, stack: ExitStack) -> str:
    return f"http://127.0.0.1:{free_port()}"


def _the_registry(bed: Bed, factory: DorasServerFactory, stack: ExitStack) -> str:
    return bed.registry.url  # a misconfiguration: the registry's URL given as the Doras server


def _failing(bed: Bed, factory: DorasServerFactory, stack: ExitStack) -> str:
    proxy = stack.enter_context(FaultProxy(behind(factory(), bed.proxy).url))
    proxy.add("status", path="/api/v1/delta", status=500, body=b'{"error":{"code":500,"message":"boom"}}')
    return proxy.url


def _cut_off(bed: Bed, factory: DorasServerFactory, stack: ExitStack) -> str:
    server = DorasServer(f"http://127.0.0.1:{free_port()}").start()  # it cannot reach any registry
    stack.callback(server.stop)
    return server.url


@pytest.mark.parametrize(("server", "code"), [
    (_stopped, "server-unreachable"), (_wrong_port, "server-unreachable"), (_the_registry, "server-error"),
    (_failing, "server-error"), (_cut_off, "server-error"),
])
def test_the_command_with_fallback_never_exits_1_with_the_reason_code(
        bed: Bed, doras_server_factory: DorasServerFactory, capsys: pytest.CaptureFixture[str],
        server: Misconfigured, code: str) -> None:
    with ExitStack() as stack:
        url = server(bed, doras_server_factory, stack)
        before = bed.snapshot()
        exit_code = main(cli(bed, "--server", url, "--fallback", "never", "--json"))
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert exit_code == 1 and summary["error"] == "FallbackRefusedError", summary
    assert (summary["reason_code"], summary["exit_code"]) == (code, 1), summary
    assert summary["reason"] and summary["reason"] in summary["message"]
    assert "not downloaded" in err
    assert bed.blob_requests() == []
    assert bed.snapshot() == before


def test_async_never_downloads_in_full_when_the_server_is_down(bed: Bed, capsys: pytest.CaptureFixture[str]) -> None:
    before = bed.snapshot()
    exit_code = main(cli(bed, "--server", f"http://127.0.0.1:{free_port()}", "--async", "--json"))
    summary = json.loads(capsys.readouterr().out)
    assert (exit_code, summary["reason_code"]) == (1, "server-unreachable"), summary
    assert bed.blob_requests() == []
    assert bed.snapshot() == before


def test_never_refuses_a_stored_delta_that_does_not_give_the_target(bed: Bed) -> None:
    """The delta was downloaded and failed its check: no full download follows; the layout is as it was."""
    bed.plant_forged_delta()
    before = bed.snapshot()
    with pytest.raises(FallbackRefusedError) as refused:
        bed.pull(fallback="never")
    assert refused.value.reason_code == "delta-failed"
    assert bed.snapshot() == before


def test_never_without_a_server_refuses_when_no_delta_is_stored(bed: Bed) -> None:
    before = bed.snapshot()
    with pytest.raises(FallbackRefusedError) as refused:
        bed.pull(fallback="never")
    assert refused.value.reason_code == "no-server"
    assert bed.blob_requests() == [] and bed.snapshot() == before


def test_never_without_a_server_uses_a_stored_delta(bed: Bed) -> None:
    bed.publish()
    result = bed.pull(fallback="never")
    assert (result.status, result.delta_source) == ("delta", "registry"), result


def test_never_allows_a_first_install(bed: Bed, tmp_path: Path) -> None:
    """No base in the layout: no delta can exist, so a full pull is not one instead of a delta."""
    bed.layout = tmp_path / "fresh"
    result = bed.pull(f"http://127.0.0.1:{free_port()}", fallback="never")
    assert (result.status, result.reason_code) == ("full", "no-base"), result


def test_never_with_nowhere_to_find_a_delta_is_refused_before_anything_is_sent(bed: Bed) -> None:
    with pytest.raises(InvalidArgumentError, match="registry_deltas=False"):
        bed.pull(fallback="never", registry_deltas=False)
    assert bed.proxy.requests() == []


def test_the_command_with_never_and_nowhere_to_find_a_delta_is_a_usage_error(bed: Bed) -> None:
    assert main(cli(bed, "--fallback", "never", "--no-registry-deltas")) == 2
    assert bed.proxy.requests() == []


def test_the_text_result_says_a_full_download_happened_and_why(bed: Bed, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(cli(bed, "--server", url)) == 0
    out = capsys.readouterr().out
    assert "downloaded in full (1.0 MiB received" in out, out
    assert f"the Doras server at {url} is unreachable" in out, out


def test_watch_takes_the_fallback_flags(bed: Bed, capsys: pytest.CaptureFixture[str]) -> None:
    """The agent checks them as pull does: never with nowhere to find a delta is refused before any poll."""
    code = main(["watch", bed.target, "--interval", "1h", "--oci-layout", str(bed.layout), "--plain-http",
                 "--fallback", "never", "--no-registry-deltas"])
    assert code == 2 and "--fallback never" in capsys.readouterr().err
    assert bed.proxy.requests() == []


def test_never_refuses_to_repair_a_rotted_base_but_keeps_the_layout_valid(bed: Bed) -> None:
    """The rot is found when the stored delta's result does not match: refused (no full download), and the
    damaged image, whose corrupt layer is removed, leaves the index so that every reader finds it valid."""
    bed.publish()
    layer = json.loads(check_layout(bed.layout, "v1"))["layers"][0]
    blob = bed.layout / "blobs" / "sha256" / layer["digest"].split(":")[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    with pytest.raises(FallbackRefusedError) as refused:
        bed.pull(fallback="never")
    assert refused.value.reason_code == "base-corrupt"
    assert layout_problems(bed.layout) == []
    assert OCILayout.open(bed.layout).images() == []
    target_layer = json.loads(bed.v2_manifest)["layers"][0]["digest"]
    assert [path for path in bed.blob_requests() if target_layer in path] == []  # no full download


@pytest.mark.parametrize("options", [{"fallback": "sometimes"}, {"fallback": None}, {"registry_deltas": "no"}])
def test_bad_settings_are_refused_before_anything_is_sent(bed: Bed, options: dict[str, object]) -> None:
    with pytest.raises(InvalidArgumentError):
        bed.pull(**options)
    assert bed.proxy.requests() == []
