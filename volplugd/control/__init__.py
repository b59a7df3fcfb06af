"""The control API: an app (``make_app``) served on a unix socket
(``ControlServer``), plus the read-only TCP metrics listener (``TcpMetricsServer``).

The contract is ``openapi.json`` beside this file, also served at ``GET /openapi.json``.
"""

from volplugd.control.access import AccessPolicy
from volplugd.control.app import ROUTES, make_app, make_metrics_app, openapi_document
from volplugd.control.server import ControlServer, ControlSocketError, TcpMetricsServer

__all__ = [
    "ROUTES",
    "AccessPolicy",
    "ControlServer",
    "ControlSocketError",
    "TcpMetricsServer",
    "make_app",
    "make_metrics_app",
    "openapi_document",
]
