"""The on_request(endpoint, outcome, seconds) hook: one call per request, never harmful."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest

from tests.fakeplugin import FakePlugin
from tests.fakeplugin import behaviours as b
from volplugd.plugin import (
    NotAPlugin,
    NotAVolumePlugin,
    PluginBadResponse,
    PluginClient,
    PluginError,
    PluginRemoved,
    PluginReportedError,
    PluginTimeout,
    PluginUnreachable,
)

Seen = list[tuple[str, str, float]]


def test_each_outcome_is_reported(fake: FakePlugin,
                                  make_client: Callable[..., PluginClient]) -> None:
    """Success and every error's outcome label reach the hook, with the call's duration."""
    seen: Seen = []
    client = make_client(on_request=lambda *args: seen.append(args))
    client.activate()
    fake.set("/VolumeDriver.Create", b.ErrOn200("boom"))
    with pytest.raises(PluginReportedError):
        client.create("v1")
    fake.set("/VolumeDriver.List", b.Garbage())
    with pytest.raises(PluginBadResponse):
        client.list()
    fake.set("/VolumeDriver.Get", b.Hang())
    with pytest.raises(PluginTimeout):
        client.get("v1", timeout=0.2)
    fake.set("/Plugin.Activate", b.Implements(["NetworkDriver"]))
    with pytest.raises(NotAVolumePlugin):
        client.activate()
    fake.set("/Plugin.Activate", b.HtmlError(500))
    with pytest.raises(NotAPlugin):
        client.activate()
    fake.stop(unlink=False)
    with pytest.raises(PluginUnreachable):
        client.path("v1")
    assert [(endpoint, outcome) for endpoint, outcome, _ in seen] == [
        ("/Plugin.Activate", "success"),
        ("/VolumeDriver.Create", "plugin_error"),
        ("/VolumeDriver.List", "bad_response"),
        ("/VolumeDriver.Get", "timeout"),
        ("/Plugin.Activate", "error"),
        ("/Plugin.Activate", "bad_response"),
        ("/VolumeDriver.Path", "refused"),
    ]
    assert all(seconds > 0 for _, _, seconds in seen)
    assert seen[3][2] >= 0.2  # the timed-out call took its whole deadline


def test_a_capabilities_error_read_as_local_is_a_success(
        fake: FakePlugin, make_client: Callable[..., PluginClient]) -> None:
    """Capabilities answered by an error page yields "local": the call succeeded."""
    seen: Seen = []
    fake.set("/VolumeDriver.Capabilities", b.HtmlError(404))
    make_client(on_request=lambda *args: seen.append(args)).capabilities()
    assert [(e, o) for e, o, _ in seen] == [("/VolumeDriver.Capabilities", "success")]


def test_a_removed_socket_is_reported_as_refused(
        fake: FakePlugin, make_client: Callable[..., PluginClient]) -> None:
    """PluginRemoved counts as "refused" too: nothing is listening."""
    seen: Seen = []
    client = make_client(on_request=lambda *args: seen.append(args))
    fake.stop()
    with pytest.raises(PluginRemoved):
        client.list()
    assert [(e, o) for e, o, _ in seen] == [("/VolumeDriver.List", "refused")]


def _broken_hook(endpoint: str, outcome: str, seconds: float) -> None:
    raise RuntimeError("metrics are down")


def test_a_failing_hook_becomes_a_warning(fake: FakePlugin,
                                          make_client: Callable[..., PluginClient]) -> None:
    """A hook that raises changes neither result nor error; it is reported as a RuntimeWarning."""
    client = make_client(on_request=_broken_hook)
    with pytest.warns(RuntimeWarning) as warned:
        assert client.activate().implements == ("VolumeDriver",)
    assert str(warned[0].message) == (
        "volplugd.plugin: on_request('/Plugin.Activate', 'success') raised "
        "RuntimeError('metrics are down'); ignored")
    fake.set("/VolumeDriver.Create", b.ErrOn200("boom"))
    with pytest.warns(RuntimeWarning), pytest.raises(PluginReportedError, match=r": boom$"):
        client.create("v1")


def test_a_failing_hook_with_warnings_as_errors_is_dropped(
        fake: FakePlugin, make_client: Callable[..., PluginClient]) -> None:
    """Even when warnings are turned into errors, the hook's failure never reaches the caller."""
    client = make_client(on_request=_broken_hook)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert client.list() == []
        fake.set("/VolumeDriver.List", b.StatusErr(500, "down"))
        with pytest.raises(PluginError, match=r"in volume plugin foo: down$"):
            client.list()
