"""The gateway (opt-in, ``[gateway] enabled``): one v1-protocol unix socket per plugin
that forwards to the plugin while it is ``ready`` and answers at once with its state and
last error when it is not, so Docker and Podman fail fast too (docs/gateway.md).

``server`` keeps the sockets and serves them with the one server core
(``volplugd.serving``); ``choice`` picks the plugins that get one; ``answer`` is the
server's app, deciding each answer; ``specs`` writes Docker's spec files. This module
only re-exports their public names and runs no code of its own on any thread.
"""

from __future__ import annotations

from volplugd.gateway.answer import GatewayApp, OnGatewayRequest, answer
from volplugd.gateway.choice import name_problem, serves, socket_path
from volplugd.gateway.server import Gateway
from volplugd.gateway.specs import DOCKER_SOCKETS, DOCKER_SPECS, SpecFiles

__all__ = ["DOCKER_SOCKETS", "DOCKER_SPECS", "Gateway", "GatewayApp", "OnGatewayRequest",
           "SpecFiles", "answer", "name_problem", "serves", "socket_path"]
