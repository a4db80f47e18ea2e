"""The update agent (issue #22): ``doras-oras watch`` against the real registry, the oras CLI and the
test bed's Doras server; the loop's schedule and the sd_notify client without them.

Short intervals, bounded waits, and no wall-clock windows: "within one interval" is counted in polls.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import socket
import statistics
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from doras_oras.errors import InvalidArgumentError
from doras_oras.sdnotify import Notifier
from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.registry import RegistryServer, find_tool
from doras_oras.testing.server import DorasServer
from doras_oras.watch import Schedule
from tests.layout_support import cli, run
from tests.pull_support import edit, oras_push_file, payload, unique
from tests.tcp_relay import TcpRelay
from tests.watch_support import Agent, Event, NotifySocket

INTERVAL = "0.2"


def _is(kind: str, status: str | None = None) -> Any:
    return lambda e: e["event"] == kind and (status is None or e.get("status") == status)


def _updated(event: Event) -> bool:
    return event["event"] == "poll" and event["status"] in ("delta", "full")


@pytest.fixture
def published(oci_registry: RegistryServer, tmp_path: Path) -> tuple[str, Path, bytes]:
    """``REPO:stable`` = v1 (pushed with oras), a layout holding it; and v2's bytes (not pushed yet)."""
    repo = unique("watch")
    v1 = payload(60000, 31)
    oras_push_file(oci_registry.host, f"{repo}:stable", tmp_path / "p1", "fw.bin", v1)
    layout = tmp_path / "L"
    proc = cli("pull", f"{oci_registry.host}/{repo}:stable", "--oci-layout", str(layout), "--plain-http")
    assert proc.returncode == 0, proc.stderr
    return f"{oci_registry.host}/{repo}", layout, edit(v1, 6, 32)


def _publish_v2(oci_registry: RegistryServer, repo: str, v2: bytes, workdir: Path) -> None:
    oras_push_file(oci_registry.host, f"{repo.split('/', 1)[1]}:stable", workdir, "fw.bin", v2)


# --- the loop's schedule and the notification client (no server) --------------------------------------


@given(interval=st.floats(0.01, 1e5), share=st.floats(0, 1), draw=st.floats(0, 1, exclude_max=True))
def test_jittered_wait_stays_within_interval_plus_minus_jitter(interval: float, share: float, draw: float) -> None:
    schedule = Schedule(interval, interval * share)
    assert interval - interval * share - 1e-9 <= schedule.after_poll(draw) <= interval + interval * share + 1e-9


@given(failures=st.integers(1, 200), draw=st.floats(0, 1, exclude_max=True))
def test_backoff_after_failures_doubles_from_the_interval_up_to_the_cap(failures: int, draw: float) -> None:
    schedule = Schedule(10.0, 1.0, max_backoff_s=600.0)
    wait = schedule.after_failure(failures, draw)
    assert min(5.0 * 2 ** (failures - 1), 600.0) <= wait <= 600.0
    assert wait >= schedule.after_failure(1, 0.0)


def test_draws_from_one_seed_spread_a_fleet() -> None:
    """Two devices with different random sources do not keep polling together."""
    schedule = Schedule(60.0, 6.0)
    a, b = random.Random(1), random.Random(2)
    times_a = [sum(schedule.after_poll(a.random()) for _ in range(n)) for n in range(1, 20)]
    times_b = [sum(schedule.after_poll(b.random()) for _ in range(n)) for n in range(1, 20)]
    assert times_a != times_b


@pytest.mark.parametrize("interval,jitter", [(0.0, 0.0), (1.0, 2.0), (1.0, -0.1)])
def test_schedule_refuses_bad_settings(interval: float, jitter: float) -> None:
    with pytest.raises(InvalidArgumentError):
        Schedule(interval, jitter)


def test_sd_notify_reaches_a_path_socket(tmp_path: Path) -> None:
    server = NotifySocket(tmp_path / "notify")
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(server.path), "WATCHDOG_USEC": "2000000"})
    try:
        assert notifier.ready("up") and notifier.watchdog() and notifier.stopping("bye")
        assert server.receive("STOPPING=1") == ["READY=1\nSTATUS=up", "WATCHDOG=1", "STOPPING=1\nSTATUS=bye"]
        assert notifier.ping_interval_s == 1.0
    finally:
        notifier.close()
        server.close()


def test_sd_notify_reaches_an_abstract_socket() -> None:
    name = f"doras-oras-test-{os.getpid()}-{random.getrandbits(32)}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(b"\0" + name.encode())
    server.settimeout(10)
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name})
    try:
        assert notifier.ready("up")
        assert server.recv(4096) == b"READY=1\nSTATUS=up"
    finally:
        notifier.close()
        server.close()


def test_sd_notify_without_systemd_or_for_another_pid_sends_nothing(tmp_path: Path) -> None:
    assert not Notifier.from_environment({}).ready("up")
    other = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "x"), "WATCHDOG_USEC": "1000000",
                                       "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.ping_interval_s is None and not other.watchdog()
    other.close()


# --- the agent, end to end -----------------------------------------------------------------------------


def test_publishing_v2_updates_within_one_interval_and_runs_the_hook_once(
        oci_registry: RegistryServer, doras_server: DorasServer, published: tuple[str, Path, bytes],
        tmp_path: Path) -> None:
    repo, layout, v2 = published
    out, hook_log = tmp_path / "out", tmp_path / "hook.log"
    hook = ('printf "%s|%s|%s|%s|%s|%s\\n" "$DORAS_ORAS_DIGEST" "$DORAS_ORAS_REPOSITORY" "$DORAS_ORAS_OUTPUT" '
            '"$DORAS_ORAS_REFERENCE" "$DORAS_ORAS_STATUS" "$DORAS_ORAS_LAYOUT" >> ' + str(hook_log))
    with Agent(f"{repo}:stable", "--oci-layout", str(layout), "--plain-http", "--server", doras_server.url,
               "--interval", INTERVAL, "--output", str(out), "--exec", hook) as agent:
        agent.next(_is("poll", "up-to-date"))
        _publish_v2(oci_registry, repo, v2, tmp_path / "p2")
        pushed_at = len(agent.seen)
        update = agent.next(_updated)
        hooked = agent.next(_is("hook"))
        for _ in range(3):  # the agent goes on: up to date, and the hook is not run again
            agent.next(_is("poll", "up-to-date"))
        assert agent.stop() == 0, agent.stderr
    # "within one interval": at most the one poll already under way when the push ended came before it
    assert sum(e["event"] == "poll" for e in agent.seen[pushed_at:agent.seen.index(update)]) <= 1
    assert update["status"] == "delta", update
    assert hooked["status"] == "ok" and hooked["to_digest"] == update["to_digest"]
    assert (out / "fw.bin").read_bytes() == v2
    lines = hook_log.read_text().splitlines()
    assert lines == [f"{update['to_digest']}|{repo.split('/', 1)[1]}|{out}|{repo}:stable|delta|{layout}"]
    assert not [e for e in agent.seen if e["event"] == "hook" and e is not hooked]


def test_a_failing_hook_is_reported_and_the_layout_keeps_the_new_image(
        oci_registry: RegistryServer, published: tuple[str, Path, bytes], tmp_path: Path) -> None:
    repo, layout, v2 = published
    with Agent(f"{repo}:stable", "--oci-layout", str(layout), "--plain-http", "--interval", INTERVAL,
               "--exec", "echo from-the-hook; exit 7") as agent:
        agent.next(_is("poll", "up-to-date"))
        _publish_v2(oci_registry, repo, v2, tmp_path / "p2")
        update = agent.next(_updated)
        hooked = agent.next(_is("hook"))
        after = agent.next(_is("poll"))
        assert agent.stop() == 0
    assert (hooked["status"], hooked["exit_code"]) == ("failed", 7)
    assert after["status"] == "up-to-date" and after["to_digest"] == update["to_digest"]
    assert "from-the-hook" in agent.stderr and "exited with status 7" in agent.stderr
    listing = json.loads(cli("list", "--oci-layout", str(layout), "--json").stdout)
    assert update["to_digest"] in json.dumps(listing)
    assert agent.seen[-1]["hook_failures"] == 1


def test_sigterm_stops_cleanly_with_one_final_event_and_systemd_is_told(
        published: tuple[str, Path, bytes], tmp_path: Path) -> None:
    repo, layout, _v2 = published
    notify = NotifySocket(tmp_path / "notify")
    try:
        with Agent(f"{repo}:stable", "--oci-layout", str(layout), "--plain-http", "--interval", "0.5",
                   env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"}) as agent:
            agent.next(_is("poll", "up-to-date"))
            before_ready = notify.receive("READY=1")
            pings = notify.receive("WATCHDOG=1")
            code = agent.stop()
        stopping = notify.receive("STOPPING=1")
    finally:
        notify.close()
    assert code == 0, agent.stderr
    last = agent.seen[-1]
    assert (last["event"], last["signal"], last["exit_code"]) == ("stopped", "SIGTERM", 0)
    assert sum(e["event"] == "stopped" for e in agent.seen) == 1
    assert "Traceback" not in agent.stderr
    assert any(m.startswith("STATUS=") or "\nSTATUS=" in m for m in before_ready + pings)
    assert stopping[-1].startswith("STOPPING=1")


def test_a_registry_that_is_down_is_polled_with_backoff(oci_registry: RegistryServer, tmp_path: Path) -> None:
    """Every poll fails (503): the waits double from the interval, and no request goes out between polls."""
    with FaultProxy(f"http://{oci_registry.host}") as down:
        down.add("status", status=503)
        host = down.url.split("://", 1)[1]
        with Agent(f"{host}/{unique('down')}:v1", "--oci-layout", str(tmp_path / "L"), "--plain-http",
                   "--interval", "0.1", "--jitter", "0", "--deadline", "2") as agent:
            errors = [agent.next(_is("error")) for _ in range(4)]
            assert agent.stop() == 0
        sent = len(down.requests())
    polls = agent.seen[-1]["polls"]
    for n, error in enumerate(errors, start=1):
        assert error["failures"] == n and error["exit_code"] == 1
        assert error["next_poll_s"] >= 0.1 * 2 ** (n - 1) / 2
    assert 4 <= polls <= 5 and sent <= 5 * polls  # at most the transport's 5 attempts per poll
    assert not (tmp_path / "L").exists()  # a layout the failed pulls would have created is not left behind


# --- an up-to-date poll over TLS: connections and bytes on the wire, CPU time ------------------------------


def test_up_to_date_polls_over_tls_reuse_one_connection_and_stay_under_1_kb(
        oci_registry_tls: RegistryServer, tmp_path: Path) -> None:
    repo = unique("watch-tls")
    assert oci_registry_tls.ca_file is not None
    ca = str(oci_registry_tls.ca_file)
    (tmp_path / "fw.bin").write_bytes(payload(20000, 41))
    run(find_tool("oras"), "push", "--ca-file", ca, f"{oci_registry_tls.host}/{repo}:v1", "fw.bin", cwd=tmp_path)
    relay = TcpRelay("127.0.0.1", oci_registry_tls.port)
    with relay, Agent(f"{relay.host}/{repo}:v1", "--oci-layout", str(tmp_path / "L"), "--ca-file", ca,
                      "--interval", INTERVAL) as agent:
        agent.next(_is("poll", "full"))
        counters = []
        polls = []
        for _ in range(6):
            polls.append(agent.next(_is("poll", "up-to-date")))
            counters.append((relay.connections, relay.bytes_up + relay.bytes_down))
        assert agent.stop() == 0
    connections = {c for c, _ in counters}
    per_poll = [b - a for (_, a), (_, b) in itertools.pairwise(counters)]
    cpu = [p["cpu_s"] for p in polls[1:]]
    print(f"\nup-to-date poll over TLS: bytes on the wire {per_poll}, CPU s {cpu} (median "
          f"{statistics.median(cpu) * 1000:.2f} ms)")
    assert len(connections) == 1, counters  # no new TCP/TLS connection after the first up-to-date poll
    assert max(per_poll) <= 1024, per_poll
    assert all(p["bytes_received"] == 0 for p in polls)


def test_a_layout_path_holding_something_else_ends_the_agent_as_a_usage_error(
        published: tuple[str, Path, bytes], tmp_path: Path) -> None:
    """No retry can fix a wrong --oci-layout: exit 2 after the first poll, not a loop of failures."""
    repo, _layout, _v2 = published
    other = tmp_path / "not-a-layout"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with Agent(f"{repo}:stable", "--oci-layout", str(other), "--plain-http", "--interval", INTERVAL) as agent:
        code = agent.stop(0)  # no signal: wait for the exit
    assert code == 2, agent.stderr
    assert agent.seen[-1]["error"] == "NotALayoutError" and agent.seen[-1]["exit_code"] == 2
    assert (other / "notes.txt").read_text() == "mine" and sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_the_systemd_unit_of_the_docs_is_valid_and_its_command_parses(tmp_path: Path) -> None:
    """docs/fleet.md's unit: ``systemd-analyze verify`` accepts it, and its ExecStart is a valid watch."""
    import shlex
    import shutil
    import subprocess

    from doras_oras.cli.main import build_parser
    from tests.docs_support import blocks

    [unit] = blocks(Path(__file__).resolve().parents[1] / "docs" / "fleet.md", "ini")
    line = unit.split("ExecStart=", 1)[1].split("\n#", 1)[0].split("\nTimeout", 1)[0]
    words = shlex.split(line.replace("\\\n", " "))
    assert words[0] == "/usr/local/bin/doras-oras"
    args = build_parser().parse_args(words[1:])
    assert (args.command, args.interval, args.jitter) == ("watch", 900.0, 300.0)
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    exe = shutil.which("doras-oras")
    assert exe is not None
    path = tmp_path / "doras-oras-watch.service"
    path.write_text(unit.replace("/usr/local/bin/doras-oras", exe))
    proc = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "doras-oras-watch.service" not in proc.stderr, proc.stderr


def test_two_refs_share_one_agent_and_an_output_template(oci_registry: RegistryServer, tmp_path: Path) -> None:
    """Each REF is polled and its files land in the directory the template names for it."""
    repos = [unique("watch-a"), unique("watch-b")]
    for n, repo in enumerate(repos):
        oras_push_file(oci_registry.host, f"{repo}:v1", tmp_path / f"p{n}", "fw.bin", payload(3000, 50 + n))
    layout, out = tmp_path / "L", tmp_path / "out"
    refs = [f"{oci_registry.host}/{repo}:v1" for repo in repos]
    with Agent(*refs, "--oci-layout", str(layout), "--plain-http", "--interval", INTERVAL,
               "--output", str(out / "{name}-{tag}")) as agent:
        first = {agent.next(_is("poll", "full"))["reference"] for _ in range(2)}
        again = {agent.next(_is("poll", "up-to-date"))["reference"] for _ in range(4)}
        assert agent.stop() == 0
    assert first == again == set(refs)
    for n, repo in enumerate(repos):
        assert (out / f"{repo.rsplit('/', 1)[1]}-v1" / "fw.bin").read_bytes() == payload(3000, 50 + n)


def test_up_to_date_polls_do_not_rewrite_the_output(oci_registry: RegistryServer, tmp_path: Path) -> None:
    """The files are written at the first poll and then only by an update: a file removed by hand after the
    first poll stays removed through the up-to-date polls (``pull --output`` would put it back each time)."""
    repo = unique("watch-quiet")
    oras_push_file(oci_registry.host, f"{repo}:v1", tmp_path / "p", "fw.bin", payload(3000, 61))
    layout, out = tmp_path / "L", tmp_path / "out"
    with Agent(f"{oci_registry.host}/{repo}:v1", "--oci-layout", str(layout), "--plain-http", "--interval", INTERVAL,
               "--output", str(out)) as agent:
        agent.next(_is("poll", "full"))
        (out / "fw.bin").unlink()
        for _ in range(3):
            assert agent.next(_is("poll", "up-to-date"))["output"] is None
        assert agent.stop() == 0
    assert not (out / "fw.bin").exists()


@pytest.mark.parametrize("flags,words", [
    (["--output", "a", "--output", "b", "--output", "c"], "once per REF"),
    (["--output", "same"], "same --output directory"),
    (["--interval", "1", "--jitter", "2"], "--jitter must not be longer than --interval"),
    (["--output", "{nope}"], "not a template"),
])
def test_contradicting_watch_flags_are_usage_errors(tmp_path: Path, flags: list[str], words: str) -> None:
    """Refused before anything is sent (the registry named does not exist)."""
    args = ["watch", "127.0.0.1:9/a:v1", "127.0.0.1:9/b:v1", "--oci-layout", str(tmp_path / "L"), "--json"]
    proc = cli(*args, *(flags if "--interval" in flags else ["--interval", "1", *flags]))
    assert proc.returncode == 2, proc.stderr
    assert words in json.loads(proc.stdout)["message"]
    assert not (tmp_path / "L").exists()


def test_sigint_stops_as_sigterm_does(published: tuple[str, Path, bytes]) -> None:
    import signal

    repo, layout, _v2 = published
    with Agent(f"{repo}:stable", "--oci-layout", str(layout), "--plain-http", "--interval", INTERVAL) as agent:
        agent.next(_is("poll", "up-to-date"))
        code = agent.stop(signal.SIGINT)
    assert code == 0, agent.stderr
    assert (agent.seen[-1]["event"], agent.seen[-1]["signal"]) == ("stopped", "SIGINT")


def test_a_failing_target_backs_off_alone_and_ready_waits_for_every_target(tmp_path: Path) -> None:
    """In process, the loop with an injected pull: one REF always fails, the other is up to date."""
    from doras_oras.errors import TransportError
    from doras_oras.pull import PullResult
    from doras_oras.reference import Reference
    from doras_oras.watch import Target, Watcher, WatchEvent

    server = NotifySocket(tmp_path / "notify")
    good, bad = Target(Reference.parse("127.0.0.1:9/good:v1")), Target(Reference.parse("127.0.0.1:9/bad:v1"))
    seen: list[tuple[str, str, int, float]] = []  # (target, kind, failures in a row, next poll in)
    watcher: Watcher

    def poll(target: Target, ping: Any) -> PullResult:
        if target is bad:
            raise TransportError("connection refused")
        return PullResult(status="up-to-date", reference=str(target.reference), reason="held", from_digest=None,
                          to_digest="sha256:" + "a" * 64, algorithm=None, bytes_received=0, full_size=0,
                          duration_s=0.0)

    def on_event(event: WatchEvent) -> None:
        name = "bad" if event.target is bad else "good"
        seen.append((name, event.kind, event.target.failures, event.next_poll_s or 0.0))
        if sum(s[0] == "bad" for s in seen) == 4:
            watcher.stop.set()

    watcher = Watcher([bad, good], poll, Schedule(0.01, 0.0, max_backoff_s=1.0), tmp_path, on_event,
                      notifier=Notifier(str(server.path)), random=random.Random(7))
    try:
        watcher.run()
        messages = server.receive("STOPPING=1")
    finally:
        watcher.notifier.close()
        server.close()
    failed = [s for s in seen if s[0] == "bad"]
    assert [(kind, n) for _, kind, n, _ in failed] == [("error", 1), ("error", 2), ("error", 3), ("error", 4)]
    assert all(0.01 * 2 ** (n - 1) / 2 <= wait <= 1.0 for _, _, n, wait in failed)
    assert {(kind, n, wait) for name, kind, n, wait in seen if name == "good"} == {("poll", 0, 0.01)}
    assert sum(s[0] == "good" for s in seen) > 4  # the good one kept its interval meanwhile
    assert [m.split("\n")[0] for m in messages].count("READY=1") == 1
    assert messages.index(next(m for m in messages if m.startswith("READY=1"))) >= 1  # after both first polls


def test_sd_notify_never_blocks_on_a_receiver_that_does_not_read(tmp_path: Path) -> None:
    """A full datagram queue drops the message (False) instead of stalling the agent."""
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    silent.bind(str(tmp_path / "notify"))
    notifier = Notifier(str(tmp_path / "notify"))
    sent: list[bool] = []
    sender = threading.Thread(target=lambda: sent.extend(notifier.status(f"poll {n}") for n in range(2000)),
                              daemon=True)  # far more than any queue holds
    sender.start()
    sender.join(30)
    blocked = sender.is_alive()
    if not blocked:
        notifier.close()
    silent.close()  # (also wakes a sender that blocked)
    assert not blocked, "sd_notify blocked on a full queue"
    assert sent[0] and not all(sent)
