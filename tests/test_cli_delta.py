"""``doras-oras delta``: output, exit codes and flags, against a hand-made server."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from doras_oras.cli import EXIT_ERROR, EXIT_OK, EXIT_PENDING, EXIT_UP_TO_DATE, EXIT_USAGE, main
from tests.edgeapi_helpers import FaultServer, Reply, exchanges

FROM = "localhost:5443/oras-file-0@sha256:c4a5c62808e303a06881dfc1d6c34949bf257dcfed9b8c512c2f8fe942b680e0"
TO_TAG = "localhost:5443/oras-file-0:v2"
TARGET = "localhost:5443/oras-file-0@sha256:97989c66a1d5cdf0cb2e47dc9a470a4475aa0a07adc5b4efbd736d38b090023f"
DELTA = "localhost:5443/oras-file-0@sha256:b90c7f6790b7e3afa11f76232407a17606a98265e72592beb86bcb4cb7618f6b"
READY = json.dumps({"target_image": TARGET, "delta_image": DELTA}).encode()


def args(server: str, *extra: str) -> list[str]:
    return ["delta", "--from", FROM, "--to", TO_TAG, "--server", server, "--allow-insecure-auth", *extra]


@pytest.fixture(autouse=True)
def no_docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    return tmp_path / "docker"


def test_ready_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    with FaultServer(lambda _s: Reply(200, READY)) as srv:
        assert main(args(srv.url, "--accept", "bsdiff", "--accept", "zstd")) == EXIT_OK
        text = capsys.readouterr().out
        assert main(args(srv.url, "--json")) == EXIT_OK
        out = capsys.readouterr().out
    assert text == f"target_image: {TARGET}\ndelta_image: {DELTA}\n"
    assert json.loads(out) == {"status": "ready", "target_image": TARGET, "delta_image": DELTA}
    assert [v for k, v in srv.seen[0].query if k == "accepted_algorithm"] == ["bsdiff", "zstd"]


def test_pending_with_async_and_identical(capsys: pytest.CaptureFixture[str]) -> None:
    with FaultServer(lambda _s: Reply(202, b"", content_type=None)) as srv:
        assert main(args(srv.url, "--async", "--json")) == EXIT_PENDING
    assert json.loads(capsys.readouterr().out) == {"status": "pending"}
    assert len(srv.seen) == 1
    with FaultServer(lambda _s: Reply(204, b"", content_type=None)) as srv:
        assert main(args(srv.url, "--json")) == EXIT_UP_TO_DATE
    assert json.loads(capsys.readouterr().out) == {"status": "identical"}


def test_blocking_wait_polls_then_prints(capsys: pytest.CaptureFixture[str]) -> None:
    replies = iter([Reply(202, b"", content_type=None, headers={"Retry-After": "0"}), Reply(200, READY)])
    with FaultServer(lambda _s: next(replies)) as srv:
        assert main(args(srv.url, "--json")) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["delta_image"] == DELTA
    assert len(srv.seen) == 2


def test_timeout_ends_the_wait_as_pending(capsys: pytest.CaptureFixture[str]) -> None:
    with FaultServer(lambda _s: Reply(202, b"", content_type=None, headers={"Retry-After": "1"})) as srv:
        assert main(args(srv.url, "--timeout", "1.5")) == EXIT_PENDING
    # the wait ended at its deadline: no more polls than 1.5 s of "Retry-After: 1" allow
    assert 1 <= len(srv.seen) <= 3
    captured = capsys.readouterr()
    assert captured.out.startswith("pending:") and "deadline of 1.5 s" in captured.err
    assert 2 <= len(srv.seen) <= 3


def test_server_error_exit_1_with_json(capsys: pytest.CaptureFixture[str]) -> None:
    recorded = exchanges()["unknown_repository_404"]
    with FaultServer(lambda _s: Reply(404, recorded["body"].encode())) as srv:
        assert main(args(srv.url, "--json")) == EXIT_ERROR
    captured = capsys.readouterr()
    obj = json.loads(captured.out)
    assert obj["status"] == "error" and obj["error"] == "NotFoundError" and obj["http_status"] == 404
    assert obj["server_message"] == "failed to resolve" and obj["context"].startswith("localhost:5443/nope@")
    assert "404" in captured.err


@pytest.mark.parametrize("argv, message", [
    (["delta", "--from", TO_TAG, "--to", TO_TAG, "--server", "http://127.0.0.1:9"], "digest reference"),
    (["delta", "--from", FROM, "--to", TO_TAG, "--server", "http://127.0.0.1:9", "--plain-http"],
     "--plain-http says the registry speaks plain HTTP"),
    (["delta", "--from", FROM, "--to", TO_TAG, "--server", "ftp://x"], "server URL"),
    (["delta", "--from", FROM, "--to", TO_TAG, "--server", "https://x", "-p", "pw"], "needs --username"),
    (["delta", "--from", FROM, "--to", TO_TAG, "--server", "https://x", "-u", "me"], "needs --password"),
    (["delta", "--from", FROM, "--to", TO_TAG, "--server", "https://x", "--timeout", "0"], "--timeout"),
])
def test_usage_errors_exit_2_and_send_nothing(argv: list[str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_an_http_server_needs_no_flag_as_in_pull(capsys: pytest.CaptureFixture[str]) -> None:
    with FaultServer(lambda _s: Reply(200, READY)) as srv:
        assert main(["delta", "--from", FROM, "--to", TO_TAG, "--server", srv.url]) == EXIT_OK
    assert capsys.readouterr().out == f"target_image: {TARGET}\ndelta_image: {DELTA}\n"


def test_credentials_to_an_http_server_need_allow_insecure_auth(capsys: pytest.CaptureFixture[str]) -> None:
    with FaultServer(lambda _s: Reply(200, READY)) as srv:
        assert main(["delta", "--from", FROM, "--to", TO_TAG, "--server", srv.url, "-u", "me", "-p", "pw"]) \
            == EXIT_ERROR
    assert "over plain HTTP; refused; add --allow-insecure-auth" in capsys.readouterr().err
    assert srv.seen == []


def test_unknown_algorithm_is_an_argparse_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    # main() returns the exit code of a usage error (it does not raise SystemExit)
    assert main(["delta", "--from", FROM, "--to", TO_TAG, "--server", "https://x", "--accept", "xdelta"]) \
        == EXIT_USAGE
    assert "xdelta" in capsys.readouterr().err


def test_credentials_from_stdin_and_docker_config(monkeypatch: pytest.MonkeyPatch,
                                                  no_docker_config: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with FaultServer(lambda _s: Reply(200, READY)) as srv:
        monkeypatch.setattr(sys, "stdin", io.StringIO("tok-123\n"))
        assert main(args(srv.url, "--token-stdin")) == EXIT_OK
        monkeypatch.setattr(sys, "stdin", io.StringIO("pw with space\n"))
        assert main(args(srv.url, "-u", "me", "--password-stdin")) == EXIT_OK
        assert main(args(srv.url)) == EXIT_OK
        no_docker_config.mkdir()
        (no_docker_config / "config.json").write_text(json.dumps(
            {"auths": {"localhost:5443": {"auth": base64.b64encode(b"cfg:pw").decode()}}}))
        assert main(args(srv.url)) == EXIT_OK
    headers = [s.headers.get("authorization") for s in srv.seen]
    assert headers == ["Bearer tok-123", "Basic " + base64.b64encode(b"me:pw with space").decode(),
                       None, "Basic " + base64.b64encode(b"cfg:pw").decode()]
    assert "tok-123" not in capsys.readouterr().out


def test_as_a_process_stdout_is_the_answer_and_logs_go_to_stderr(tmp_path: Path) -> None:
    with FaultServer(lambda _s: Reply(200, READY)) as srv:
        proc = subprocess.run([sys.executable, "-m", "doras_oras", "-vv", *args(srv.url, "--json")],
                              capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "DOCKER_CONFIG": str(tmp_path),
                                   "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"status": "ready", "target_image": TARGET, "delta_image": DELTA}
    assert "GET " in proc.stderr and "/api/v1/delta/" in proc.stderr
