"""The PluginError tree: the seed's sentinel errors as typed exceptions (leaf module).

Each class carries ``outcome``, the bounded label the daemon uses for metrics and
for telling a stale socket from a slow or failing plugin. Every message (and a
plugin's ``Err``) passes ``text.safe_text`` here, where all of them are made: whatever a
plugin or a file put into it, it is encodable UTF-8 of at most 4 KiB.
"""

from __future__ import annotations

from typing import ClassVar, TypeVar

from volplugd.plugin.text import safe_text

E = TypeVar("E", bound=BaseException)

__all__ = [
    "NotAPlugin",
    "NotAVolumePlugin",
    "PluginAddressError",
    "PluginBadResponse",
    "PluginError",
    "PluginRemoved",
    "PluginReportedError",
    "PluginTimeout",
    "PluginUnreachable",
    "detached",
]


class PluginError(Exception):
    """Any failure talking to one plugin; context lives in attributes."""

    outcome: ClassVar[str] = "error"

    def __init__(self, message: str, *, plugin: str = "", endpoint: str = "", volume: str = ""):
        message = safe_text(message)
        super().__init__(message)
        self.message = message
        self.plugin = plugin
        self.endpoint = endpoint
        self.volume = volume


class NotAPlugin(PluginError):
    """Activate did not answer 200 with a manifest ("target does not appear to be a valid
    plugin"), or the socket path is not a socket."""

    outcome = "bad_response"


class NotAVolumePlugin(PluginError):
    """The manifest lacks "VolumeDriver": "plugin is not a volume plugin"."""

    outcome = "error"

    def __init__(self, message: str, *, implements: tuple[str, ...] = (), plugin: str = "",
                 endpoint: str = "", volume: str = ""):
        super().__init__(message, plugin=plugin, endpoint=endpoint, volume=volume)
        self.implements = implements


class PluginRemoved(PluginError):
    """The socket file is gone: "plugin is no longer available (shut down?)"."""

    outcome = "refused"


class PluginUnreachable(PluginError):
    """Could not connect (refused: a stale socket file) or the connection broke."""

    outcome = "refused"


class PluginTimeout(PluginError):
    """The whole call (connect, send, headers, body) exceeded its deadline."""

    outcome = "timeout"


class PluginBadResponse(PluginError):
    """The answer could not be used: not JSON, wrong shape, or over the size cap."""

    outcome = "bad_response"


class PluginReportedError(PluginError):
    """The plugin answered with a non-empty ``Err`` (kept in ``err``, made safe: escaped
    and cut to 4 KiB)."""

    outcome = "plugin_error"

    def __init__(self, message: str, *, err: str, plugin: str = "", endpoint: str = "",
                 volume: str = ""):
        super().__init__(message, plugin=plugin, endpoint=endpoint, volume=volume)
        self.err = safe_text(err)


class PluginAddressError(ValueError):
    """A .sock/.spec/.json plugin file that cannot be turned into an address.

    ``problem`` says what is wrong with the file, never what the file says.
    """

    def __init__(self, path: str, problem: str):
        problem = safe_text(problem)
        super().__init__(safe_text(f"{path}: {problem}"))
        self.path = path
        self.problem = problem


def detached(error: E) -> E:
    """``error``, and the errors it was raised from or during, without their tracebacks.

    An error kept as data (a call's result) would otherwise hold, through its
    traceback, the frames that raised and caught it and everything they referred to —
    often the object that keeps the error, a reference cycle that only the garbage
    collector's rare full passes free. Dropped at once instead, a storm of failing
    calls leaves no pile of dead frames, exchanges and clients behind. Returns ``error``.
    """
    todo: list[BaseException] = [error]
    seen: set[int] = set()
    while todo:
        err = todo.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        err.__traceback__ = None
        todo.extend(e for e in (err.__cause__, err.__context__) if e is not None)
    return error
