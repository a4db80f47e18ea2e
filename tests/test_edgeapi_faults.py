"""EdgeClient against a hand-made server: the recorded bodies, and faults no real server makes."""

from __future__ import annotations

import base64
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from doras_oras.backoff import ExponentialBackoffWithJitter
from doras_oras.edgeapi import (
    MAX_ERROR_BODY_BYTES,
    BasicAuth,
    BearerAuth,
    DockerConfigAuth,
    EdgeClient,
    ReadDeltaResponse,
    parse_error_body,
)
from doras_oras.errors import (
    BackoffExhausted,
    BodyTooLargeError,
    ConnectError,
    DocumentError,
    DorasServerError,
    ImagesIdenticalError,
    IncompatibleArtifactsError,
    InsecureTransportError,
    InvalidArgumentError,
    InvalidReferenceError,
    NotFoundError,
    SchemaValidationError,
    TransferTimeoutError,
    UnauthorizedError,
)
from doras_oras.reference import Reference
from doras_oras.testing.registry import make_tls
from tests.edgeapi_helpers import FaultServer, Reply, Seen, chunks, exchanges

FROM = "localhost:5443/oras-file-0@sha256:c4a5c62808e303a06881dfc1d6c34949bf257dcfed9b8c512c2f8fe942b680e0"
TO_TAG = "localhost:5443/oras-file-0:v2"
TARGET = "localhost:5443/oras-file-0@sha256:97989c66a1d5cdf0cb2e47dc9a470a4475aa0a07adc5b4efbd736d38b090023f"
DELTA = "localhost:5443/oras-file-0@sha256:b90c7f6790b7e3afa11f76232407a17606a98265e72592beb86bcb4cb7618f6b"
READY = json.dumps({"target_image": TARGET, "delta_image": DELTA}).encode()


class FakeSleep:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s

    def factory(self, attempts: int = 5, base: float = 0.1, cap: float = 10.0):  # type: ignore[no-untyped-def]
        return lambda: ExponentialBackoffWithJitter(
            base_delay_s=base, max_delay_s=cap, max_attempts=attempts,
            sleep=self.sleep, random=random.Random(7), clock=lambda: self.now)


def client(server: FaultServer, **kw: object) -> EdgeClient:
    kw.setdefault("allow_http", True)
    kw.setdefault("timeout_s", 5.0)
    return EdgeClient(server.url, **kw)  # type: ignore[arg-type]


def counted(body: Iterator[bytes], sent: list[int]) -> Iterator[bytes]:
    """``body``, adding the length of every chunk the server takes to ``sent[0]``."""
    for chunk in body:
        sent[0] += len(chunk)
        yield chunk


def always(reply: Reply):  # type: ignore[no-untyped-def]
    return lambda _seen: reply


# --- the request -------------------------------------------------------------------


def test_request_url_exact_with_tag_and_algorithms_in_order() -> None:
    with FaultServer(always(Reply(200, READY))) as srv:
        response, exists = client(srv).read_delta_async(FROM, TO_TAG, ["zstd", "bsdiff", "tardiff", "gzip"])
    assert exists and response == ReadDeltaResponse(Reference.parse(TARGET), Reference.parse(DELTA))
    (seen,) = srv.seen
    assert seen.path == "/api/v1/delta/"
    assert seen.query == [("from_digest", FROM), ("to_tag", TO_TAG), ("accepted_algorithm", "zstd"),
                          ("accepted_algorithm", "bsdiff"), ("accepted_algorithm", "tardiff"),
                          ("accepted_algorithm", "gzip")]
    assert seen.raw_query.startswith("from_digest=localhost%3A5443%2Foras-file-0%40sha256%3Ac4a5")
    assert "authorization" not in seen.headers


def test_request_with_digest_to_and_no_algorithms_and_server_prefix() -> None:
    with FaultServer(always(Reply(200, READY))) as srv:
        edge = EdgeClient(srv.url + "/doras/", allow_http=True)
        edge.read_delta_async(Reference.parse(FROM), TARGET)
    assert srv.seen[0].path == "/doras/api/v1/delta/"
    assert srv.seen[0].query == [("from_digest", FROM), ("to_digest", TARGET)]


def test_local_checks_send_nothing() -> None:
    with FaultServer(always(Reply(200, READY))) as srv:
        edge = client(srv)
        with pytest.raises(InvalidReferenceError, match="must be a digest reference"):
            edge.read_delta_async("localhost:5443/oras-file-0:v1", TO_TAG)
        with pytest.raises(InvalidReferenceError, match="to image"):
            edge.read_delta_async(FROM, "localhost:5443/Bad Name:v2")
        with pytest.raises(InvalidArgumentError, match="'xdelta'"):
            edge.read_delta_async(FROM, TO_TAG, ["bsdiff", "xdelta"])
    assert srv.seen == []


def test_server_url_checked_at_construction() -> None:
    with pytest.raises(InsecureTransportError, match="allow_http"):
        EdgeClient("http://127.0.0.1:1")
    with pytest.raises(InsecureTransportError):
        EdgeClient("http://127.0.0.1:1", auth=BearerAuth("t"))
    for bad in ("ftp://host", "127.0.0.1:5000", "https://", "https://u:p@host", "https://host/?q=1",
                "https://host:99999"):
        with pytest.raises(InvalidArgumentError) as caught:
            EdgeClient(bad)
        assert not isinstance(caught.value, InvalidReferenceError)  # a URL is not an image reference


# --- the 200 body -------------------------------------------------------------------


def test_unknown_fields_ignored_and_to_image_alias() -> None:
    body = json.dumps({"to_image": TARGET, "delta_image": DELTA, "extra": {"x": [1]}, "n": 3}).encode()
    with FaultServer(always(Reply(200, body))) as srv:
        response, exists = client(srv).read_delta_async(FROM, TO_TAG)
    assert exists and response is not None
    assert str(response.target_image) == TARGET and str(response.delta_image) == DELTA


@pytest.mark.parametrize("body, match", [
    (b"not json", "not JSON"),
    (b"[]", "JSON object"),
    (json.dumps({"delta_image": DELTA}).encode(), "target_image missing"),
    (json.dumps({"target_image": TARGET, "delta_image": TO_TAG}).encode(), "not a digest reference"),
    (json.dumps({"target_image": TARGET, "delta_image": "Bad Ref"}).encode(), "delta_image"),
])
def test_unusable_200_bodies(body: bytes, match: str) -> None:
    with FaultServer(always(Reply(200, body))) as srv, pytest.raises(DocumentError, match=match):
        client(srv).read_delta_async(FROM, TO_TAG)


def test_huge_200_body_is_refused_by_its_announced_length() -> None:
    with FaultServer(always(Reply(200, b"{" * 16, content_length=5 << 20))) as srv, \
            pytest.raises(BodyTooLargeError, match="5242880"):
        client(srv).read_delta_async(FROM, TO_TAG)


def test_huge_200_body_without_a_length_is_refused_while_streaming() -> None:
    sent = [0]
    with FaultServer(always(Reply(200, counted(chunks(64 << 20), sent)))) as srv, \
            pytest.raises(BodyTooLargeError, match="cap"):
        client(srv).read_delta_async(FROM, TO_TAG)
    assert sent[0] < 64 << 20  # stopped reading at the cap: the server never got to the end


# --- the recorded exchanges, served verbatim -------------------------------------------


RECORDED_ERRORS = {
    "missing_from_400": (DorasServerError, 400, "bad request", None),
    "missing_to_400": (DorasServerError, 400, "bad request", None),
    "from_is_tag_400": (DorasServerError, 400, "bad request", "expected digest"),
    "other_repository_400": (DorasServerError, 400, "bad request", "images are not in the same repository"),
    "unknown_repository_404": (NotFoundError, 404, "failed to resolve",
                               "localhost:5443/nope@sha256:c4a5c62808e303a06881dfc1d6c34949bf257dcfed9b8c512c2f8fe942b680e0"),
    "auth_required_no_credentials_401": (UnauthorizedError, 401, "unauthorized", None),
}


@pytest.mark.parametrize("name", sorted(RECORDED_ERRORS))
def test_recorded_error_bodies(name: str) -> None:
    recorded = exchanges()[name]
    cls, status, message, context = RECORDED_ERRORS[name]
    reply = Reply(recorded["status"], recorded["body"].encode(), content_type=recorded["content_type"])
    with FaultServer(always(reply)) as srv, pytest.raises(cls) as info:
        client(srv).read_delta_async(FROM, TO_TAG)
    assert type(info.value) is cls  # a 400 is a DorasServerError with .status, no subclass
    assert (info.value.status, info.value.message, info.value.context) == (status, message, context)
    assert str(status) in str(info.value)


def test_recorded_204_means_identical() -> None:
    recorded = exchanges()["identical_204"]
    with FaultServer(always(Reply(recorded["status"], b"", content_type=None))) as srv, \
            pytest.raises(ImagesIdenticalError):
        client(srv).read_delta_async(FROM, "localhost:5443/oras-file-0:v1")


def test_recorded_202_with_credentials_then_ready() -> None:
    recorded = exchanges()["auth_required_with_any_credentials"]
    replies = iter([Reply(recorded["status"], b"", content_type=None), Reply(200, READY)])
    fake = FakeSleep()
    with FaultServer(lambda _s: next(replies)) as srv:
        edge = client(srv, auth=BearerAuth("junk"), backoff=fake.factory())
        assert edge.read_delta_async(FROM, TO_TAG) == (None, False)
        response = edge.read_delta(FROM, TO_TAG)
    assert str(response.delta_image) == DELTA
    assert [s.headers["authorization"] for s in srv.seen] == ["Bearer junk"] * 2
    assert fake.sleeps == []  # the first answer of read_delta was 200


def test_recorded_301_without_trailing_slash_is_followed() -> None:
    recorded = exchanges()["no_trailing_slash_301"]

    def handler(seen: Seen) -> Reply:
        if seen.path == "/x/api/v1/delta":
            return Reply(301, recorded["body"].encode(), content_type=recorded["content_type"],
                         headers={"Location": "/x" + recorded["location"]})
        return Reply(200, READY)

    with FaultServer(handler) as srv:
        edge = EdgeClient(srv.url + "/x", allow_http=True, auth=("u", "pw"))
        # the client always adds the slash; point it at the slashless path to get the recorded 301
        resp = edge._get(srv.url + "/x/api/v1/delta", "Basic abc")
        assert resp.status_code == 200
    assert [s.path for s in srv.seen] == ["/x/api/v1/delta", "/x/api/v1/delta/"]
    assert srv.seen[1].raw_query == recorded["location"].split("?", 1)[1]
    assert srv.seen[1].headers["authorization"] == "Basic abc"


# --- error bodies that are not the recorded ones ------------------------------------------


def test_rfc9457_problem_details() -> None:
    body = json.dumps({"type": "about:blank", "title": "artifacts are not compatible", "status": 500,
                       "detail": "layer counts differ", "instance": "/api/v1/delta/"}).encode()
    with FaultServer(always(Reply(500, body, content_type="application/problem+json"))) as srv, \
            pytest.raises(IncompatibleArtifactsError) as info:
        client(srv).read_delta_async(FROM, TO_TAG)
    assert (info.value.status, info.value.message, info.value.context) == (
        500, "artifacts are not compatible", "layer counts differ")
    body = json.dumps({"title": "Bad Request", "status": 400, "instance": "/req/1"}).encode()
    with FaultServer(always(Reply(400, body))) as srv, pytest.raises(DorasServerError) as info2:
        client(srv).read_delta_async(FROM, TO_TAG)
    assert (info2.value.message, info2.value.context) == ("Bad Request", "/req/1")


def test_incompatible_in_doras_shape_and_406() -> None:
    body = b'{"error":{"code":500,"message":"artifacts are not compatible"}}'
    with FaultServer(always(Reply(500, body))) as srv, pytest.raises(IncompatibleArtifactsError):
        client(srv).read_delta_async(FROM, TO_TAG)
    body = b'{"error":{"code":406,"message":"not acceptable","context":{"algos":["x"]}}}'
    with FaultServer(always(Reply(406, body))) as srv, pytest.raises(IncompatibleArtifactsError) as info:
        client(srv).read_delta_async(FROM, TO_TAG)
    assert info.value.context == '{"algos": ["x"]}'


def test_non_json_error_body_names_status_and_redacted_excerpt() -> None:
    page = b"<html><body>\x00\x01 Internal Server Error: token Bearer s3cr3t-t0ken leaked " + b"y" * 5000
    with FaultServer(always(Reply(502, page, content_type="text/html"))) as srv, \
            pytest.raises(DorasServerError) as info:
        client(srv, auth=BasicAuth("alice", "hunter22")).read_delta_async(FROM, TO_TAG)
    err = info.value
    assert err.status == 502 and "Bad Gateway" in err.message and "not a Doras error document" in err.message
    assert err.context is not None and "Internal Server Error" in err.context
    assert "s3cr3t-t0ken" not in str(err) and "\x00" not in str(err)
    assert len(err.context) < 300


def test_error_body_echoing_credentials_is_redacted() -> None:
    def handler(seen: Seen) -> Reply:
        echo = {"error": {"code": 400, "message": "bad request",
                          "context": f"you sent {seen.headers.get('authorization')}"}}
        return Reply(400, json.dumps(echo).encode())

    with FaultServer(handler) as srv, pytest.raises(DorasServerError) as info:
        client(srv, auth=BasicAuth("alice", "hunter22")).read_delta_async(FROM, TO_TAG)
    basic = base64.b64encode(b"alice:hunter22").decode()
    assert basic not in str(info.value.context) and "***" in str(info.value.context)


def test_error_body_echoing_tokens_and_userinfo_is_redacted() -> None:
    # Secrets the client never sent (a registry token, a presigned URL with userinfo) are
    # masked too: the excerpt goes through the same redaction as the transport's errors.
    leak = ('upstream said {"access_token":"eyJhbGciOi.secret-part"} for '
            "https://robot:pa55word@registry.example/v2/?X-Amz-Signature=abcdef0123")

    with FaultServer(always(Reply(500, leak.encode(), content_type="text/plain"))) as srv, \
            pytest.raises(DorasServerError) as info:
        client(srv).read_delta_async(FROM, TO_TAG)
    text = str(info.value) + str(info.value.context)
    for secret in ("eyJhbGciOi.secret-part", "pa55word", "abcdef0123"):
        assert secret not in text
    assert "[REDACTED]" in text and "registry.example" in text


def test_huge_error_bodies_are_capped() -> None:
    sent = [0]
    with FaultServer(always(Reply(500, counted(chunks(256 << 20), sent), content_type="text/plain"))) as srv, \
            pytest.raises(DorasServerError) as info:
        client(srv).read_delta_async(FROM, TO_TAG)
    assert sent[0] < 256 << 20  # stopped reading at the cap
    assert f"over {MAX_ERROR_BODY_BYTES} bytes" in info.value.message
    assert info.value.context is not None and "xxxx" in info.value.context
    # a parseable document behind an oversized Content-Length is not trusted either
    big = b'{"error":{"code":404,"message":"failed to resolve"}}' + b" " * (MAX_ERROR_BODY_BYTES + 10)
    with FaultServer(always(Reply(404, big))) as srv, pytest.raises(NotFoundError) as info2:
        client(srv).read_delta_async(FROM, TO_TAG)
    assert info2.value.status == 404 and "over" in info2.value.message


def test_empty_error_body_and_unexpected_status() -> None:
    with FaultServer(always(Reply(503, b"", content_type=None))) as srv, pytest.raises(DorasServerError) as info:
        client(srv).read_delta_async(FROM, TO_TAG)
    assert info.value.status == 503 and "empty body" in info.value.message
    with FaultServer(always(Reply(418, b'{"error":{"code":418,"message":"teapot"}}'))) as srv, \
            pytest.raises(DorasServerError, match="418: teapot"):
        client(srv).read_delta_async(FROM, TO_TAG)


def test_parse_error_body_shapes() -> None:
    assert parse_error_body(b'{"error":{"code":1,"message":"m","context":"c"}}') == ("m", "c")
    assert parse_error_body(b'{"error":"plain"}') == ("plain", None)
    assert parse_error_body(b'{"detail":"only detail"}') == ("only detail", None)
    assert parse_error_body(b'{"message":"other shape"}') is None
    assert parse_error_body(b"\xff\xfe") is None
    assert parse_error_body(b"42") is None


# --- transport faults ----------------------------------------------------------------------


def test_connection_reset_is_a_connect_error() -> None:
    with FaultServer(always(Reply(200, reset=True))) as srv, pytest.raises(ConnectError, match=r"127\.0\.0\.1"):
        client(srv).read_delta_async(FROM, TO_TAG)


def test_nothing_listening_is_a_connect_error() -> None:
    with FaultServer(always(Reply(200))) as srv:
        url = srv.url
    with pytest.raises(ConnectError):
        EdgeClient(url, allow_http=True, timeout_s=2).read_delta_async(FROM, TO_TAG)


def test_slow_server_is_a_timeout() -> None:
    with FaultServer(always(Reply(200, READY, delay_s=3))) as srv, pytest.raises(TransferTimeoutError):
        client(srv, timeout_s=0.5).read_delta_async(FROM, TO_TAG)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_verified_by_default_with_ca_file_and_insecure(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    with FaultServer(always(Reply(200, READY)), tls=tls) as srv:
        with pytest.raises(ConnectError, match="TLS"):
            EdgeClient(srv.url, timeout_s=5).read_delta_async(FROM, TO_TAG)
        assert EdgeClient(srv.url, tls_verify=tls.ca_cert, timeout_s=5).read_delta_async(FROM, TO_TAG)[1]
        assert EdgeClient(srv.url, tls_verify=False, timeout_s=5).read_delta_async(FROM, TO_TAG)[1]


# --- redirects -------------------------------------------------------------------------------


def test_redirect_to_another_host_is_refused_and_nothing_reaches_it() -> None:
    with FaultServer(always(Reply(200, READY))) as other:
        with FaultServer(always(Reply(302, b"", headers={"Location": other.url + "/api/v1/delta/"}))) as srv, \
                pytest.raises(InsecureTransportError, match="another host"):
            client(srv, auth=BearerAuth("secret-token")).read_delta_async(FROM, TO_TAG)
        assert other.seen == []
        # same address, another port, is another host too
        with FaultServer(always(Reply(307, b"", headers={"Location": f"http://localhost:{other.port}/"}))) as srv, \
                pytest.raises(InsecureTransportError):
            client(srv).read_delta_async(FROM, TO_TAG)
        assert other.seen == []


def test_redirect_from_https_to_http_is_refused(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    with FaultServer(always(Reply(200, READY))) as plain:
        location = {"Location": f"http://127.0.0.1:{plain.port}/api/v1/delta/"}
        with FaultServer(always(Reply(301, b"", headers=location)), tls=tls) as srv, \
                pytest.raises(InsecureTransportError, match="https to plain http"):
            EdgeClient(srv.url, tls_verify=tls.ca_cert, allow_http=True, auth=BearerAuth("t")).read_delta_async(
                FROM, TO_TAG)
        assert plain.seen == []


def test_redirect_chains_up_to_ten_hops() -> None:
    def handler(seen: Seen) -> Reply:
        hop = int(seen.path.rsplit("/", 1)[-1] or 0) if seen.path.startswith("/hop/") else 0
        if hop < limit:
            return Reply(308, b"", headers={"Location": f"/hop/{hop + 1}"})
        return Reply(200, READY)

    limit = 10
    with FaultServer(handler) as srv:
        assert client(srv, auth=BearerAuth("t")).read_delta_async(FROM, TO_TAG)[1]
    assert len(srv.seen) == 11 and all(s.headers["authorization"] == "Bearer t" for s in srv.seen)
    limit = 11
    with FaultServer(handler) as srv, pytest.raises(InsecureTransportError, match="more than 10 redirects"):
        client(srv).read_delta_async(FROM, TO_TAG)
    assert len(srv.seen) == 11


def test_redirect_without_location() -> None:
    with FaultServer(always(Reply(302, b""))) as srv, pytest.raises(DorasServerError, match="Location"):
        client(srv).read_delta_async(FROM, TO_TAG)


# --- polling -----------------------------------------------------------------------------------


def test_202_forever_until_the_backoff_is_exhausted() -> None:
    fake = FakeSleep()
    with FaultServer(always(Reply(202, b"", content_type=None))) as srv, \
            pytest.raises(BackoffExhausted, match="after 6 requests"):
        client(srv, backoff=fake.factory(attempts=5)).read_delta(FROM, TO_TAG, ["bsdiff"])
    assert len(srv.seen) == 6 and len(fake.sleeps) == 5
    assert all(s.query[-1] == ("accepted_algorithm", "bsdiff") for s in srv.seen)
    for n, slept in enumerate(fake.sleeps):
        assert 0.1 * 2**n / 2 <= slept <= 0.1 * 2**n * 1.5


def test_each_call_gets_a_fresh_backoff() -> None:
    fake = FakeSleep()
    made = []

    def factory():  # type: ignore[no-untyped-def]
        strategy = fake.factory(attempts=2)()
        made.append(strategy)
        return strategy

    with FaultServer(always(Reply(202, b"", content_type=None))) as srv:
        edge = client(srv, backoff=factory)
        for _ in range(2):
            with pytest.raises(BackoffExhausted):
                edge.read_delta(FROM, TO_TAG)
    assert len(made) == 2 and len(srv.seen) == 6


def test_retry_after_is_honoured_and_capped() -> None:
    later = time.time() + 1000
    from email.utils import formatdate
    replies = iter([
        Reply(202, b"", content_type=None, headers={"Retry-After": "3"}),
        Reply(202, b"", content_type=None, headers={"Retry-After": formatdate(later, usegmt=True)}),
        Reply(202, b"", content_type=None, headers={"Retry-After": "garbage"}),
        Reply(200, READY),
    ])
    fake = FakeSleep()
    with FaultServer(lambda _s: next(replies)) as srv:
        response = client(srv, backoff=fake.factory(attempts=10, base=0.1, cap=20.0)).read_delta(FROM, TO_TAG)
    assert str(response.target_image) == TARGET
    assert fake.sleeps[0] == 3.0
    assert fake.sleeps[1] == 20.0  # a date 1000 s ahead, capped
    assert 0.1 * 4 / 2 <= fake.sleeps[2] <= 0.1 * 4 * 1.5  # unparsable: the computed delay
    assert len(srv.seen) == 4


def test_deadline_ends_polling() -> None:
    fake = FakeSleep()
    with FaultServer(always(Reply(202, b"", content_type=None, headers={"Retry-After": "4"}))) as srv, \
            pytest.raises(BackoffExhausted, match="deadline of 10 s"):
        client(srv, backoff=fake.factory(attempts=100, cap=60)).read_delta(FROM, TO_TAG, deadline_s=10)
    assert fake.sleeps == [4.0, 4.0, 2.0]  # the last sleep is cut to the deadline
    assert len(srv.seen) == 4


def test_errors_while_polling_are_raised_not_retried() -> None:
    replies = iter([Reply(202, b"", content_type=None),
                    Reply(404, b'{"error":{"code":404,"message":"failed to resolve"}}')])
    fake = FakeSleep()
    with FaultServer(lambda _s: next(replies)) as srv, pytest.raises(NotFoundError):
        client(srv, backoff=fake.factory()).read_delta(FROM, TO_TAG)
    assert len(srv.seen) == 2 and len(fake.sleeps) == 1


# --- auth -------------------------------------------------------------------------------------


def test_basic_and_bearer_headers_as_the_go_client_sends_them() -> None:
    with FaultServer(always(Reply(200, READY))) as srv:
        client(srv, auth=("user", "pa:ss")).read_delta_async(FROM, TO_TAG)
        client(srv, auth=BearerAuth("tok")).read_delta_async(FROM, TO_TAG)
    assert srv.seen[0].headers["authorization"] == "Basic " + base64.b64encode(b"user:pa:ss").decode()
    assert srv.seen[1].headers["authorization"] == "Bearer tok"
    assert "pa:ss" not in repr(BasicAuth("user", "pa:ss")) and "zq9" not in repr(BearerAuth("zq9"))


def test_docker_config_entry_for_the_registry_host(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {
        "https://localhost:5443/v1/": {"auth": base64.b64encode(b"cfg:pw").decode()},
        "other.example:5000": {"registrytoken": "reg-token"},
        "third.example": {"username": "u3", "password": "p3"},
    }}))
    auth = DockerConfigAuth([config])
    assert auth.authorization("localhost:5443") == "Basic " + base64.b64encode(b"cfg:pw").decode()
    assert auth.authorization("other.example:5000") == "Bearer reg-token"
    assert auth.authorization("third.example") == "Basic " + base64.b64encode(b"u3:p3").decode()
    assert auth.authorization("unknown.example") is None
    with FaultServer(always(Reply(200, READY))) as srv:
        client(srv, auth=auth).read_delta_async(FROM, TO_TAG)  # FROM names localhost:5443
        client(srv, auth=auth).read_delta_async(
            "unknown.example/r@" + FROM.split("@")[1], "unknown.example/r:v2")
    assert srv.seen[0].headers["authorization"] == "Basic " + base64.b64encode(b"cfg:pw").decode()
    assert "authorization" not in srv.seen[1].headers


def test_docker_config_credential_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    helper = tmp_path / "bin" / "docker-credential-fake"
    helper.parent.mkdir()
    helper.write_text('#!/bin/sh\nread host\necho "{\\"Username\\":\\"h-$host\\",\\"Secret\\":\\"sec\\"}"\n')
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"credHelpers": {"localhost:5443": "fake"}}))
    header = DockerConfigAuth().authorization("localhost:5443")
    assert header == "Basic " + base64.b64encode(b"h-localhost:5443:sec").decode()
    assert DockerConfigAuth().authorization("elsewhere") is None


def test_netrc_credentials_are_never_added(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login leak password leaked\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with FaultServer(always(Reply(200, READY))) as srv:
        client(srv).read_delta_async(FROM, TO_TAG)
    assert "authorization" not in srv.seen[0].headers


def test_error_hierarchy_of_server_errors() -> None:
    for cls in (UnauthorizedError, NotFoundError, IncompatibleArtifactsError):
        assert issubclass(cls, DorasServerError)
    assert issubclass(SchemaValidationError, DocumentError)


def test_a_callers_session_is_used_and_left_open() -> None:
    import requests

    session = requests.Session()
    session.headers["Authorization"] = "Bearer stray"  # never sent: only the client's auth counts
    with FaultServer(always(Reply(200, READY))) as srv:
        with client(srv, session=session) as edge:
            edge.read_delta_async(FROM, TO_TAG)
        pools = session.get_adapter(srv.url).poolmanager.pools  # type: ignore[attr-defined]
        assert len(pools) == 1  # the client's close() did not clear the caller's pools
        own = client(srv)
        own.read_delta_async(FROM, TO_TAG)
        own.close()
        assert len(own.session.get_adapter(srv.url).poolmanager.pools) == 0  # type: ignore[attr-defined]
    assert "authorization" not in srv.seen[0].headers
