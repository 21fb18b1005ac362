"""systemd's notify protocol (config.sd_notify) against a datagram socket the test
binds, and the daemon's progress tracking that decides whether to feed the watchdog."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from config.errors import HeraldConfigError
from config.sd_notify import (
    Notifier,
    feed_while,
    share_watchdog_with_children,
    watchdog_interval_s,
)
from daemon.loops import every
from daemon.progress import CURRENT, Progress
from tests.conftest import wait_until
from tests.notify_socket import NotifySocket


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    yield sock
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket(f"@herald-test-{uuid.uuid4().hex}")
    yield sock
    sock.close()


def test_ready_status_and_stopping_reach_a_socket_path(path_socket: NotifySocket) -> None:
    notifier = Notifier.from_environ(path_socket.env)
    assert notifier.enabled
    assert notifier.ready("running")
    assert notifier.ready("running again")  # READY=1 once; the status still goes
    assert notifier.stopping()
    received = path_socket.receive()
    assert [n.fields for n in received] == [
        {"READY": "1", "STATUS": "running"},
        {"STATUS": "running again"},
        {"STOPPING": "1", "STATUS": "stopping"},
    ]
    assert {n.pid for n in received} == {os.getpid()}  # the kernel vouches for the sender


def test_an_abstract_socket_is_reached_by_its_at_name(abstract_socket: NotifySocket) -> None:
    notifier = Notifier.from_environ(abstract_socket.env | {"WATCHDOG_USEC": "2000000"})
    assert notifier.address == b"\0" + abstract_socket.address[1:].encode()
    assert notifier.watchdog()
    assert [n.fields for n in abstract_socket.receive()] == [{"WATCHDOG": "1"}]


def test_without_notify_socket_nothing_is_sent(path_socket: NotifySocket) -> None:
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "2000000"})
    assert not notifier.enabled
    assert notifier.watchdog_s is None and notifier.feed_interval_s is None
    assert not notifier.ready("running")
    assert not notifier.watchdog()
    assert not notifier.feed()
    assert not notifier.stopping()
    assert path_socket.receive() == []


def test_an_unsupported_address_disables_notifying() -> None:
    with structlog.testing.capture_logs() as logs:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled and not notifier.ready()
    assert any("NOTIFY_SOCKET" in entry["event"] for entry in logs)


def test_a_failing_send_is_logged_once_and_never_raises(tmp_path: Path) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    with structlog.testing.capture_logs() as logs:
        assert not notifier.ready("running")
        assert not notifier.status("still here")
        assert not notifier.stopping()
    failures = [entry for entry in logs if entry["event"].startswith("cannot notify systemd")]
    assert len(failures) == 1
    assert failures[0]["socket"] == str(tmp_path / "nobody-listens.sock")


def test_watchdog_interval_comes_from_watchdog_usec_for_the_named_pid() -> None:
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}) == 0.5
    # Another process's watchdog (a child that inherited its parent's environment): not ours.
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, pid=4242) == 30.0
    notifier = Notifier("/run/x.sock", watchdog_interval_s({"WATCHDOG_USEC": "30000000"}))
    assert notifier.feed_interval_s == 15.0  # half the interval: one late feed is no restart


@pytest.mark.parametrize(("env", "named"), [
    ({"WATCHDOG_USEC": "soon"}, "WATCHDOG_USEC"),
    ({"WATCHDOG_USEC": "0"}, "WATCHDOG_USEC"),
    ({"WATCHDOG_USEC": "-5"}, "WATCHDOG_USEC"),
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "me"}, "WATCHDOG_PID"),
])
def test_a_bad_watchdog_variable_is_one_line_naming_it(env: dict[str, str], named: str) -> None:
    with pytest.raises(HeraldConfigError) as raised:
        watchdog_interval_s(env)
    message = str(raised.value)
    assert message.startswith(named) and "\n" not in message


def test_feed_sends_at_most_once_per_half_interval(path_socket: NotifySocket) -> None:
    now = [100.0]
    notifier = Notifier(path_socket.address, watchdog_s=10.0, clock=lambda: now[0])
    assert notifier.feed()
    now[0] += 4.9
    assert not notifier.feed()
    now[0] += 0.1
    assert notifier.feed()
    assert [n.fields for n in path_socket.receive()] == [{"WATCHDOG": "1"}] * 2


def test_a_parent_hands_its_watchdog_to_its_children() -> None:
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242", "NOTIFY_SOCKET": "/run/x.sock"}
    assert share_watchdog_with_children(env, pid=4242)
    assert "WATCHDOG_PID" not in env
    assert watchdog_interval_s(env, pid=5000) == 30.0  # a forked child now feeds
    # Not this process's watchdog to give away:
    other = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}
    assert not share_watchdog_with_children(other, pid=4242)
    assert other["WATCHDOG_PID"] == "1"


async def test_feed_while_feeds_from_the_loop_until_stopped(path_socket: NotifySocket) -> None:
    notifier = Notifier(path_socket.address, watchdog_s=0.1)
    stop = asyncio.Event()
    task = asyncio.create_task(feed_while(notifier, stop))

    async def fed_three_times() -> bool:
        return len(path_socket.with_field("WATCHDOG", "1")) >= 3

    await wait_until(fed_three_times, timeout=5, message="three WATCHDOG=1")
    stop.set()
    await asyncio.wait_for(task, timeout=1)


# -- the daemon's loops --------------------------------------------------------


def test_a_loop_is_stuck_when_it_has_not_passed_within_its_interval_plus_the_stall_limit() -> None:
    now = [0.0]
    progress = Progress(stall_s=30.0, clock=lambda: now[0])
    progress.started("heartbeat", 5.0)
    progress.started("retention pass", 600.0)
    now[0] = 34.0
    assert progress.healthy() and progress.describe() == "running"
    progress.passed("heartbeat")
    now[0] = 68.0
    assert progress.healthy()  # 34 s since the heartbeat's last pass: within 5 + 30
    now[0] = 69.5
    with structlog.testing.capture_logs() as logs:
        assert not progress.healthy()
        assert not progress.healthy()  # logged once per change
    assert progress.stalled() == {"heartbeat": 35.5}
    assert progress.describe() == "stuck: heartbeat (no pass for 35.5s)"
    assert [entry["event"] for entry in logs] == [
        "daemon loops are stuck; no longer feeding systemd's watchdog"]
    progress.passed("heartbeat")
    assert progress.healthy()  # the retention loop's long interval is its own: 69.5 < 630


async def test_every_reports_each_pass_even_a_failed_one() -> None:
    now = [0.0]
    progress = Progress(stall_s=1.0, clock=lambda: now[0])
    stop = asyncio.Event()
    passes = 0

    async def work() -> None:
        nonlocal passes
        passes += 1
        now[0] += 10.0
        if passes == 2:
            raise OSError("the database went away")  # an outage: the loop goes on
        if passes == 3:
            stop.set()

    token = CURRENT.set(progress)
    try:
        task = asyncio.create_task(every(0.0, work, stop, name="sweep"))
    finally:
        CURRENT.reset(token)
    await asyncio.wait_for(task, timeout=5)
    assert passes == 3
    assert progress.stalled() == {}  # its last pass was just now
    now[0] += 1.5
    assert progress.stalled() == {"sweep": 1.5}
