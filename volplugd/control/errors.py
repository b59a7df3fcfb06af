"""The control API's ONE error→HTTP table: every failure of a request, the app's own
conditions and the daemon's and the plugin client's errors, becomes its JSON answer here.
Runs on: connection threads.
"""

from __future__ import annotations

from collections.abc import Mapping

from volplugd.admission import Refusal
from volplugd.contracts import (
    NotRestartable,
    PluginBusy,
    PluginNotReady,
    Stopping,
    UnknownPlugin,
)
from volplugd.control.inputs import BodyTooLarge, InvalidRequest
from volplugd.control.routing import JSON, MethodNotAllowed, NotFound, Reply
from volplugd.log import get_logger
from volplugd.model import encode
from volplugd.plugin.errors import (
    NotAPlugin,
    NotAVolumePlugin,
    PluginBadResponse,
    PluginError,
    PluginRemoved,
    PluginReportedError,
    PluginTimeout,
    PluginUnreachable,
)
from volplugd.serving import RequestTimeout

__all__ = ["ERRORS", "Forbidden", "MetricsOff", "TooManyStreams", "error_reply"]

_log = get_logger(__name__)


class Forbidden(Exception):
    """The access rule refuses this request to this peer (403 forbidden)."""


class TooManyStreams(Exception):
    """No follow-stream slot for this peer (429 too_many_streams); the message says why."""

    def __init__(self, why: Refusal):
        super().__init__(_STREAM_REFUSALS[why])
        self.why = why


_STREAM_REFUSALS: Mapping[Refusal, str] = {
    Refusal.UID_LIMIT: "this user has as many follow streams open as one user may; "
                       "close one and try again",
    Refusal.FULL: "too many open follow streams; try again later",
}


class MetricsOff(Exception):
    """``GET /metrics`` on the control socket while metrics are turned off (404)."""


ERRORS: Mapping[type[BaseException], tuple[int, str]] = {
    InvalidRequest: (400, "invalid_request"),
    Forbidden: (403, "forbidden"),
    NotFound: (404, "not_found"),
    MetricsOff: (404, "not_found"),
    UnknownPlugin: (404, "plugin_not_found"),
    MethodNotAllowed: (405, "method_not_allowed"),
    RequestTimeout: (408, "request_timeout"),
    PluginNotReady: (409, "plugin_not_ready"),
    NotRestartable: (409, "not_restartable"),
    BodyTooLarge: (413, "request_too_large"),
    TooManyStreams: (429, "too_many_streams"),
    PluginReportedError: (502, "plugin_error"),
    PluginBadResponse: (502, "plugin_bad_response"),
    NotAPlugin: (502, "plugin_bad_response"),
    NotAVolumePlugin: (502, "plugin_bad_response"),
    PluginUnreachable: (502, "plugin_unreachable"),
    PluginRemoved: (502, "plugin_unreachable"),
    PluginError: (502, "plugin_error"),
    PluginTimeout: (504, "plugin_timeout"),
    PluginBusy: (503, "plugin_busy"),  # with Retry-After
    TimeoutError: (503, "unavailable"),  # the daemon's own wait (probe, rescan) ran out
    Stopping: (503, "unavailable"),
}

_MESSAGES: Mapping[type[BaseException], str] = {
    Forbidden: "this user may not do that on the control socket",
    NotFound: "no such route",
    MetricsOff: "metrics are turned off",
    TimeoutError: "the daemon did not answer in time; try again",
}


def _listed(exc: BaseException) -> type[BaseException] | None:
    """The nearest class of ``exc`` that the table lists."""
    return next((cls for cls in type(exc).__mro__ if cls in ERRORS), None)


def _message(exc: BaseException, listed: type[BaseException]) -> str:
    if isinstance(exc, PluginReportedError):
        return exc.err  # the plugin's own Err (made safe: escaped, at most 4 KiB)
    return _MESSAGES.get(listed) or str(exc) or type(exc).__name__


def error_reply(exc: BaseException) -> Reply:
    """The JSON error answer for any exception (500 internal_error if unlisted)."""
    listed = _listed(exc)
    if listed is None:
        _log.error("control_request_failed", exc_info=exc)
        status, code, message = 500, "internal_error", "internal error; the daemon logged it"
    else:
        (status, code), message = ERRORS[listed], _message(exc, listed)
    headers: tuple[tuple[str, str], ...] = ()
    if isinstance(exc, MethodNotAllowed):
        headers = (("Allow", exc.allow),)
    elif isinstance(exc, PluginBusy):
        headers = (("Retry-After", str(exc.retry_after)),)
    return Reply(status, encode({"error": {"code": code, "message": message}}), JSON, headers)
