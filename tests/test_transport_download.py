"""Resumable verified downloads from the real docker-registry through the fault proxy."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from transport_helpers import Blob, Sleeps, download_file, quick_policy, random_blob, sha256_file

from doras_oras.errors import (
    ConnectError,
    DigestMismatchError,
    SizeMismatchError,
    TransferTimeoutError,
)
from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.registry import RegistryServer
from doras_oras.transport import ByteCounter, Transport

SIZE = 4 * 1024 * 1024
CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def blob(oci_registry: RegistryServer) -> Blob:
    return random_blob(oci_registry, "transport/download", SIZE)


@pytest.fixture(scope="module")
def other_blob(oci_registry: RegistryServer) -> Blob:
    return random_blob(oci_registry, "transport/download", SIZE)


def ranges(proxy: FaultProxy, blob: Blob) -> list[str | None]:
    return [r.headers.get("Range") for r in proxy.requests(blob.path)]


def download(proxy: FaultProxy, blob: Blob, partial: Path, counter: ByteCounter, *,
             sleep: Callable[[float], None] = time.sleep, **policy: object) -> Path:
    with Transport(policy=quick_policy(**policy), sleep=sleep) as transport:
        return download_file(transport,
            proxy.url + blob.path, digest=blob.digest, size=blob.size, partial_path=partial, counter=counter
        )


@pytest.mark.timeout(60)
def test_plain_download_is_verified_and_fsynced(proxy: FaultProxy, blob: Blob, tmp_path: Path) -> None:
    counter = ByteCounter()
    partial = tmp_path / "ingest" / "blob.partial"
    result = download(proxy, blob, partial, counter)
    assert result == partial
    assert result.read_bytes() == blob.data
    assert oct(result.stat().st_mode & 0o777) == "0o644"
    assert not partial.with_name("blob.partial.meta").exists()
    assert counter.received == blob.size and counter.requests == 1 and counter.resumed_from is None
    proxy.wait_idle()
    assert proxy.bytes_sent(blob.path) == blob.size


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["drop", "reset"])
def test_connection_losses_resume_without_refetching(
    proxy: FaultProxy, blob: Blob, tmp_path: Path, kind: str
) -> None:
    proxy.add(kind, blob.path, after_bytes=700_000, times=3)
    counter = ByteCounter()
    result = download(proxy, blob, tmp_path / "p", counter)
    assert sha256_file(result) == blob.digest
    assert counter.requests == 4
    # Everything received was kept: at most one chunk per loss is fetched twice.
    assert blob.size <= counter.received <= blob.size + 3 * CHUNK
    proxy.wait_idle()
    if kind == "drop":
        assert proxy.bytes_sent(blob.path) <= blob.size + 3 * CHUNK
    else:
        # A TCP reset discards what was still in flight: sent by the proxy, never received.
        assert proxy.bytes_sent(blob.path) <= blob.size + 3 * 700_000
    seen = ranges(proxy, blob)
    assert seen[0] is None
    assert all(r is not None and r.startswith("bytes=") for r in seen[1:])
    starts = [int(r.split("=")[1].rstrip("-")) for r in seen[1:] if r]
    assert starts == sorted(starts) and starts[0] > 0


@pytest.mark.timeout(60)
def test_too_many_losses_without_progress_give_a_clear_error(
    proxy: FaultProxy, blob: Blob, tmp_path: Path
) -> None:
    proxy.add("reset", blob.path, after_bytes=0)
    sleeps = Sleeps()
    with pytest.raises(ConnectError, match="gave up after 3 attempts"):
        download(proxy, blob, tmp_path / "p", ByteCounter(), sleep=sleeps, max_attempts=3)
    assert len(proxy.requests(blob.path)) == 3
    assert len(sleeps) == 2 and max(sleeps) <= quick_policy().wait_max_s  # two short waits, no more


def interrupted(proxy: FaultProxy, blob: Blob, partial: Path, after: int) -> None:
    """Leave ``after`` bytes of ``blob`` in ``partial`` (a download cut and not retried)."""
    fault = proxy.add("drop", blob.path, after_bytes=after, times=1)
    with pytest.raises(ConnectError):
        download(proxy, blob, partial, ByteCounter(), max_attempts=1)
    assert fault.applied == 1 and partial.stat().st_size == after
    proxy.wait_idle()
    proxy.reset_counters()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("kind", "options"),
    [("ignore_range", {}), ("shift_range", {"shift": 1000}), ("wrong_total", {"total": 12345})],
)
def test_unusable_ranged_answers_restart_cleanly(
    proxy: FaultProxy, blob: Blob, tmp_path: Path, kind: str, options: dict[str, int]
) -> None:
    partial = tmp_path / "p"
    interrupted(proxy, blob, partial, 1_000_000)
    proxy.add(kind, blob.path, times=1, **options)
    counter = ByteCounter()
    result = download(proxy, blob, partial, counter)
    assert result.read_bytes() == blob.data
    assert counter.restarts == 1
    assert counter.resumed_from == 1_000_000
    seen = ranges(proxy, blob)
    assert seen[0] == "bytes=1000000-"
    if kind == "ignore_range":
        # The 200 body is used from byte 0: no second request.
        assert len(seen) == 1 and counter.received == blob.size
    else:
        # The bad 206 is abandoned at once; the whole blob is fetched again, without Range.
        assert seen[1:] == [None] and counter.received == blob.size


@pytest.mark.timeout(60)
def test_lying_content_length_still_gives_the_exact_blob(proxy: FaultProxy, blob: Blob, tmp_path: Path) -> None:
    proxy.add("lie_length", blob.path, extra=5000)
    counter = ByteCounter()
    result = download(proxy, blob, tmp_path / "p", counter)
    assert result.read_bytes() == blob.data and counter.received == blob.size


@pytest.mark.timeout(60)
def test_partial_of_another_digest_is_removed(
    proxy: FaultProxy, blob: Blob, other_blob: Blob, tmp_path: Path
) -> None:
    partial = tmp_path / "p"
    interrupted(proxy, other_blob, partial, 800_000)
    assert json.loads(partial.with_name("p.meta").read_text())["digest"] == other_blob.digest
    counter = ByteCounter()
    result = download(proxy, blob, partial, counter)
    assert result.read_bytes() == blob.data
    assert ranges(proxy, blob) == [None] and counter.resumed_from is None
    assert counter.received == blob.size


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["unknown", "too_long", "complete_but_wrong"])
def test_untrusted_partial_files_are_not_resumed(
    proxy: FaultProxy, blob: Blob, tmp_path: Path, case: str
) -> None:
    partial = tmp_path / "p"
    if case == "unknown":
        partial.write_bytes(blob.data[:1000])  # no sidecar: content of unknown origin
    elif case == "too_long":
        interrupted(proxy, blob, partial, 1000)
        with open(partial, "ab") as handle:
            handle.write(b"\0" * blob.size)
    else:
        interrupted(proxy, blob, partial, 1000)
        partial.write_bytes(b"x" * blob.size)
    counter = ByteCounter()
    result = download(proxy, blob, partial, counter)
    assert result.read_bytes() == blob.data
    assert ranges(proxy, blob) == [None]


@pytest.mark.timeout(60)
def test_complete_partial_is_not_fetched_again(proxy: FaultProxy, blob: Blob, tmp_path: Path) -> None:
    partial = tmp_path / "p"
    partial.write_bytes(blob.data)  # e.g. the process died after download, before the rename
    counter = ByteCounter()
    assert download(proxy, blob, partial, counter).read_bytes() == blob.data
    assert counter.requests == 0 and proxy.requests() == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("lie", ["digest", "size_short", "size_long"])
def test_content_not_matching_the_descriptor_removes_the_partial(
    proxy: FaultProxy, blob: Blob, other_blob: Blob, tmp_path: Path, lie: str
) -> None:
    partial = tmp_path / "p"
    size = {"digest": blob.size, "size_short": blob.size - 10, "size_long": blob.size + 10}[lie]
    digest = other_blob.digest if lie == "digest" else blob.digest
    error = {"digest": DigestMismatchError, "size_short": DigestMismatchError,
             "size_long": SizeMismatchError}[lie]
    counter = ByteCounter()
    with Transport(policy=quick_policy(max_attempts=2)) as transport, pytest.raises(error):
        download_file(transport,
            proxy.url + blob.path, digest=digest, size=size, partial_path=partial, counter=counter
        )
    assert not partial.exists() and not partial.with_name("p.meta").exists()
    if lie == "size_long":
        # The body ended early; the resume was answered 416: the descriptor is wrong.
        assert [r.status for r in proxy.requests(blob.path)] == [200, 416]
    else:
        # Reading stopped at the expected size.
        assert counter.received == size


@pytest.mark.timeout(60)
def test_stall_times_out_quickly_and_a_later_call_resumes(
    proxy: FaultProxy, blob: Blob, tmp_path: Path
) -> None:
    partial = tmp_path / "p"
    fault = proxy.add("stall", blob.path, after_bytes=300_000)
    assert fault.stall_s >= 300  # the stall outlasts the test: only the read timeout can end an attempt
    with pytest.raises(TransferTimeoutError):
        download(proxy, blob, partial, ByteCounter(), read_timeout_s=0.5, max_attempts=2)
    assert len(proxy.requests(blob.path)) == 2
    kept = partial.stat().st_size
    assert kept == 600_000  # each attempt got 300000 bytes before the stall; nothing lost
    proxy.clear()
    proxy.reset_counters()
    counter = ByteCounter()
    assert download(proxy, blob, partial, counter).read_bytes() == blob.data
    assert counter.resumed_from == kept and counter.received == blob.size - kept
    assert ranges(proxy, blob) == [f"bytes={kept}-"]


@pytest.mark.timeout(60)
def test_trickling_server_is_abandoned(proxy: FaultProxy, blob: Blob, tmp_path: Path) -> None:
    proxy.add("trickle", blob.path, interval_s=0.05)
    with pytest.raises(TransferTimeoutError, match="slower than"):
        download(
            proxy, blob, tmp_path / "p", ByteCounter(),
            min_bytes_per_s=1000.0, throughput_window_s=0.5, max_attempts=2,
        )
    assert len(proxy.requests(blob.path)) == 2
    proxy.wait_idle()
    assert proxy.bytes_sent(blob.path) < 1000  # each attempt abandoned within its first windows


@pytest.mark.timeout(60)
def test_overall_deadline_bounds_a_slow_download(proxy: FaultProxy, blob: Blob, tmp_path: Path) -> None:
    proxy.add("rate", blob.path, bytes_per_s=512 * 1024)
    with pytest.raises(TransferTimeoutError, match="deadline"):
        download(proxy, blob, tmp_path / "p", ByteCounter(), deadline_s=1.0)
    proxy.wait_idle()
    assert proxy.bytes_sent(blob.path) < SIZE // 2  # stopped at the deadline, far from the body's end
