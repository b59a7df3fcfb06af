"""How the client reads answers: the exact error (class, words, context) for each failure."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest

from tests.fakeplugin import FakePlugin
from tests.fakeplugin import behaviours as b
from volplugd.plugin import (
    Capabilities,
    NotAPlugin,
    NotAVolumePlugin,
    PluginBadResponse,
    PluginClient,
    PluginError,
    PluginRemoved,
    PluginReportedError,
    PluginUnreachable,
)
from volplugd.plugin.models import ResponseError

# endpoint, call, the volume named in errors ("" for List)
VOLUME_CALLS: list[tuple[str, Callable[[PluginClient], object], str]] = [
    ("/VolumeDriver.Create", lambda c: c.create("v1"), "v1"),
    ("/VolumeDriver.Remove", lambda c: c.remove("v1"), "v1"),
    ("/VolumeDriver.Get", lambda c: c.get("v1"), "v1"),
    ("/VolumeDriver.List", lambda c: c.list(), ""),
    ("/VolumeDriver.Path", lambda c: c.path("v1"), "v1"),
    ("/VolumeDriver.Mount", lambda c: c.mount("v1", "c1"), "v1"),
    ("/VolumeDriver.Unmount", lambda c: c.unmount("v1", "c1"), "v1"),
]
IDS = [endpoint.split(".")[1] for endpoint, _, _ in VOLUME_CALLS]


def where(endpoint: str, volume: str) -> str:
    return f"on {endpoint} on volume {volume}" if volume else f"on {endpoint}"


@pytest.mark.parametrize(("endpoint", "call", "volume"), VOLUME_CALLS, ids=IDS)
def test_err_on_a_200_is_an_error(fake: FakePlugin, client: PluginClient, endpoint: str,
                                  call: Callable[[PluginClient], object], volume: str) -> None:
    """A non-empty Err on a 200 (buttervolume's way) is an error, worded as the seed's."""
    fake.set(endpoint, b.ErrOn200("boom: it failed"))
    with pytest.raises(PluginReportedError) as caught:
        call(client)
    err = caught.value
    assert str(err) == f"{where(endpoint, volume)} in volume plugin foo: boom: it failed"
    assert (err.err, err.plugin, err.endpoint, err.volume) == (
        "boom: it failed", "foo", endpoint, volume)
    assert err.outcome == "plugin_error"


@pytest.mark.parametrize(("endpoint", "call", "volume"), VOLUME_CALLS, ids=IDS)
@pytest.mark.parametrize("status", [400, 500])
def test_err_with_an_error_status(fake: FakePlugin, client: PluginClient, *, endpoint: str,
                                  call: Callable[[PluginClient], object], volume: str,
                                  status: int) -> None:
    """400 or 500 with {"Err": ...} reports the plugin's Err verbatim."""
    fake.set(endpoint, b.StatusErr(status, "no space left"))
    with pytest.raises(PluginReportedError, match=r"^" + where(endpoint, volume)
                       + " in volume plugin foo: no space left$") as caught:
        call(client)
    assert caught.value.err == "no space left"


@pytest.mark.parametrize("behaviour", [
    b.StatusErr(500, ""),
    b.Status(500, b""),
    b.Json({"message": "no Err member"}, 503),
    b.Json(None, 500),
], ids=["empty-Err", "empty-body", "no-Err-member", "null"])
def test_an_error_without_words_is_an_empty_error(fake: FakePlugin, client: PluginClient,
                                                  behaviour: b.Behaviour) -> None:
    """A failure status with no error text says "empty error from plugin", as the seed does."""
    fake.set("/VolumeDriver.Create", behaviour)
    with pytest.raises(PluginReportedError) as caught:
        client.create("v1")
    assert str(caught.value) == (
        "on /VolumeDriver.Create on volume v1 in volume plugin foo: empty error from plugin")
    assert caught.value.err == "empty error from plugin"


def test_an_html_error_page_keeps_its_text(fake: FakePlugin, client: PluginClient) -> None:
    """A non-JSON error answer (bottle's HTML page) is the error text, not thrown away."""
    fake.set("/VolumeDriver.Create", b.HtmlError(500))
    with pytest.raises(PluginReportedError) as caught:
        client.create("v1")
    page = b.html_page(500, "/VolumeDriver.Create").decode().strip()
    assert caught.value.err == page
    assert str(caught.value) == f"on /VolumeDriver.Create on volume v1 in volume plugin foo: {page}"


def test_a_long_text_error_is_cut_to_1_kib(fake: FakePlugin, client: PluginClient) -> None:
    """A text error answer longer than 1 KiB is cut there and marked with an ellipsis."""
    fake.set("/VolumeDriver.Get", b.Status(502, b"x" * 5000, "text/plain"))
    with pytest.raises(PluginReportedError) as caught:
        client.get("v1")
    assert caught.value.err == "x" * 1024 + "…"


@pytest.mark.parametrize("body", [
    b'{"err": "lower case"}', b'{"ERR": "lower case"}', b'{"Err": "first", "eRR": "lower case"}',
], ids=["err", "ERR", "last-wins"])
def test_json_keys_match_case_insensitively_like_go(fake: FakePlugin, client: PluginClient,
                                                    body: bytes) -> None:
    """Go's decoder matches "err" and "ERR" to Err, and the last matching key wins."""
    fake.set("/VolumeDriver.Remove", b.Status(200, body))
    with pytest.raises(PluginReportedError, match=r"v1 in volume plugin foo: lower case$"):
        client.remove("v1")


@pytest.mark.parametrize("content_type", [
    "text/html; charset=UTF-8", "text/plain", "application/json", None,
])
def test_any_content_type_is_accepted(sock_path: str,
                                      make_client: Callable[..., PluginClient],
                                      content_type: str | None) -> None:
    """Real plugins send JSON as text/html or text/plain: the Content-Type is never checked."""
    with FakePlugin(sock_path, content_type=content_type or "") as fake:
        client = make_client()
        client.create("v1")
        assert client.get("v1").mountpoint == "/fake/volumes/v1"
        assert fake.requests[-1].path == "/VolumeDriver.Get"


@pytest.mark.parametrize(("endpoint", "call", "what"), [
    ("/VolumeDriver.Create", lambda c: c.create("v1"), "create"),
    ("/VolumeDriver.Get", lambda c: c.get("v1"), "get"),
    ("/VolumeDriver.List", lambda c: c.list(), "list"),
    ("/VolumeDriver.Mount", lambda c: c.mount("v1", "c1"), "mount"),
])
def test_a_200_that_is_not_json_is_a_bad_response(fake: FakePlugin, client: PluginClient,
                                                  endpoint: str, what: str,
                                                  call: Callable[[PluginClient], object]) -> None:
    """A 200 whose body is not JSON is a bad response (Podman takes a garbage Create as done)."""
    fake.set(endpoint, b.Garbage(b"this is not json"))
    with pytest.raises(PluginBadResponse) as caught:
        call(client)
    assert str(caught.value) == (f"unmarshalling volume plugin foo {what} response: "
                                 "not JSON: Expecting value: line 1 column 1 (char 0)")
    assert isinstance(caught.value.__cause__, ResponseError)
    assert isinstance(caught.value.__cause__.__cause__, json.JSONDecodeError)
    assert caught.value.outcome == "bad_response"


@pytest.mark.parametrize(("endpoint", "call", "answer", "problem"), [
    ("/VolumeDriver.Get", lambda c: c.get("v1"), {"Err": ""}, "no Volume in the answer"),
    ("/VolumeDriver.Get", lambda c: c.get("v1"), {"Volume": None}, "no Volume in the answer"),
    ("/VolumeDriver.Get", lambda c: c.get("v1"), {"Volume": {"Name": 5}},
     "Name is a number, not a string"),
    ("/VolumeDriver.Get", lambda c: c.get("v1"), {"Volume": {"Mountpoint": "/m"}},
     "a volume without a Name"),
    ("/VolumeDriver.List", lambda c: c.list(), {"Volumes": {"Name": "v"}},
     "Volumes is an object, not a list"),
    ("/VolumeDriver.List", lambda c: c.list(), {"Volumes": ["v"]},
     "Volumes is not a list of objects"),
    ("/VolumeDriver.Mount", lambda c: c.mount("v1", "c1"), {"Err": ""},
     "no Mountpoint in the answer"),
    ("/VolumeDriver.Path", lambda c: c.path("v1"), {"Mountpoint": ["/m"]},
     "Mountpoint is a list, not a string"),
    ("/VolumeDriver.Create", lambda c: c.create("v1"), {"Err": True},
     "Err is a boolean, not a string"),
    ("/VolumeDriver.Create", lambda c: c.create("v1"), ["not", "an", "object"],
     "not a JSON object but a list"),
], ids=lambda value: value if isinstance(value, str) and " " in value else "")
def test_a_200_of_the_wrong_shape_is_a_bad_response(
        fake: FakePlugin, client: PluginClient, *, endpoint: str,
        call: Callable[[PluginClient], object], answer: object, problem: str) -> None:
    """Wrong types or a missing required member are errors, never silently zero values."""
    fake.set(endpoint, b.Json(answer))
    what = endpoint.split(".")[1].lower()
    with pytest.raises(PluginBadResponse) as caught:
        call(client)
    assert str(caught.value) == f"unmarshalling volume plugin foo {what} response: {problem}"


def test_path_may_be_empty(fake: FakePlugin, client: PluginClient) -> None:
    """Path of a volume the plugin has not mounted is "" (a mount must name its path)."""
    fake.set("/VolumeDriver.Path", b.Json({"Mountpoint": "", "Err": ""}))
    assert client.path("v1") == ""


# -- Activate -----------------------------------------------------------------------

def test_activate_error_status_is_not_a_plugin(fake: FakePlugin, client: PluginClient) -> None:
    """A non-200 Activate means "not a plugin", in the seed's words."""
    fake.set("/Plugin.Activate", b.HtmlError(404))
    with pytest.raises(NotAPlugin) as caught:
        client.activate()
    assert str(caught.value) == ("got status code 404 from activation endpoint for plugin foo: "
                                 "target does not appear to be a valid plugin")
    assert (caught.value.endpoint, caught.value.outcome) == ("/Plugin.Activate", "bad_response")


@pytest.mark.parametrize(("behaviour", "problem"), [
    (b.Garbage(b"this is not json"), "not JSON: Expecting value: line 1 column 1 (char 0)"),
    (b.Status(200, b""), "not JSON: Expecting value: line 1 column 1 (char 0)"),
    (b.Json({"Implements": "VolumeDriver"}), "Implements is a string, not a list of strings"),
    (b.Json({"Implements": [1]}), "Implements is not a list of strings"),
])
def test_activate_garbage_is_not_a_plugin(fake: FakePlugin, client: PluginClient,
                                          behaviour: b.Behaviour, problem: str) -> None:
    """An Activate answer that is no manifest is NotAPlugin, worded as the seed's."""
    fake.set("/Plugin.Activate", behaviour)
    with pytest.raises(NotAPlugin) as caught:
        client.activate()
    assert str(caught.value) == f"unmarshalling plugin foo activation response: {problem}"


@pytest.mark.parametrize(("implements", "provides"), [
    (["NetworkDriver"], "NetworkDriver"), (["authz", "IpamDriver"], "authz, IpamDriver"), ([], ""),
])
def test_activate_without_volume_driver_is_not_a_volume_plugin(
        fake: FakePlugin, client: PluginClient, implements: list[str], provides: str) -> None:
    """A manifest without "VolumeDriver" is NotAVolumePlugin, carrying what it implements."""
    fake.set("/Plugin.Activate", b.Implements(implements))
    with pytest.raises(NotAVolumePlugin) as caught:
        client.activate()
    assert str(caught.value) == (f"plugin foo does not implement volume plugin, instead provides "
                                 f"{provides}: plugin is not a volume plugin")
    assert caught.value.implements == tuple(implements)
    assert caught.value.outcome == "error"


def test_activate_null_manifest_is_not_a_volume_plugin(fake: FakePlugin,
                                                       client: PluginClient) -> None:
    """`null` decodes to an empty manifest, as in Go: a plugin implementing nothing."""
    fake.set("/Plugin.Activate", b.Status(200, b"null"))
    with pytest.raises(NotAVolumePlugin, match=r"instead provides : plugin is not a volume"):
        client.activate()


def test_activate_err_on_200_is_reported(fake: FakePlugin, client: PluginClient) -> None:
    """A non-empty Err on Activate's 200 is reported, even alongside a manifest."""
    fake.set("/Plugin.Activate", b.Json({"Implements": ["VolumeDriver"], "Err": "not ready"}))
    with pytest.raises(PluginReportedError) as caught:
        client.activate()
    assert str(caught.value) == "on /Plugin.Activate in volume plugin foo: not ready"


def test_activate_accepts_more_than_volume_driver(fake: FakePlugin, client: PluginClient) -> None:
    """A plugin implementing several subsystems, VolumeDriver among them, activates."""
    fake.set("/Plugin.Activate", b.Json({"implements": ["NetworkDriver", "VolumeDriver"]}))
    assert client.activate().implements == ("NetworkDriver", "VolumeDriver")


# -- Capabilities ---------------------------------------------------------------------

@pytest.mark.parametrize(("behaviour", "scope"), [
    (b.Json({"Capabilities": {"Scope": "global"}}), "global"),
    (b.Json({"capabilities": {"scope": "GLOBAL"}}), "global"),
    (b.Json({"Capabilities": {"Scope": "local"}}), "local"),
    (b.Json({"Capabilities": {"Scope": ""}}), "local"),
    (b.Json({"Capabilities": None}), "local"),
    (b.Json({}), "local"),
    (b.HtmlError(404), "local"),
    (b.StatusErr(500, "not implemented"), "local"),
    (b.ErrOn200("not implemented"), "local"),
], ids=["global", "GLOBAL", "local", "empty", "null", "none", "404", "500", "err200"])
def test_capabilities_follow_dockers_rules(fake: FakePlugin, client: PluginClient,
                                           behaviour: b.Behaviour, scope: str) -> None:
    """An error or an empty scope means "local"; the scope is read case-insensitively."""
    fake.set("/VolumeDriver.Capabilities", behaviour)
    assert client.capabilities() == Capabilities(scope)  # type: ignore[arg-type]


def test_capabilities_unknown_scope_is_a_bad_response(fake: FakePlugin,
                                                      client: PluginClient) -> None:
    """A scope other than local or global is refused rather than guessed."""
    fake.set("/VolumeDriver.Capabilities", b.Json({"Capabilities": {"Scope": "cluster"}}))
    with pytest.raises(PluginBadResponse) as caught:
        client.capabilities()
    assert str(caught.value) == ("unmarshalling volume plugin foo capabilities response: "
                                 "unknown Scope 'cluster' (want \"local\" or \"global\")")


# -- the socket and the connection ------------------------------------------------------

def test_removed_socket_is_plugin_removed(fake: FakePlugin, client: PluginClient) -> None:
    """A socket file that is gone is PluginRemoved, in the seed's words, before any connect."""
    fake.stop()
    with pytest.raises(PluginRemoved) as caught:
        client.get("v1")
    assert str(caught.value) == "foo: plugin is no longer available (shut down?)"
    assert (caught.value.endpoint, caught.value.volume, caught.value.outcome) == (
        "/VolumeDriver.Get", "v1", "refused")
    assert isinstance(caught.value.__cause__, FileNotFoundError)


@pytest.mark.parametrize(("call", "prefix"), [
    (lambda c: c.list(), "sending request to volume plugin foo endpoint /VolumeDriver.List"),
    (lambda c: c.activate(), "sending request to plugin foo activation endpoint"),
])
def test_stale_socket_is_unreachable(fake: FakePlugin, client: PluginClient,
                                     call: Callable[[PluginClient], object], prefix: str) -> None:
    """A socket file nobody listens on (a plugin that died) is PluginUnreachable: refused."""
    fake.stop(unlink=False)
    with pytest.raises(PluginUnreachable) as caught:
        call(client)
    assert str(caught.value) == (
        f"{prefix}: dial unix {fake.socket_path}: connect: connection refused")
    assert caught.value.outcome == "refused"
    assert isinstance(_root(caught.value), ConnectionRefusedError)


def test_a_file_that_is_no_socket_is_not_a_plugin(sock_path: str,
                                                  make_client: Callable[..., PluginClient]) -> None:
    """A regular file where the socket should be is not a plugin (the seed's socket check)."""
    with open(sock_path, "w") as file:
        file.write("not a socket")
    with pytest.raises(NotAPlugin) as caught:
        make_client().activate()
    assert str(caught.value) == (f'volume foo path "{sock_path}" is not a unix socket: '
                                 "target does not appear to be a valid plugin")
    os.unlink(sock_path)


def test_closed_mid_answer_is_unreachable(fake: FakePlugin, client: PluginClient) -> None:
    """Headers, half the body, then a close: the connection broke (PluginUnreachable)."""
    client.create("v1")
    fake.set("/VolumeDriver.Get", b.CloseMidAnswer())
    with pytest.raises(PluginUnreachable) as caught:
        client.get("v1")
    assert str(caught.value) == ("reading response body from volume plugin foo: "
                                 "EOF: the plugin closed the connection before a complete answer")


def test_closed_without_answer_is_unreachable_and_not_retried(fake: FakePlugin,
                                                              client: PluginClient) -> None:
    """A plugin that closes without answering got the request once: no retry is sent."""
    fake.set("/VolumeDriver.Create", b.Disconnect())
    with pytest.raises(PluginUnreachable) as caught:
        client.create("v1")
    assert str(caught.value) == (
        "sending request to volume plugin foo endpoint /VolumeDriver.Create: "
        "EOF: the plugin closed the connection before a complete answer")
    assert [r.path for r in fake.requests] == ["/VolumeDriver.Create"]


def test_an_answer_that_is_not_http_is_a_bad_response(fake: FakePlugin,
                                                      client: PluginClient) -> None:
    """Bytes that are not an HTTP status line are PluginBadResponse."""
    fake.set("/VolumeDriver.List", b.Raw(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"))
    with pytest.raises(PluginBadResponse) as caught:
        client.list()
    assert str(caught.value) == (
        "sending request to volume plugin foo endpoint /VolumeDriver.List: not an HTTP answer "
        "(BadStatusLine: SSH-2.0-OpenSSH_9.2\r\n)")


def test_the_client_recovers_after_a_failed_call(fake: FakePlugin, client: PluginClient) -> None:
    """A broken connection is dropped: the next call on the same client succeeds."""
    fake.set("/VolumeDriver.List", b.CloseMidAnswer())
    with pytest.raises(PluginUnreachable):
        client.list()
    fake.reset()
    assert client.list() == []


def test_a_closed_client_refuses_calls(fake: FakePlugin, client: PluginClient) -> None:
    """After close(), calls raise PluginError instead of reopening connections."""
    client.close()
    client.close()  # idempotent
    with pytest.raises(PluginError, match=r"^client for plugin foo is closed$"):
        client.list()
    assert fake.requests == []


def _root(error: BaseException) -> BaseException:
    """The innermost cause or context (what the socket raised)."""
    seen = error
    while True:
        nested = seen.__cause__ or seen.__context__ or next(
            (arg for arg in seen.args if isinstance(arg, BaseException)), None)
        if nested is None:
            return seen
        seen = nested


def test_a_restarted_plugin_is_reached_again(sock_path: str, fake: FakePlugin,
                                             client: PluginClient) -> None:
    """A plugin replaced at the same path: the dead keep-alive connection is not reused."""
    client.create("v1")
    fake.stop()
    with FakePlugin(sock_path) as restarted:
        assert client.list() == []
        assert [r.path for r in restarted.requests] == ["/VolumeDriver.List"]
