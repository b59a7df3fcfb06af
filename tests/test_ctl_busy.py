"""volplugctl and 503 plugin_busy: exit 1, one line, the daemon's Retry-After as a hint."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import test_ctl as t
from volplugd.ctl.client import retry_after

BUSY_BODY = (b'{"error":{"code":"plugin_busy",'
             b'"message":"plugin slow is busy (4 operations in flight)"}}')


def busy_answer(retry: bytes | None) -> t.Answer:
    head = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n" % len(BUSY_BODY))
    if retry is not None:
        head += b"Retry-After: " + retry + b"\r\n"
    return t.Answer(raw=head + b"\r\n" + BUSY_BODY)


@pytest.fixture
def canned(short_tmp: Path) -> Iterator[t.Canned]:
    """The canned control socket of test_ctl, stopped and joined after the test."""
    fake = t.Canned(str(short_tmp / "control.sock"))
    server = t._Server(fake)  # reused as is from the ctl tests
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="canned")
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize("argv", [
    ("volume", "ls", "slow"),
    ("volume", "create", "slow", "v"),
    ("volume", "rm", "slow", "v"),
    ("volume", "mount", "slow", "v", "--id", "c"),
    ("capabilities", "slow"),
])
def test_a_busy_plugin_exits_1_with_the_retry_hint(canned: t.Canned,
                                                   argv: tuple[str, ...]) -> None:
    """Every volume command: exit 1, nothing on stdout, one line with the hint."""
    for target in ("/v1/plugins/slow/volumes", "/v1/plugins/slow/volumes/v",
                   "/v1/plugins/slow/volumes/v/mount", "/v1/plugins/slow/capabilities"):
        for method in ("GET", "POST", "DELETE"):
            canned.on(method, target, busy_answer(b"1"))
    assert t.run(canned, *argv) == (
        1, "", "volplugctl: plugin_busy: plugin slow is busy (4 operations in flight); "
               "retry in 1 s\n")


@pytest.mark.parametrize("header", [None, b"soon", b"Wed, 21 Oct 2026 07:28:00 GMT", b"-1"])
def test_no_usable_retry_after_means_no_hint(canned: t.Canned, header: bytes | None) -> None:
    """Without delay-seconds in Retry-After the message stands alone (never a guess)."""
    canned.on("GET", "/v1/plugins/slow/volumes", busy_answer(header))
    assert t.run(canned, "volume", "ls", "slow") == (
        1, "", "volplugctl: plugin_busy: plugin slow is busy (4 operations in flight)\n")


@pytest.mark.parametrize(("value", "seconds"), [
    ("1", 1), ("120", 120), (None, None), ("", None), ("1.5", None), ("\u0661", None),
    ("9999999999", None),
])
def test_retry_after_reads_delay_seconds_only(value: str | None, seconds: int | None) -> None:
    """Digits (ASCII, at most 9) are seconds; anything else is no hint."""
    assert retry_after(value) == seconds
