"""One answer through the WSGI app: wsgiref's response side, made HTTP/1.1 and quiet.

Keep-alive is decided as the headers go out (an answer without a length ends the
connection; the connection may refuse to stay open), an app crash becomes a JSON 500
with the traceback logged once, and a client that went away is an info line.
Runs on: the connection thread that serves the request.
"""

from __future__ import annotations

import sys
from typing import IO, TYPE_CHECKING, Any, Protocol
from wsgiref.handlers import SimpleHandler
from wsgiref.headers import Headers

from volplugd.control.routing import JSON
from volplugd.control.sockio import Body
from volplugd.log import get_logger
from volplugd.model import encode

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["KeepAlive", "Response"]

_log = get_logger(__name__)


class KeepAlive(Protocol):
    """The connection's side of keep-alive, as the response sees it."""

    close_connection: bool

    def keep_after_reply(self) -> bool: ...


class Response(SimpleHandler):
    """wsgiref's response side: HTTP/1.1, keep-alive decided as headers go out."""

    http_version = "1.1"
    server_software = "volplugd"
    os_environ: dict[str, str] = {}  # not the daemon's environment in every request
    wsgi_multithread = True
    wsgi_multiprocess = False
    headers: Headers | None  # set by wsgiref (undocumented, so not in its stubs)
    status: str | None

    def __init__(self, conn: KeepAlive, environ: dict[str, Any], body: Body, out: IO[bytes]):
        super().__init__(body, out, sys.stderr, environ)
        self.conn = conn
        self.completed = False

    def cleanup_headers(self) -> None:
        super().cleanup_headers()
        assert self.headers is not None
        assert self.status is not None
        if self.status.startswith(("204", "304")):
            del self.headers["Content-Length"]  # no body by definition (RFC 9110)
        elif "Content-Length" not in self.headers:
            self.conn.close_connection = True  # a stream: its end is the connection's
        if not self.conn.keep_after_reply():
            self.headers["Connection"] = "close"

    def finish_response(self) -> None:
        super().finish_response()
        self.completed = True

    def error_output(self, environ: WSGIEnvironment,
                     start_response: StartResponse) -> list[bytes]:
        body = encode({"error": {"code": "internal_error",
                                 "message": "internal error; the daemon logged it"}})
        start_response("500 Internal Server Error",
                       [("Content-Type", JSON), ("Content-Length", str(len(body)))],
                       sys.exc_info())
        return [body]

    def log_exception(self, exc_info: Any) -> None:
        if isinstance(exc_info[1], OSError):  # the client went away or stopped reading
            _log.info("control_client_write_failed", error=str(exc_info[1]))
        else:
            _log.error("control_request_crashed", exc_info=exc_info)
