"""The pure parts of the transport: policy checks, waits, header parsing, redaction."""

from __future__ import annotations

import pytest

from doras_oras.backoff import backoff_delay
from doras_oras.redact import redact
from doras_oras.transport import TransferPolicy, retry_wait_s
from doras_oras.urls import origin, parse_content_range, safe_url


def test_policy_defaults_are_safe() -> None:
    policy = TransferPolicy()
    assert policy.allow_http is False and policy.max_redirects == 10
    assert policy.max_attempts >= 1 and policy.deadline_s is not None


@pytest.mark.parametrize(
    "bad",
    [
        {"connect_timeout_s": 0},
        {"read_timeout_s": -1},
        {"read_timeout_s": float("inf")},
        {"min_bytes_per_s": -1},
        {"max_attempts": 0},
        {"max_redirects": -1},
        {"deadline_s": 0},
        {"chunk_size": 0},
    ],
)
def test_bad_policy_values_are_refused_by_name(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        TransferPolicy(**bad)  # type: ignore[arg-type]


def test_policy_is_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        TransferPolicy(1.0)  # type: ignore[misc]
    policy = TransferPolicy()
    with pytest.raises(AttributeError):
        policy.max_attempts = 3  # type: ignore[misc]


def test_retry_wait_is_the_one_backoff_formula() -> None:
    """Exponential from wait_initial_s, ±50 % jitter around it, capped (doras_oras.backoff.next_delay)."""
    policy = TransferPolicy(wait_initial_s=1.0, wait_max_s=8.0, retry_after_max_s=20.0)
    middle = [retry_wait_s(n, policy, rand=lambda: 0.5) for n in range(1, 7)]
    assert middle == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    low = [retry_wait_s(n, policy, rand=lambda: 0.0) for n in range(1, 4)]
    assert low == [0.5, 1.0, 2.0]
    high = [retry_wait_s(n, policy, rand=lambda: 0.99) for n in range(1, 4)]
    assert high == pytest.approx([1.49, 2.98, 5.96])
    assert retry_wait_s(1000, policy, rand=lambda: 1.0) == 8.0
    for n in range(1, 12):
        assert retry_wait_s(n, policy, rand=lambda: 0.3) == backoff_delay(
            n - 1, base_delay_s=1.0, max_delay_s=8.0, jitter=0.3)


def test_retry_after_replaces_the_delay_and_is_capped() -> None:
    """The same rule as polling: the server's Retry-After replaces the computed wait, capped."""
    policy = TransferPolicy(wait_initial_s=1.0, wait_max_s=8.0, retry_after_max_s=20.0)
    assert retry_wait_s(1, policy, retry_after_s=5.0, rand=lambda: 0.9) == 5.0
    assert retry_wait_s(1, policy, retry_after_s=3600.0, rand=lambda: 0.9) == 20.0
    assert retry_wait_s(4, policy, retry_after_s=0.0, rand=lambda: 0.9) == 0.0


def test_parse_content_range() -> None:
    assert parse_content_range("bytes 100-199/1000") == (100, 199, 1000)
    assert parse_content_range("bytes 0-0/*") == (0, 0, None)
    assert parse_content_range("bytes */1000") is None
    assert parse_content_range("items 1-2/3") is None
    assert parse_content_range(None) is None


def test_redact_masks_credentials() -> None:
    text = (
        'Authorization: Bearer eyJhbGciOi.xyz Basic dXNlcjpwYXNz {"token": "abc", "password":"p"} '
        "https://user:pw@host/path?X-Amz-Signature=deadbeef&x=1"
    )
    out = redact(text)
    for secret in ("eyJhbGciOi", "dXNlcjpwYXNz", '"abc"', '"p"', "user:pw", "deadbeef"):
        assert secret not in out
    assert "x=1" in out


def test_safe_url_drops_userinfo_and_query() -> None:
    assert safe_url("https://u:p@store.example:8443/b/c?sig=1") == "https://store.example:8443/b/c?…"
    assert safe_url("http://h/x") == "http://h/x"


def test_origin_normalises_default_ports() -> None:
    assert origin("https://Reg.Example/v2/") == ("https", "reg.example", 443)
    assert origin("https://reg.example:443/") == origin("https://reg.example/")
    assert origin("http://reg.example:8080/") != origin("http://reg.example/")


def test_throughput_guard_trips_only_below_the_minimum_over_a_full_window() -> None:
    from doras_oras.transport.failures import Stalled as _Stalled
    from doras_oras.transport.policy import ThroughputGuard as _ThroughputGuard

    now = [0.0]
    policy = TransferPolicy(min_bytes_per_s=100.0, throughput_window_s=10.0)
    guard = _ThroughputGuard(policy, lambda: now[0])
    for _ in range(30):  # 1000 bytes every 5 s = 200 B/s: fine
        now[0] += 5.0
        guard.add(1000)
    slow = _ThroughputGuard(policy, lambda: now[0])
    now[0] += 5.0
    slow.add(400)  # not yet a full window: no verdict
    with pytest.raises(_Stalled):
        for _ in range(3):  # 80 B/s from here on
            now[0] += 5.0
            slow.add(400)


def test_requests_of_one_chain_share_one_retry_budget() -> None:
    from doras_oras.errors import RegistryError
    from doras_oras.transport import RetryBudget
    from doras_oras.transport.failures import Retryable

    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    budget = RetryBudget.of(TransferPolicy(max_attempts=3, retry_after_max_s=60.0, deadline_s=1000.0),
                            clock=lambda: now[0], sleep=sleep, rand=lambda: 0.5)
    calls: list[str] = []

    def storm(name: str) -> str:
        calls.append(name)
        raise Retryable(RegistryError(f"{name} answered 429", status=429), retry_after_s=3600.0)

    with pytest.raises(RegistryError, match="gave up after 3 attempts"):
        budget.run(lambda: storm("HEAD"))
    assert budget.spent
    with pytest.raises(RegistryError, match="gave up after 4 attempts"):
        budget.run(lambda: storm("GET"))  # the chain's second request: no wait, no fresh attempts
    assert calls == ["HEAD", "HEAD", "HEAD", "GET"] and sleeps == [60.0, 60.0] and budget.waited_s == 120.0


def test_a_retry_budget_never_waits_past_its_deadline() -> None:
    from doras_oras.errors import ConnectError, TransferTimeoutError
    from doras_oras.transport import RetryBudget
    from doras_oras.transport.failures import Retryable

    now = [0.0]
    budget = RetryBudget(attempts=100, deadline=100.0, wait_initial_s=30.0, wait_max_s=30.0,
                         retry_after_max_s=60.0, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s),
                         rand=lambda: 0.5)

    def drop() -> None:
        raise Retryable(ConnectError("connection reset"))

    with pytest.raises(TransferTimeoutError, match="would pass the overall deadline"):
        budget.run(drop)
    assert budget.waited_s == 90.0 and budget.failures == 4  # 3 waits of 30 s; a 4th would end at 120 s
