"""kill -9 of a process mid-download of a 64 MiB blob; a new process resumes with Range."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from transport_helpers import download_file, quick_policy, random_blob, sha256_file

from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.registry import RegistryServer
from doras_oras.transport import ByteCounter, Transport

SIZE = 64 * 1024 * 1024
CHUNK = 64 * 1024

CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from doras_oras.layout import BlobWriter
    from doras_oras.transport import ByteCounter, Transport, TransferPolicy

    url, digest, size, partial = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    def progress(received):
        # Written after the chunk is in the file: every reported byte is on disk.
        sys.stdout.write(f"{received}\\n")
        sys.stdout.flush()
    counter = ByteCounter(on_progress=progress)
    with Transport(policy=TransferPolicy(allow_http=True, read_timeout_s=10)) as transport, \\
            BlobWriter.partial(partial, digest=digest, size=size) as writer:
        transport.download(url, writer, counter=counter)
    """
)


@pytest.mark.timeout(120)
def test_kill_9_mid_download_then_resume(oci_registry: RegistryServer, tmp_path: Path) -> None:
    blob = random_blob(oci_registry, "transport/kill", SIZE)
    partial = tmp_path / "ingest" / "blob.partial"
    root = Path(__file__).resolve().parents[1]
    with FaultProxy(oci_registry.url) as proxy:
        proxy.add("rate", blob.path, bytes_per_s=16 * 1024 * 1024, times=1)
        env = {**os.environ, "PYTHONPATH": str(root)}
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, proxy.url + blob.path, blob.digest, str(SIZE), str(partial)],
            stdout=subprocess.PIPE, env=env, cwd=root,
        )
        assert child.stdout is not None
        last = 0
        deadline = time.monotonic() + 60
        while last < 16 * 1024 * 1024:
            line = child.stdout.readline()
            assert line, f"child ended early with {child.wait()}"
            last = int(line)
            assert time.monotonic() < deadline
        child.send_signal(signal.SIGKILL)
        # Drain what the child reported before it died.
        for line in child.stdout:
            last = int(line)
        assert child.wait(timeout=10) == -signal.SIGKILL
        kept = partial.stat().st_size
        # Everything the child received is on disk, except at most the chunk it was writing.
        assert last <= kept <= last + CHUNK
        assert 16 * 1024 * 1024 <= kept < SIZE

        proxy.wait_idle()  # the killed request's bytes are all counted before the reset
        proxy.reset_counters()
        counter = ByteCounter()
        with Transport(policy=quick_policy()) as transport:
            result = download_file(transport, proxy.url + blob.path, digest=blob.digest, size=SIZE,
                                        partial_path=partial, counter=counter)
        assert sha256_file(result) == blob.digest
        # Nothing fetched twice: the new process asked for exactly the missing bytes.
        assert counter.resumed_from == kept
        assert counter.received == SIZE - kept
        assert [r.headers.get("Range") for r in proxy.requests(blob.path)] == [f"bytes={kept}-"]
        proxy.wait_idle()
        assert proxy.bytes_sent(blob.path) == SIZE - kept
        assert not partial.with_name("blob.partial.meta").exists()
